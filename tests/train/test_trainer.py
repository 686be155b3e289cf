"""The training loop in-process: loss falls, NaN stops safely, resume guards, data policies."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from trainutil import make_manifest, tiny_config

from medvl.errors import CheckpointError, ConfigError, ManifestError, TrainingDivergedError
from medvl.train import checkpoint as ck
from medvl.train.config import build_train_config
from medvl.train.trainer import param_groups, train


def _cfg(manifest: Path, out: Path, **sections):
    return build_train_config(tiny_config(manifest, out, **sections))


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_loss_falls_on_tiny_set(tiny_manifest: Path, tmp_path: Path) -> None:
    cfg = _cfg(tiny_manifest, tmp_path / "run", train={"max_steps": 24, "ckpt_every": 100, "log_every": 4,
                                                       "tensorboard": True})
    result = train(cfg)
    losses = [v for _, v in result.losses]
    assert len(losses) == 24
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    # ln(16) = 2.77 is chance for a batch of 16; 8 distinct captions put the floor near ln(2).
    assert first > 2.5 and last < 0.75 * first, losses
    assert result.last_checkpoint == tmp_path / "run" / "checkpoints" / "step_000024"
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("step,loss,lr,samples_per_s") and len(rows) == 1 + 6
    assert (tmp_path / "run" / "config.yaml").is_file()
    assert list((tmp_path / "run" / "tb").glob("events.out.tfevents.*"))
    assert (result.last_checkpoint / "train_config.yaml").is_file()


def test_poisoned_batch_stops_with_step_rows_and_keeps_last_good_checkpoint(tiny_manifest: Path,
                                                                           tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg = _cfg(tiny_manifest, out)
    seen_rows: list[int] = []

    def poison(step: int, batch: dict) -> dict | None:
        if step == 5:
            batch["image"][0] = float("nan")
            seen_rows.extend(int(r) for r in batch["row"])
            return batch
        return None

    with pytest.raises(TrainingDivergedError) as err:
        train(cfg, batch_hook=poison)
    msg = str(err.value)
    good = out / "checkpoints" / "step_000003"
    assert "step 5" in msg and "the loss is nan" in msg
    assert f"manifest rows {', '.join(map(str, seen_rows))}" in msg
    assert str(good) in msg
    assert ck.latest_checkpoint(out) == good and ck.is_complete(good)
    assert not (out / "checkpoints" / "step_000006").exists()
    before = _snapshot(good)
    # ... and resuming from it trains on (the hook is gone), rewriting nothing of step 3.
    result = train(cfg, resume=True)
    assert result.step == 12 and _snapshot(good) == before


@pytest.mark.parametrize("clip", [None, 1.0])
def test_nan_gradient_under_finite_loss_stops_whatever_the_clipping(tiny_manifest: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch,
                                                                   clip: float | None) -> None:
    """With clipping off a NaN gradient used to be applied and checkpointed; the norm is now always checked."""
    from medvl.train import trainer as trainer_mod

    real = trainer_mod.forward_loss
    calls = {"n": 0}

    def poisoned(model, *args, **kwargs):
        out = real(model, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 5:  # value 0, gradient 0 * inf = NaN: the loss stays finite
            p = next(q for q in model.parameters() if q.requires_grad)
            out = {**out, "loss": out["loss"] + torch.sqrt((p * 0).sum())}
        return out

    monkeypatch.setattr(trainer_mod, "forward_loss", poisoned)
    out = tmp_path / "run"
    cfg = _cfg(tiny_manifest, out, optim={"clip_grad_norm": clip})
    with pytest.raises(TrainingDivergedError) as err:
        train(cfg)
    msg = str(err.value)
    assert "step 5" in msg and "the gradient norm" in msg and "manifest rows" in msg
    assert ck.latest_checkpoint(out) == out / "checkpoints" / "step_000003"
    assert not (out / "checkpoints" / "step_000005").exists()


def test_fresh_run_refuses_existing_checkpoints_and_bad_resume_changes_nothing(tiny_manifest: Path,
                                                                               tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(_cfg(tiny_manifest, out, train={"max_steps": 3}))
    before = _snapshot(out)
    with pytest.raises(ConfigError, match="already holds checkpoints"):
        train(_cfg(tiny_manifest, out, train={"max_steps": 3}))
    other = _cfg(tiny_manifest, out, train={"max_steps": 6},
                 model={"name": "siglip-tiny", "overrides": {"embed_dim": 32}})
    with pytest.raises(CheckpointError) as err:
        train(other, resume=True)
    assert "model" in str(err.value) and "clip-tiny" in str(err.value) and "siglip-tiny" in str(err.value)
    with pytest.raises(CheckpointError, match="data.image_size"):
        train(_cfg(tiny_manifest, out, data={"manifest": str(tiny_manifest), "image_size": 32}), resume=True)
    assert _snapshot(out) == before


def test_empty_text_policy(tmp_path: Path) -> None:
    manifest = make_manifest(tmp_path / "data", n=40, empty_text_rows=5)
    result = train(_cfg(manifest, tmp_path / "a", train={"max_steps": 2, "ckpt_every": 100}))
    assert result.skipped_empty_text == 5 and result.step == 2
    with pytest.raises(ManifestError, match=r"5 training pair\(s\) have an empty text \(rows 1, 2, 3, 4, 5\)"):
        train(_cfg(manifest, tmp_path / "b", data={"manifest": str(manifest), "empty_text": "error"}))


def test_bf16_accumulation_and_checkpointing_run(tiny_manifest: Path, tmp_path: Path) -> None:
    cfg = _cfg(tiny_manifest, tmp_path / "run", optim={"grad_accum": 2, "lr": 1e-3},
               train={"max_steps": 2, "precision": "bf16", "grad_checkpointing": True, "ckpt_every": 100,
                      "batch_size": 8})
    result = train(cfg)
    assert result.step == 2 and all(torch.isfinite(torch.tensor(v)) for _, v in result.losses)
    state = ck.load_train_state(result.last_checkpoint)
    # 2 steps x 2 micro-batches of 8 = 4 batches of the 8 per epoch consumed.
    assert (state["epoch"], state["batch_in_epoch"]) == (0, 4)


def test_param_groups_exclude_bias_norm_and_scale() -> None:
    from medvl.models import create_model

    model = create_model("clip-tiny", **{"embed_dim": 16})
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    no_names = {names[id(p)] for p in no_decay["params"]}
    assert "logit_scale" in no_names
    assert all(p.ndim >= 2 for p in decay["params"])
    assert any(n.endswith("bias") for n in no_names) and any("norm" in n or ".bn" in n for n in no_names)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0


def test_trim_padding_keeps_text_features() -> None:
    from medvl.models import create_model
    from medvl.train.trainer import trim_padding

    torch.manual_seed(0)
    model = create_model("clip-tiny", **{"embed_dim": 16, "text.context_length": 24, "text.vocab_size": 50})
    model.eval()
    ids = torch.randint(5, 50, (3, 24))
    mask = torch.zeros(3, 24, dtype=torch.long)
    for i, n in enumerate((5, 9, 7)):
        mask[i, :n] = 1
    ids = ids * mask
    short_ids, short_mask = trim_padding(ids, mask)
    assert short_ids.shape == (3, 9) and torch.equal(short_mask, mask[:, :9])
    full = model.encode_text(ids, mask)
    trimmed = model.encode_text(short_ids, short_mask)
    torch.testing.assert_close(trimmed, full, rtol=1e-5, atol=1e-6)


def test_unreadable_image_follows_on_error(tmp_path: Path) -> None:
    from medvl.errors import ImageReadError

    manifest = make_manifest(tmp_path / "data", n=32)
    (tmp_path / "data" / "img" / "0003.png").write_bytes(b"not a png")
    # 32 samples, batch 16: every sample is drawn in each epoch.
    cfg = _cfg(manifest, tmp_path / "skip", data={"manifest": str(manifest), "on_error": "skip"},
               train={"max_steps": 2, "ckpt_every": 100})
    result = train(cfg)
    assert result.step == 2 and result.skipped_images == 1
    assert '"row": 4' in (tmp_path / "skip" / "skipped_images.jsonl").read_text()
    with pytest.raises(ImageReadError, match="0003.png"):
        train(_cfg(manifest, tmp_path / "raise", train={"max_steps": 2}))


@pytest.mark.slow
def test_compile_option_runs(tiny_manifest: Path, tmp_path: Path) -> None:
    cfg = _cfg(tiny_manifest, tmp_path / "run", train={"max_steps": 2, "compile": True, "ckpt_every": 100})
    result = train(cfg)
    assert result.step == 2 and all(torch.isfinite(torch.tensor(v)) for _, v in result.losses)


def test_workers_and_augmentation_do_not_change_the_run(tiny_manifest: Path, tmp_path: Path) -> None:
    """Augmentation is a function of (seed, epoch, index): 0 or 2 DataLoader workers, same losses."""
    runs = []
    for workers in (0, 2):
        cfg = _cfg(tiny_manifest, tmp_path / f"w{workers}",
                   data={"manifest": str(tiny_manifest), "augment": True, "num_workers": workers},
                   train={"max_steps": 5, "ckpt_every": 100})
        runs.append([v for _, v in train(cfg).losses])
    assert runs[0] == runs[1]
