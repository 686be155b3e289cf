"""Registry: presets build and run for 28/64 px and 1/3 channels; overrides are validated."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medvl.errors import ConfigError
from medvl.models import create_model, list_models, model_config

ROOT = Path(__file__).resolve().parents[2]


def test_presets_listed():
    assert {"clip-tiny", "clip-small", "siglip-tiny", "clip3d-tiny"} <= set(list_models())


@pytest.mark.parametrize("name", ["clip-tiny", "clip-small", "siglip-tiny", "clip3d-tiny"])
@pytest.mark.parametrize("chans", [1, 3])
def test_preset_forward_sizes_and_channels(name, chans, reports):
    torch.manual_seed(0)
    model = create_model(name, tokenizer_texts=reports, **{"image.in_chans": chans}).eval()
    tok = model.tokenizer(reports[:2])
    for size in (28, 64):
        shape = (2, chans, 16, size, size) if name.startswith("clip3d") else (2, chans, size, size)
        with torch.no_grad():
            out = model(torch.rand(shape), tok["input_ids"], tok["attention_mask"])
        assert out["image_features"].shape == (2, model.embed_dim)
        assert out["text_features"].shape == (2, model.embed_dim)
        torch.testing.assert_close(out["image_features"].norm(dim=-1), torch.ones(2))
        torch.testing.assert_close(out["text_features"].norm(dim=-1), torch.ones(2))
        assert torch.isfinite(out["image_features"]).all()
    assert (out["logit_bias"] is not None) == (name == "siglip-tiny")


def test_unknown_override_key_lists_valid_keys():
    with pytest.raises(ConfigError) as exc:
        create_model("clip-tiny", **{"image.nmae": "resnet18"})
    msg = str(exc.value)
    assert "nmae" in msg and "image" in msg
    for key in ("name", "in_chans", "image_size", "pretrained_weights"):
        assert key in msg
    with pytest.raises(ConfigError, match="embed_dim"):
        create_model("clip-tiny", embed_dimm=3)


def test_overrides_dotted_and_nested():
    cfg = model_config("clip-tiny", embed_dim=32, **{"image.name": "resnet18", "text.layers": 1})
    assert (cfg.embed_dim, cfg.image.name, cfg.text.layers) == (32, "resnet18", 1)
    cfg = model_config("clip-small", image={"kwargs": {"depth": 2}})
    assert cfg.image.kwargs == {"depth": 2} and cfg.image.patch_size == 8  # merged, not replaced
    model = create_model("clip-tiny", embed_dim=16, **{"text.layers": 1})
    assert model.embed_dim == 16 and len(model.text.layers) == 1


def test_yaml_path_and_configs_dir_point_at_presets(tmp_path):
    cfg = model_config(ROOT / "configs" / "models" / "clip-tiny.yaml")
    assert cfg == model_config("clip-tiny")
    custom = tmp_path / "m.yaml"
    custom.write_text("embed_dim: 8\nimage: {name: test_convnext}\ntext: {layers: 1, width: 32, heads: 2}\n")
    model = create_model(custom).eval()
    assert model.embed_dim == 8
    # ConvNeXt's unpadded downsampling cannot take 28 px natively; the tower upsamples.
    assert model.encode_image(torch.rand(1, 1, 28, 28)).shape == (1, 8)


def test_unknown_preset_and_bad_values():
    with pytest.raises(ConfigError, match="clip-tiny"):
        create_model("no-such-model")
    with pytest.raises(ConfigError, match="valid: resnet3d, timm"):
        create_model("clip-tiny", **{"image.type": "monai"})
    with pytest.raises(ConfigError, match="patch_size"):
        create_model("clip-tiny", **{"image.patch_size": 8})
    with pytest.raises(ConfigError, match="image.name"):
        create_model("clip-tiny", **{"image.name": "not_a_timm_model"})
    with pytest.raises(ConfigError, match="pool"):
        create_model("clip-tiny", **{"text.pool": "max"})


def test_models_list_cli():
    from typer.testing import CliRunner

    import medvl.cli  # noqa: F401  registers the commands
    from medvl.cli.app import app

    result = CliRunner().invoke(app, ["models", "list"], terminal_width=200)
    assert result.exit_code == 0, result.output
    out = result.output
    for name in ("clip-tiny", "siglip-tiny", "clip3d-tiny"):
        assert name in out
