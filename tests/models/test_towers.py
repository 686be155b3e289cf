"""Image towers: 3D ResNet on volumes, timm weights loaded offline from safetensors."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from medvl.errors import CheckpointError, ConfigError
from medvl.models import create_model
from medvl.models.config import ImageTowerConfig
from medvl.models.image_towers import ResNet3dTower, TimmImageTower


def test_3d_tower_on_volumes(reports):
    tower = ResNet3dTower(ImageTowerConfig(type="resnet3d", in_chans=1))
    x = torch.rand(2, 1, 16, 32, 32, requires_grad=True)
    feats = tower(x)
    assert feats.shape == (2, 128)
    feats.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    model = create_model("clip3d-tiny", tokenizer_texts=reports).eval()
    with torch.no_grad():
        assert model.encode_image(torch.rand(2, 1, 16, 32, 32)).shape == (2, 64)
    with pytest.raises(ConfigError, match="D, H, W"):
        tower(torch.rand(2, 1, 32, 32))
    with pytest.raises(ConfigError, match="valid keys: blocks, widths"):
        ResNet3dTower(ImageTowerConfig(type="resnet3d", kwargs={"depth": 3}))


def test_3d_tower_lock_and_checkpointing():
    tower = ResNet3dTower(ImageTowerConfig(type="resnet3d", kwargs={"widths": [8, 16], "blocks": [1, 2]}))
    tower.lock(unlocked_layers=1)
    assert not any(p.requires_grad for p in tower.stem.parameters())
    assert all(p.requires_grad for p in tower.stages[-1].parameters())
    tower.set_grad_checkpointing(True)
    tower.train()
    tower(torch.rand(1, 1, 8, 16, 16)).sum().backward()
    assert tower.stages[-1][0].conv1.weight.grad is not None


def test_timm_pretrained_weights_offline(tmp_path):
    import timm

    torch.manual_seed(0)
    src = timm.create_model("test_resnet", pretrained=False, num_classes=10)  # with a head, 3 channels
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    tower = TimmImageTower(ImageTowerConfig(name="test_resnet", in_chans=3, pretrained_weights=str(path)))
    torch.testing.assert_close(tower.trunk.layer1[0].conv1.weight, src.layer1[0].conv1.weight)
    grey = TimmImageTower(ImageTowerConfig(name="test_resnet", in_chans=1, pretrained_weights=str(path)))
    # 3 -> 1 channel stem adapted by summing over input channels (timm's adapt_input_conv)
    torch.testing.assert_close(grey.trunk.conv1[0].weight, src.conv1[0].weight.sum(dim=1, keepdim=True))
    model = create_model("clip-tiny", **{"image.pretrained_weights": str(path)})
    torch.testing.assert_close(model.visual.trunk.layer4[0].conv2.weight, src.layer4[0].conv2.weight)
    with pytest.raises(CheckpointError, match="not found"):
        TimmImageTower(ImageTowerConfig(name="test_resnet", pretrained_weights=str(tmp_path / "x.safetensors")))
    with pytest.raises(CheckpointError, match="shape mismatch|missing"):
        TimmImageTower(ImageTowerConfig(name="resnet18", in_chans=3, pretrained_weights=str(path)))
