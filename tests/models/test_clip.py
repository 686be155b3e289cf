"""CLIPModel: temperature/bias init and clamp, gradients, freezing, checkpointing, config rebuild."""

from __future__ import annotations

import math

import pytest
import torch

from medvl.config import from_dict
from medvl.errors import ConfigError
from medvl.models import CLIPModel, ModelConfig, create_model


def test_logit_scale_init_and_clamp(tiny_model):
    out = tiny_model(None, None)
    assert out["logit_scale"].item() == pytest.approx(1 / 0.07, rel=1e-5)
    assert out["logit_bias"] is None
    with torch.no_grad():
        tiny_model.logit_scale.fill_(math.log(1000.0))
    assert tiny_model(None, None)["logit_scale"].item() == pytest.approx(100.0)
    tiny_model.clamp_logit_scale_()
    assert tiny_model.logit_scale.item() == pytest.approx(math.log(100.0))


def test_siglip_init(reports):
    model = create_model("siglip-tiny", tokenizer_texts=reports)
    out = model(None, None)
    assert out["logit_scale"].item() == pytest.approx(10.0, rel=1e-5)
    assert out["logit_bias"].item() == pytest.approx(-10.0)


def test_gradient_reaches_both_towers_and_scale(tiny_model, reports):
    tiny_model.train()
    tok = tiny_model.tokenizer(reports[:4])
    out = tiny_model(torch.rand(4, 1, 32, 32), tok["input_ids"], tok["attention_mask"])
    logits = out["logit_scale"] * out["image_features"] @ out["text_features"].T
    torch.nn.functional.cross_entropy(logits, torch.arange(4)).backward()
    for name in ("visual", "text", "image_projection", "text_projection"):
        grads = [p.grad for p in getattr(tiny_model, name).parameters()]
        assert any(g is not None and g.abs().sum() > 0 for g in grads), name
    assert tiny_model.logit_scale.grad is not None


def test_padding_does_not_change_text_features(reports):
    # causal (eot) and bidirectional (mean) towers must ignore padding positions
    for name in ("clip-tiny", "siglip-tiny"):
        torch.manual_seed(0)
        model = create_model(name, tokenizer_texts=reports).eval()
        tok = model.tokenizer(["small pleural effusion"])
        n = int(tok["attention_mask"].sum())
        with torch.no_grad():
            full = model.encode_text(tok["input_ids"], tok["attention_mask"])
            short = model.encode_text(tok["input_ids"][:, :n], tok["attention_mask"][:, :n])
            other_pad = tok["input_ids"].clone()
            other_pad[:, n:] = 7
            junk = model.encode_text(other_pad, tok["attention_mask"])
        torch.testing.assert_close(full, short, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(full, junk, atol=1e-5, rtol=1e-5)


def test_causal_mask_hides_future_tokens():
    from medvl.models.config import TextTowerConfig
    from medvl.models.text_towers import TransformerTextTower

    torch.manual_seed(0)
    ids = torch.randint(5, 40, (1, 10))
    ids2 = ids.clone()
    ids2[0, 6] = 41
    for causal in (True, False):
        tower = TransformerTextTower(TextTowerConfig(vocab_size=50, width=32, heads=2, causal=causal,
                                                     pool="cls")).eval()
        with torch.no_grad():
            same = torch.allclose(tower(ids), tower(ids2))
        # position 0 sees token 6 only without the causal mask
        assert same == causal


def test_lock_towers(tiny_model):
    tiny_model.lock_image_tower()
    assert not any(p.requires_grad for p in tiny_model.visual.parameters())
    assert all(p.requires_grad for p in tiny_model.image_projection.parameters())
    tiny_model.lock_text_tower(unlocked_layers=1)
    assert not tiny_model.text.token_embedding.weight.requires_grad
    assert not any(p.requires_grad for p in tiny_model.text.layers[0].parameters())
    assert all(p.requires_grad for p in tiny_model.text.layers[-1].parameters())
    model = create_model("clip-tiny")
    model.lock_image_tower(unlocked_layers=1)
    trainable = {n for n, p in model.visual.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("trunk.layer4") for n in trainable)


def test_grad_checkpointing_same_outputs(tiny_model, reports):
    tok = tiny_model.tokenizer(reports[:2])
    images = torch.rand(2, 1, 32, 32)
    tiny_model.train()
    ref = tiny_model(images, tok["input_ids"], tok["attention_mask"])
    tiny_model.set_grad_checkpointing(True)
    out = tiny_model(images, tok["input_ids"], tok["attention_mask"])
    torch.testing.assert_close(ref["text_features"], out["text_features"])
    torch.testing.assert_close(ref["image_features"], out["image_features"])
    (out["image_features"].sum() + out["text_features"].sum()).backward()
    assert tiny_model.text.layers[0].linear1.weight.grad is not None


def test_config_rebuilds_model_and_normalisation(tiny_model, reports):
    again = CLIPModel(from_dict(ModelConfig, tiny_model.config))
    again.load_state_dict(tiny_model.state_dict())
    again.eval()
    tok = tiny_model.tokenizer(reports[:2])
    torch.testing.assert_close(again.encode_text(**tok), tiny_model.encode_text(**tok))
    normed = create_model("clip-tiny", **{"image.mean": [0.5], "image.std": [0.25]}).eval()
    plain = create_model("clip-tiny").eval()
    plain.load_state_dict(normed.state_dict())
    x = torch.rand(2, 1, 32, 32)
    torch.testing.assert_close(normed.encode_image(x), plain.encode_image((x - 0.5) / 0.25))


def test_channel_mismatch_is_a_clear_error(tiny_model):
    with pytest.raises(ConfigError, match="in_chans=1"):
        tiny_model.encode_image(torch.rand(1, 3, 32, 32))


def test_mlp_projection_and_vit_any_size():
    model = create_model("clip-small", **{"image.kwargs.depth": 1, "text.layers": 1}).eval()
    assert isinstance(model.image_projection, torch.nn.Sequential)
    with torch.no_grad():
        for size in (28, 40, 64, 96):
            assert model.encode_image(torch.rand(1, 1, size, size)).shape == (1, 256)
