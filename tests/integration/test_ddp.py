"""DDP: 2 gloo processes on CPU follow the 1-process loss trajectory for the same global batch.

Tolerance: rtol 1e-4 on every logged loss (observed ~1e-7: only float reduction order differs).
The image tower is a ViT (LayerNorm): BatchNorm statistics are per process under DDP on CPU, so
a BatchNorm tower would legitimately differ (SyncBatchNorm needs CUDA).
"""

from __future__ import annotations

import csv
import subprocess
from pathlib import Path

import pytest
import torch
from trainutil import medvl_cmd, tiny_config, write_config

from medvl.train import checkpoint as ck
from medvl.train.config import build_train_config
from medvl.train.trainer import train

OVERRIDES = ["model.overrides.image.name=test_vit", "model.overrides.image.patch_size=7", "train.max_steps=5",
             "train.ckpt_every=5"]


def _losses(out: Path) -> list[float]:
    with (out / "metrics.csv").open() as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


def test_two_processes_match_one(tiny_manifest: Path, tmp_path: Path) -> None:
    raw = tiny_config(tiny_manifest, tmp_path / "unused")
    cfg = write_config(tmp_path / "cfg.yaml", raw)
    one, two = tmp_path / "one", tmp_path / "two"
    train(build_train_config(raw, [*OVERRIDES, f"train.out_dir={one}"]))  # 1 process, in this one
    r = subprocess.run(medvl_cmd("train", "--config", str(cfg), "--out", str(two), "--nproc", "2", *OVERRIDES),
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "2 process(es)" in r.stderr
    a, b = _losses(one), _losses(two)
    assert len(a) == len(b) == 5
    assert b == pytest.approx(a, rel=1e-4)
    assert a[-1] < a[0]
    # Rank 0 alone wrote the checkpoint; it is complete and loadable.
    assert ck.latest_checkpoint(two) == two / "checkpoints" / "step_000005"
    assert len(ck.load_train_state(two / "last")["rng"]) == 2


@pytest.mark.slow
def test_ddp_resume_continues_exactly(tiny_manifest: Path, tmp_path: Path) -> None:
    """2 processes: 3 steps + --resume to 6 == 6 steps straight (constant lr so the length of the
    run does not change the schedule); the checkpoint holds one RNG state per rank."""
    raw = tiny_config(tiny_manifest, tmp_path / "unused")
    cfg = write_config(tmp_path / "cfg.yaml", raw)
    const = [*OVERRIDES[:2], "optim.min_lr_ratio=1.0", "optim.warmup_steps=0", "train.ckpt_every=3"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"

    def run(out: Path, *extra: str) -> None:
        r = subprocess.run(medvl_cmd("train", "--config", str(cfg), "--out", str(out), "--nproc", "2", *const,
                                     *extra), capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]

    run(straight, "train.max_steps=6")
    run(resumed, "train.max_steps=3")
    run(resumed, "train.max_steps=6", "--resume")
    from safetensors.torch import load_file

    a = load_file(straight / "last" / "weights.safetensors")
    b = load_file(resumed / "last" / "weights.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
