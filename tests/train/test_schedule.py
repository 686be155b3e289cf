"""Warmup + cosine learning-rate schedule."""

from __future__ import annotations

import math

import pytest
import torch

from medvl.train.schedule import CosineWarmup, lr_at


def test_lr_values() -> None:
    base, warm, total = 1.0, 4, 14
    assert [lr_at(s, base, warm, total) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_at(4, base, warm, total) == pytest.approx(1.0)
    # Halfway through the decay the cosine is at its midpoint.
    assert lr_at(9, base, warm, total) == pytest.approx(0.5)
    assert lr_at(14, base, warm, total) == pytest.approx(0.0, abs=1e-12)
    assert lr_at(100, base, warm, total) == pytest.approx(0.0, abs=1e-12)
    assert lr_at(14, base, warm, total, min_lr_ratio=0.1) == pytest.approx(0.1)
    assert lr_at(0, 2.0, 0, 10) == pytest.approx(2.0)
    assert lr_at(5, 2.0, 0, 10) == pytest.approx(2.0 * 0.5 * (1 + math.cos(math.pi * 0.5)))


def test_scheduler_drives_optimizer_and_resumes() -> None:
    p = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.AdamW([{"params": [p]}, {"params": [], "lr": 0.5}], lr=1.0)
    sched = CosineWarmup(opt, warmup_steps=2, total_steps=10)
    seen = []
    for _ in range(5):
        seen.append(sched.apply())
        sched.step()
    assert seen == pytest.approx([lr_at(s, 1.0, 2, 10) for s in range(5)])
    assert opt.param_groups[1]["lr"] == pytest.approx(lr_at(5, 0.5, 2, 10))

    opt2 = torch.optim.AdamW([{"params": [p]}, {"params": [], "lr": 0.5}], lr=1.0)
    sched2 = CosineWarmup(opt2, warmup_steps=2, total_steps=10)
    sched2.load_state_dict(sched.state_dict())
    assert sched2.apply() == pytest.approx(sched.apply())
