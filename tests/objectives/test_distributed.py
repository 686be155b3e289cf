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
