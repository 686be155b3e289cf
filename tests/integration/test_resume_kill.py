"""Exact resume with a real SIGKILL, and the CLI's divergence exit, through `medvl train`."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from trainutil import medvl_cmd, tiny_config, write_config

from medvl.cli import main
from medvl.train import checkpoint as ck
from medvl.train.config import build_train_config
from medvl.train.trainer import train

TIMEOUT = 120


def _steps_logged(out: Path) -> int:
    metrics = out / "metrics.csv"
    return max(0, len(metrics.read_text().splitlines()) - 1) if metrics.is_file() else 0


def _safetensors_parts(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def test_sigkill_then_resume_is_bit_identical(tiny_manifest: Path, tmp_path: Path) -> None:
    """Uninterrupted run vs. run SIGKILLed mid-way and resumed: identical final weights (CPU).

    Only the killed run needs its own process; the reference and the resume run in-process
    (the config pins ``train.threads=1`` so all three use the same kernels).
    """
    raw = tiny_config(tiny_manifest, tmp_path / "unused")
    cfg = write_config(tmp_path / "cfg.yaml", raw)
    ref, crashed = tmp_path / "ref", tmp_path / "crashed"
    train(build_train_config(raw, [f"train.out_dir={ref}"]))
    # The same run, slowed down a little so it can be killed between checkpoints (after the
    # step-6 checkpoint, 1-2 steps into the next interval).
    env = dict(os.environ, MEDVL_DEBUG_STEP_DELAY="0.25")
    proc = subprocess.Popen(medvl_cmd("train", "--config", str(cfg), "--out", str(crashed)), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + TIMEOUT
        while _steps_logged(crashed) < 8:
            assert proc.poll() is None, "training ended before it could be killed"
            assert time.time() < deadline
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    latest = ck.latest_checkpoint(crashed)
    assert latest is not None and 6 <= int(latest.name.split("_")[1]) < 12
    result = train(build_train_config(raw, [f"train.out_dir={crashed}"]), resume=True)
    assert result.resumed_from == latest and result.step == 12
    a = load_file(ref / "last" / "weights.safetensors")
    b = load_file(crashed / "last" / "weights.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # Byte-level: the tensor data region is identical, and the header is the same JSON (the
    # safetensors library writes the __metadata__ map in hash order, which differs per process).
    ra, rb = _safetensors_parts(ref / "last" / "weights.safetensors"), \
        _safetensors_parts(crashed / "last" / "weights.safetensors")
    assert ra == rb
    # The metrics of the redone steps replace the killed run's rows (no duplicates), same losses.
    def losses(out: Path) -> list[tuple[str, str]]:
        return [tuple(r.split(",")[:2]) for r in (out / "metrics.csv").read_text().splitlines()[1:]]
    assert losses(crashed) == losses(ref) and len(losses(ref)) == 12


def test_cli_divergence_exits_2_and_names_step(tiny_manifest: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path / "cfg.yaml", tiny_config(tiny_manifest, tmp_path / "run"))
    with pytest.raises(SystemExit) as exc:
        main(["train", "--config", str(cfg), "optim.lr=1e6", "optim.warmup_steps=0"])
    err = capsys.readouterr().err
    assert exc.value.code == 2, err
    # which step first overflows depends on the optimizer kernel (fused vs foreach AdamW): the message must name it
    assert re.search(r"training diverged at step \d+: the (loss|gradient norm) is (nan|inf)", err), err
    assert "manifest rows" in err
    assert "no checkpoint was written before this step" in err


def test_cli_unknown_key_lists_valid_keys(tiny_manifest: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path / "cfg.yaml", tiny_config(tiny_manifest, tmp_path / "run"))
    with pytest.raises(SystemExit) as exc:
        main(["train", "--config", str(cfg), "optim.lrate=1"])
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert "'lrate'" in err and "valid keys: betas" in err
