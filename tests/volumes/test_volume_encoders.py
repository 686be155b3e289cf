"""3D encoders: conversion maths (I3D, ACS, 2.5D) checked against 2D convolutions, specs, registry."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medvl.errors import ConfigError
from medvl.models import load_encoder
from medvl.models.encoder import encoder_schemas
from medvl.models.volume_encoders import ACSConv3d, convert_to_3d, parse_volume_spec


def _conv2d(seed: int = 0) -> nn.Conv2d:
    torch.manual_seed(seed)
    return nn.Conv2d(2, 7, 3, 1, 1, bias=True)


def test_i3d_inflation_gives_the_2d_response_on_depth_constant_input():
    conv = _conv2d()
    img = torch.randn(1, 2, 9, 9)
    vol = img.unsqueeze(2).repeat(1, 1, 5, 1, 1)
    out3 = convert_to_3d(nn.Sequential(conv))[0](vol)
    ref = conv(img)
    # interior depth slices see three identical neighbours: exactly the 2D output
    torch.testing.assert_close(out3[:, :, 2], ref, atol=1e-5, rtol=1e-5)


def test_acs_groups_are_2d_convs_along_each_axis():
    conv = _conv2d(1)
    acs = convert_to_3d(nn.Sequential(conv), "acs")[0]
    assert isinstance(acs, ACSConv3d) and acs.split == (3, 2, 2)
    x = torch.randn(1, 2, 4, 5, 6)
    out = acs(x)
    w, b = conv.weight, conv.bias
    # axial group: a 2D conv on every (H, W) slice
    axial = torch.stack([F.conv2d(x[:, :, d], w[:3], b[:3], padding=1) for d in range(4)], 2)
    torch.testing.assert_close(out[:, :3], axial, atol=1e-5, rtol=1e-5)
    # coronal group: a 2D conv on every (D, W) plane
    coronal = torch.stack([F.conv2d(x[:, :, :, h], w[3:5], b[3:5], padding=1) for h in range(5)], 3)
    torch.testing.assert_close(out[:, 3:5], coronal, atol=1e-5, rtol=1e-5)
    sagittal = torch.stack([F.conv2d(x[..., k], w[5:], b[5:], padding=1) for k in range(6)], 4)
    torch.testing.assert_close(out[:, 5:], sagittal, atol=1e-5, rtol=1e-5)


def test_2p5d_conversion_is_a_per_slice_conv():
    conv = _conv2d(2)
    c25 = convert_to_3d(nn.Sequential(conv), "2.5d")[0]
    x = torch.randn(1, 2, 3, 6, 6)
    ref = torch.stack([conv(x[:, :, d]) for d in range(3)], 2)
    torch.testing.assert_close(c25(x), ref, atol=1e-5, rtol=1e-5)


def test_batchnorm_statistics_carry_over_and_unknown_2d_layers_are_refused():
    bn = nn.BatchNorm2d(4)
    bn.running_mean += 3.0
    out = convert_to_3d(nn.Sequential(bn))[0]
    assert isinstance(out, nn.BatchNorm3d) and float(out.running_mean[0]) == 3.0

    class Odd2d(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(1))

    with pytest.raises(ConfigError, match="cannot convert layer 0"):
        convert_to_3d(nn.Sequential(Odd2d()))


def test_schemas_registered_and_towers_run_on_volumes():
    assert {"resnet3d", "acs", "2.5d"} <= set(encoder_schemas())
    x = torch.rand(2, 1, 16, 16, 16)
    for spec, dim in [("resnet3d:resnet18", 512), ("acs:resnet18", 512), ("2.5d:resnet18?pool=max", 512)]:
        enc = load_encoder(spec, image_size=16)
        assert enc.image_size == 16 and enc.in_chans == 1 and enc.mean == (0.0,) and enc.embed_dim == dim
        feats = enc.encode_image(x)
        assert feats.shape == (2, dim) and torch.isfinite(feats).all()
        assert enc.image_model() is enc.tower
        assert not any(t.is_meta for t in enc.tower.parameters())  # converted layers are built on meta, then filled


def test_small_stem_matches_the_medmnist_resnet():
    enc = load_encoder("resnet3d:resnet18")
    trunk = enc.tower.trunk
    assert isinstance(trunk.conv1, nn.Conv3d) and trunk.conv1.kernel_size == (3, 3, 3)
    assert trunk.conv1.stride == (1, 1, 1) and isinstance(trunk.maxpool, nn.Identity)
    assert isinstance(trunk.bn1, nn.BatchNorm3d)
    # the MedMNIST ResNet-18: 11.2M parameters in 2D without its classifier; 3x3x3 kernels triple the convs
    n_conv = sum(m.weight.numel() for m in trunk.modules() if isinstance(m, nn.Conv3d))
    assert 32_000_000 < n_conv < 34_000_000


def test_2p5d_tower_is_the_mean_of_slice_features():
    enc = load_encoder("2.5d:resnet18", image_size=16)
    x = torch.rand(1, 1, 4, 32, 32)
    tower = enc.tower.eval()
    with torch.no_grad():
        ref = torch.stack([tower.tower(x[:, :, d]) for d in range(4)], 1).mean(1)
        torch.testing.assert_close(tower(x), ref)
        pooled, tokens, grid = tower.forward_tokens(x)
    assert grid[0] == 4 and tokens.shape[1] == 4 * grid[1] * grid[2]


def test_2d_input_to_a_3d_encoder_is_one_clear_error():
    enc = load_encoder("resnet3d:resnet18")
    with pytest.raises(ConfigError, match=r"expects volumes \[B, C, D, H, W\]"):
        enc.encode_image(torch.rand(1, 1, 28, 28))


@pytest.mark.parametrize("spec,match", [
    ("resnet3d:", "needs a timm ResNet name"),
    ("resnet3d:resnet18?colour=red", "unknown option"),
    ("resnet3d:resnet18?size=abc", "size must be an integer"),
    ("acs:resnet18?conv=3d", "contradicts"),
    ("resnet3d:resnet18?stem=huge", "stem must be one of"),
    ("resnet3d:vit_tiny_patch16_224", "ResNet-style"),
])
def test_bad_specs(spec, match):
    with pytest.raises(ConfigError, match=match):
        load_encoder(spec)


def test_parse_spec_keyword_options_override():
    o = parse_volume_spec("resnet3d", "resnet50@w.safetensors?conv=acs", image_size=64, in_chans=3)
    assert o == {"name": "resnet50", "weights": "w.safetensors", "conv": "acs", "size": 64, "in_chans": 3}


def test_acs_keeps_2d_weights_from_a_weights_file(tmp_path):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model2d = timm.create_model("resnet18", pretrained=False, num_classes=0)
    path = tmp_path / "r18.safetensors"
    save_file({k: v.contiguous() for k, v in model2d.state_dict().items()}, str(path))
    enc = load_encoder(f"acs:resnet18@{path}")
    conv = enc.tower.trunk.layer1[0].conv1
    assert isinstance(conv, ACSConv3d)
    torch.testing.assert_close(conv.weight, model2d.layer1[0].conv1.weight)
    assert enc.mean != (0.0,)  # pretrained statistics (ImageNet, averaged to one channel)
    i3d = load_encoder(f"resnet3d:resnet18@{path}").tower.trunk.layer1[0].conv2.weight
    torch.testing.assert_close(i3d.sum(2), model2d.layer1[0].conv2.weight)


def test_small_stem_option_is_a_no_op_for_resnet3d():
    from medvl.evaluate.finetune import use_small_stem

    tower = load_encoder("resnet3d:resnet18").tower
    use_small_stem(tower)  # already the 3x3/1 stem: no "not a ResNet" error
    assert tower.trunk.conv1.stride == (1, 1, 1)
