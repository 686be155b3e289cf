"""save_model/load_model: identical outputs after a round trip, clear errors on bad checkpoints."""

from __future__ import annotations

import pytest
import torch
import yaml

from medvl.errors import CheckpointError
from medvl.models import create_model, load_model, save_model


def _outputs(model, reports):
    tok = model.tokenizer(reports)
    torch.manual_seed(1)
    images = torch.rand(len(reports), model.cfg.image.in_chans, 32, 32)
    with torch.no_grad():
        return model(images, tok["input_ids"], tok["attention_mask"])


def test_round_trip_identical(tmp_path, tiny_model, reports):
    with torch.no_grad():
        tiny_model.logit_scale.fill_(2.0)  # a non-default value must survive too
    save_model(tiny_model, tmp_path / "ck")
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["config.yaml", "weights.safetensors"]
    loaded = load_model(tmp_path / "ck")
    assert not loaded.training
    assert loaded.config == tiny_model.config
    a, b = _outputs(tiny_model, reports), _outputs(loaded, reports)
    for key in ("image_features", "text_features", "logit_scale"):
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    doc = yaml.safe_load((tmp_path / "ck" / "config.yaml").read_text())
    assert doc["medvl_format"] == 1 and doc["model"]["text"]["tokenizer"]


def test_siglip_round_trip_keeps_bias_and_extra(tmp_path, reports):
    model = create_model("siglip-tiny", tokenizer_texts=reports).eval()
    save_model(model, tmp_path, extra={"train": {"lr": 0.001}})
    doc = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert doc["train"] == {"lr": 0.001}
    loaded = load_model(tmp_path)
    assert loaded.logit_bias.item() == pytest.approx(-10.0)
    torch.testing.assert_close(_outputs(model, reports)["text_features"], _outputs(loaded, reports)["text_features"])


def test_missing_dir_and_files(tmp_path, tiny_model):
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="config.yaml"):
        load_model(tmp_path)
    save_model(tiny_model, tmp_path)
    (tmp_path / "weights.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing weights.safetensors"):
        load_model(tmp_path)


def test_corrupt_weights_and_config(tmp_path, tiny_model):
    save_model(tiny_model, tmp_path)
    weights = tmp_path / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_model(tmp_path)
    (tmp_path / "config.yaml").write_text("model: [unclosed")
    with pytest.raises(CheckpointError, match="invalid YAML"):
        load_model(tmp_path)
    (tmp_path / "config.yaml").write_text("something: else\n")
    with pytest.raises(CheckpointError, match="no 'model' section"):
        load_model(tmp_path)


def test_shape_mismatch_names_the_tensor(tmp_path, tiny_model):
    save_model(tiny_model, tmp_path)
    doc = yaml.safe_load((tmp_path / "config.yaml").read_text())
    doc["model"]["embed_dim"] = 32
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(CheckpointError, match="shape mismatch.*projection"):
        load_model(tmp_path)
    doc["model"]["embed_dim"] = 64
    doc["model"]["text"]["layers"] = 3
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(CheckpointError, match="missing keys: text.layers.2"):
        load_model(tmp_path)
    doc["model"]["text"]["layerz"] = 3
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(CheckpointError, match="layerz"):
        load_model(tmp_path)


def test_atomic_overwrite_leaves_no_temp_files(tmp_path, tiny_model):
    save_model(tiny_model, tmp_path)
    save_model(tiny_model, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "weights.safetensors"]
