"""load_encoder: medvl checkpoint dirs and timm backbones behind one Encoder interface."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from medvl.errors import MedvlError
from medvl.models import Encoder, load_encoder, register_encoder_schema, save_model
from medvl.models.encoder import encoder_schemas


def test_checkpoint_encoder_matches_model(tmp_path, tiny_model, reports):
    save_model(tiny_model, tmp_path)
    enc = load_encoder(str(tmp_path))
    assert isinstance(enc, Encoder) and enc.has_text
    assert (enc.embed_dim, enc.in_chans, enc.image_size) == (64, 1, 64)
    assert enc.preprocess == {"image_size": 64, "in_chans": 1, "mean": [0.0], "std": [1.0]}
    images = torch.rand(5, 1, 32, 32)
    feats = enc.encode_image(images, batch_size=2)
    assert feats.shape == (5, 64) and feats.device.type == "cpu"
    with torch.no_grad():
        ref = tiny_model(images)["image_features"]
    torch.testing.assert_close(feats, ref, atol=1e-5, rtol=1e-5)
    text = enc.encode_text(reports[:3])
    tok = tiny_model.tokenizer(reports[:3])
    with torch.no_grad():
        torch.testing.assert_close(text, tiny_model(None, **tok)["text_features"], atol=1e-5, rtol=1e-5)
    assert not enc.model.training
    # 3-channel input is averaged to the model's 1 channel
    rgb = images.expand(-1, 3, -1, -1)
    torch.testing.assert_close(enc.encode_image(rgb), feats)
    assert load_encoder(f"medvl:{tmp_path}").embed_dim == 64


def test_timm_encoder_image_only(tmp_path):
    enc = load_encoder("timm:resnet18")
    assert not enc.has_text and enc.embed_dim == 512 and enc.in_chans == 3 and enc.image_size == 224
    assert enc.mean == (0.485, 0.456, 0.406)
    out = enc.encode_image(torch.rand(3, 1, 32, 32))  # grey input repeated to 3 channels
    assert out.shape == (3, 512)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(3))
    assert not torch.allclose(enc.encode_image(torch.rand(1, 3, 32, 32), normalize=False).norm(), torch.tensor(1.0))
    with pytest.raises(MedvlError, match="no text tower"):
        enc.encode_text(["effusion"])


def test_timm_encoder_with_weights(tmp_path):
    import timm

    src = timm.create_model("test_resnet", pretrained=False, num_classes=0)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    enc = load_encoder(f"timm:test_resnet@{path}", in_chans=3, image_size=64)
    assert enc.image_size == 64
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(enc.encode_image(x, normalize=False), src.eval()(x), atol=1e-5, rtol=1e-5)


def test_unknown_schema_lists_valid_ones(tmp_path):
    with pytest.raises(MedvlError, match="valid schemas: medvl:, timm:"):
        load_encoder("openclipx:foo")
    with pytest.raises(MedvlError, match="neither a checkpoint directory"):
        load_encoder(str(tmp_path / "missing"))


def test_register_schema_is_one_line(monkeypatch):
    from medvl.models import encoder as encoder_mod
    from medvl.models import encoder_registry

    monkeypatch.setattr(encoder_registry, "_SCHEMAS", dict(encoder_registry._SCHEMAS))

    @register_encoder_schema("fake")
    def _fake(rest, device="cpu", **kwargs):
        return encoder_mod.TimmEncoder("test_resnet", device=device, image_size=32)

    assert "fake" in encoder_schemas()
    assert load_encoder("fake:anything").embed_dim == 96


def test_image_model_is_trainable_and_matches(tmp_path, tiny_model):
    import copy

    save_model(tiny_model, tmp_path)
    for enc in (load_encoder(str(tmp_path)), load_encoder("timm:test_resnet", in_chans=1, image_size=32)):
        module = copy.deepcopy(enc.image_model()).eval()
        x = torch.rand(2, 1, 32, 32)
        with torch.no_grad():
            torch.testing.assert_close(torch.nn.functional.normalize(module(x), dim=-1), enc.encode_image(x),
                                       atol=1e-5, rtol=1e-5)
        feats = module.train()(x)
        assert feats.shape == (2, enc.embed_dim)
        feats.sum().backward()
        assert any(p.grad is not None for p in module.parameters())


def test_finetune_goes_through_image_model_medvl_and_timm(tmp_path, tiny_model, finetune_check):
    """Every schema fine-tunes through Encoder.image_model() (here: a medvl checkpoint and timm:)."""
    save_model(tiny_model, tmp_path)
    finetune_check(lambda: load_encoder(str(tmp_path)))
    finetune_check(lambda: load_encoder("timm:test_resnet", in_chans=1, image_size=32))


def test_finetune_refuses_an_encoder_without_image_model():
    from medvl.evaluate.finetune import image_backbone

    class Bare:
        name = "bare"

    with pytest.raises(MedvlError, match="bare.*image_model"):
        image_backbone(Bare())
