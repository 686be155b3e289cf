"""Dense heads on an ``hf:`` ViT/DINOv2 (patch tokens of the last blocks), offline with a tiny random model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
pytest.importorskip("transformers")


def test_dinov2_patch_tokens_train_and_reload(seg_phantoms: Path, tmp_path: Path):
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    from medvl.models.seg_heads import build_seg_model
    from medvl.segment.model import load_seg_model
    from medvl.segment.train import load_seg_config, train_segmentation

    from .conftest import tiny_overrides

    folder = tmp_path / "dino"
    torch.manual_seed(2)
    Dinov2Model(Dinov2Config(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                             intermediate_size=64)).save_pretrained(folder)
    BitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                      image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]).save_pretrained(folder)
    m = build_seg_model(f"hf:{folder}", ["a", "b"], "multiclass", head="linear", freeze="frozen")
    assert m.backbone.channels == [32, 32] and m.in_chans == 3
    assert m(torch.rand(2, 3, 36, 28)).shape == (2, 3, 36, 28)  # padded to the patch grid, back to the input size
    assert m.num_params(trainable_only=True) < m.num_params() // 10  # frozen: only the probe trains
    cfg = load_seg_config(None, tiny_overrides(seg_phantoms, steps=2) + [f"model.encoder=hf:{folder}",
                                                                         "data.mask_column=anatomy_mask"],
                          tmp_path / "run")
    train_segmentation(cfg)
    net = load_seg_model(tmp_path / "run" / "last")  # rebuilt from the stored config, without the folder
    x = torch.rand(1, 1, 32, 32)
    assert net(x.expand(-1, 3, -1, -1)).shape == (1, 3, 32, 32)
