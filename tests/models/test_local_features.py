"""Local (patch and token) features: what local alignment and grounding read."""

from __future__ import annotations

import pytest
import torch

from medvl.errors import ConfigError
from medvl.models import create_model

TEXTS = ["small right pneumothorax", "no pleural effusion", "cardiomegaly"] * 3


@pytest.mark.parametrize("image", [
    {"image_size": 64, "kwargs": {"output_stride": 8}},                        # CNN feature map 8x8
    {"name": "vit_tiny_patch16_224", "image_size": 48, "patch_size": 8},      # ViT patch tokens 6x6
])
def test_tokens_pool_to_the_global_features(image: dict) -> None:
    torch.manual_seed(0)
    model = create_model("clip-tiny", image=image, tokenizer_texts=TEXTS).eval()
    size = image["image_size"]
    x = torch.rand(2, 1, size, size)
    tok = model.tokenizer(TEXTS[:2])
    out = model(x, tok["input_ids"], tok["attention_mask"], return_tokens=True)
    plain = model(x, tok["input_ids"], tok["attention_mask"])
    assert torch.allclose(out["image_features"], plain["image_features"], atol=1e-5)
    assert torch.allclose(out["text_features"], plain["text_features"], atol=1e-5)
    gh, gw = out["patch_grid"]
    assert out["patch_features"].shape == (2, gh * gw, model.embed_dim)
    assert (gh, gw) == ((8, 8) if "kwargs" in image else (6, 6))
    assert torch.allclose(out["patch_features"].norm(dim=-1), torch.ones(2, gh * gw), atol=1e-5)
    if "kwargs" in image:  # CNN + linear projection: the global embedding is the mean of the local ones
        pooled, patches, _ = model.encode_image_tokens(x)
        assert torch.allclose(pooled, patches.mean(dim=1), atol=1e-5)


def test_word_mask_excludes_padding_and_special_tokens() -> None:
    model = create_model("clip-tiny", tokenizer_texts=TEXTS)
    tok = model.tokenizer(["no pleural effusion"])
    words = model.word_mask(tok["input_ids"], tok["attention_mask"])
    n_real = int(tok["attention_mask"].sum())
    assert int(words.sum()) == n_real - 2  # [CLS] and [SEP] are not words
    assert words[0, 0] == 0 and words[0, n_real - 1] == 0
    mask_id = model.tokenizer.mask_id
    assert mask_id is not None and mask_id in model.tokenizer.special_ids


def test_3d_tower_gives_a_volume_grid_and_wrong_input_is_refused() -> None:
    model = create_model("clip3d-tiny", tokenizer_texts=TEXTS).eval()
    cfg = model.cfg.image
    x = torch.rand(1, cfg.in_chans, 16, 32, 32)
    pooled, tokens, grid = model.encode_image_tokens(x)
    assert len(grid) == 3 and tokens.shape[1] == grid[0] * grid[1] * grid[2]
    with pytest.raises(ConfigError):
        model.visual.forward_tokens(torch.rand(1, 1, 32, 32))
