"""Tokenizer: trained on reports, fixed-length output, deterministic, stored in the model config."""

from __future__ import annotations

import pytest
import torch

from medvl.errors import ConfigError
from medvl.models import Tokenizer, create_model, train_tokenizer


def test_trained_tokenizer_pads_and_truncates(reports):
    tok = train_tokenizer(reports, vocab_size=300, context_length=8)
    out = tok(["pleural effusion", " ".join(reports)])
    assert out["input_ids"].dtype == torch.long and out["attention_mask"].dtype == torch.long
    assert out["input_ids"].shape == (2, 8) == out["attention_mask"].shape
    assert out["attention_mask"][0].tolist() == [1, 1, 1, 1, 0, 0, 0, 0]  # [CLS] pleural effusion [SEP]
    assert out["attention_mask"][1].all()
    sep = tok.backend.token_to_id("[SEP]")
    assert out["input_ids"][0, 3] == sep and out["input_ids"][1, -1] == sep  # truncation keeps [SEP]
    assert (out["input_ids"][0, 4:] == tok.pad_id).all()
    assert 20 < tok.vocab_size <= 300
    assert tok.decode(out["input_ids"][0].tolist()) == "pleural effusion"


def test_lowercase_and_deterministic(reports):
    a = train_tokenizer(reports, vocab_size=200)
    b = train_tokenizer(reports, vocab_size=200)
    assert a.to_json() == b.to_json()
    torch.testing.assert_close(a(["PLEURAL Effusion"])["input_ids"], a(["pleural effusion"])["input_ids"])


def test_wordpiece_option_and_bad_inputs(reports):
    tok = train_tokenizer(reports, vocab_size=200, kind="wordpiece", context_length=16)
    assert tok(["effusion"])["input_ids"].shape == (1, 16)
    with pytest.raises(ConfigError, match="bpe"):
        train_tokenizer(reports, kind="sentencepiece")
    with pytest.raises(ConfigError, match="no non-empty"):
        train_tokenizer(["", "  "])


def test_json_round_trip(reports):
    tok = train_tokenizer(reports, vocab_size=200, context_length=12)
    again = Tokenizer.from_json(tok.to_json(), 12)
    assert torch.equal(again(reports)["input_ids"], tok(reports)["input_ids"])
    with pytest.raises(ConfigError, match="tokenizers JSON"):
        Tokenizer.from_json("{not json", 12)


def test_untrained_model_explains_order(reports):
    model = create_model("clip-tiny")
    assert not model.tokenizer.trained
    with pytest.raises(ConfigError, match="set_tokenizer"):
        model.tokenizer(["x"])
    tok = train_tokenizer(reports, vocab_size=model.cfg.text.vocab_size)
    model.set_tokenizer(tok)
    assert model.tokenizer.trained
    assert model.text.token_embedding.num_embeddings == tok.vocab_size == model.config["text"]["vocab_size"]
    assert model.config["text"]["tokenizer"] == tok.to_json()
    # the context length comes from the model config, whatever the tokenizer was built with
    assert model.tokenizer(["x"])["input_ids"].shape == (1, model.cfg.text.context_length)
