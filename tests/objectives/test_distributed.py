"""gather_features: a no-op in one process, and exact global losses/gradients across 2 ranks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from medvl.objectives.distributed import gather_features, world_info


def test_single_process_is_identity():
    a, b = torch.randn(3, 4, requires_grad=True), torch.randn(3, 4)
    ga, gb = gather_features(a, b)
    assert ga is a and gb is b
    assert world_info() == (0, 1)


def test_two_ranks_match_single_process_reference():
    script = Path(__file__).with_name("dist_check.py")
    src = str(Path(__file__).resolve().parents[2] / "src")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": src, "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert proc.stdout.strip() == "OK"


def test_every_rank_report_reaches_the_verdict(tmp_path):
    """A mismatch seen only by rank 1 (or a rank that wrote nothing) must fail the 2-process check."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("dist_check", Path(__file__).with_name("dist_check.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    result = str(tmp_path / "result")
    (tmp_path / "result.0").write_text("OK")
    assert mod.collect(result) == "rank 1: wrote no report"
    (tmp_path / "result.1").write_text("rank 1: infonce: image grad differs")
    assert mod.collect(result) == "rank 1: infonce: image grad differs"
    (tmp_path / "result.1").write_text("OK")
    assert mod.collect(result) == "OK"
