"""Checkpoint I/O: atomic directories, `complete` marker, crash mid-write, weights_only loading."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from medvl.errors import CheckpointError
from medvl.train import checkpoint as ck
from medvl.train.rng import capture_rng_state, restore_rng_state


def _writer(payload: bytes):
    def write(d: Path) -> None:
        (d / "weights.safetensors").write_bytes(payload)
        (d / "config.yaml").write_text("model: {}\n")
    return write


def _state(step: int) -> dict:
    p = torch.nn.Parameter(torch.randn(3, 2))
    opt = torch.optim.AdamW([p], lr=0.1)
    p.grad = torch.ones_like(p)
    opt.step()
    return {"version": 1, "step": step, "optimizer": opt.state_dict(), "rng": [capture_rng_state()]}


def test_save_list_and_load(tmp_path: Path) -> None:
    out = tmp_path / "run"
    c3 = ck.save_checkpoint(out, 3, _writer(b"w3"), _state(3), {"train": {"seed": 0}})
    assert c3.name == "step_000003" and ck.is_complete(c3)
    for name in ("weights.safetensors", "config.yaml", "train_state.pt", "train_config.yaml", "complete"):
        assert (c3 / name).is_file()
    c6 = ck.save_checkpoint(out, 6, _writer(b"w6"), _state(6), {})
    assert ck.latest_checkpoint(out) == c6
    assert (out / "last").resolve() == c6.resolve()
    assert (out / "latest").read_text().strip() == "checkpoints/step_000006"
    state = ck.load_train_state(c6)
    assert state["step"] == 6 and torch.is_tensor(state["rng"][0]["torch"])
    # keep_last prunes older checkpoints only after the new one is in place
    ck.save_checkpoint(out, 9, _writer(b"w9"), _state(9), {}, keep_last=2)
    assert [s for s, _ in ck.list_checkpoints(out)] == [6, 9]


def test_failed_write_keeps_previous_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "run"
    good = ck.save_checkpoint(out, 3, _writer(b"good"), _state(3), {})

    def broken(d: Path) -> None:
        (d / "weights.safetensors").write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        ck.save_checkpoint(out, 6, broken, _state(6), {})
    assert ck.latest_checkpoint(out) == good
    assert not (out / "checkpoints" / "step_000006").exists()
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step_000003"]


def test_incomplete_dirs_are_ignored_and_cleaned(tmp_path: Path) -> None:
    out = tmp_path / "run"
    good = ck.save_checkpoint(out, 3, _writer(b"good"), _state(3), {})
    # A dir whose marker lists a size that no longer matches (a truncated file) is not valid.
    bad = ck.save_checkpoint(out, 6, _writer(b"0123456789"), _state(6), {})
    (bad / "weights.safetensors").write_bytes(b"01234")
    leftover = out / "checkpoints" / ".tmp-step_000009-123"
    leftover.mkdir()
    (leftover / "weights.safetensors").write_bytes(b"x")
    assert ck.latest_checkpoint(out) == good
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        ck.load_train_state(bad)
    removed = ck.remove_partial(out)
    assert sorted(p.name for p in removed) == [".tmp-step_000009-123", "step_000006"]
    assert ck.latest_checkpoint(out) == good


def test_sigkill_during_write_leaves_previous_valid(tmp_path: Path) -> None:
    """A real crash: the writer process is SIGKILLed while the weights file is half written."""
    out = tmp_path / "run"
    flag = tmp_path / "writing"
    script = textwrap.dedent(f"""
        import time, torch
        from pathlib import Path
        from medvl.train import checkpoint as ck
        out = Path({str(out)!r})
        def w(payload, slow=False):
            def write(d):
                with open(d / "weights.safetensors", "wb") as f:
                    f.write(payload)
                    f.flush()
                    if slow:
                        Path({str(flag)!r}).touch()
                        time.sleep(60)
            return write
        ck.save_checkpoint(out, 3, w(b"good"), {{"step": 3}}, {{}})
        ck.save_checkpoint(out, 6, w(b"half", slow=True), {{"step": 6}}, {{}})
    """)
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.time() + 60
        while not flag.exists():
            assert proc.poll() is None, "writer exited early"
            assert time.time() < deadline
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    latest = ck.latest_checkpoint(out)
    assert latest is not None and latest.name == "step_000003"
    assert ck.load_train_state(latest)["step"] == 3
    assert (out / "last").resolve() == latest.resolve()


def test_rng_state_roundtrip_through_weights_only_load(tmp_path: Path) -> None:
    import random

    import numpy as np

    state = capture_rng_state()
    expect = (torch.rand(3), np.random.rand(3), random.random())
    ck.atomic_torch_save({"rng": state}, tmp_path / "s.pt")
    loaded = torch.load(tmp_path / "s.pt", weights_only=True)["rng"]
    torch.rand(5), np.random.rand(5), random.random()
    restore_rng_state(loaded)
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expect[0], got[0]) and np.array_equal(expect[1], got[1]) and expect[2] == got[2]
