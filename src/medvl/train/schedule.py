"""Learning-rate schedule: linear warmup then cosine decay, as a pure function of the step.

The schedule is a pure function (:func:`lr_at`) so that resuming only needs the step counter,
and the scheduler object's state is two integers that ``torch.load(weights_only=True)`` accepts.
"""

from __future__ import annotations

import math
from typing import Any

import torch


def lr_at(step: int, base_lr: float, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0) -> float:
    """Learning rate for optimizer step ``step`` (0-based: the lr used *by* that step).

    Warmup rises linearly to ``base_lr`` over ``warmup_steps`` steps (step 0 gets
    ``base_lr / warmup_steps``, never 0, so the first step is not wasted); afterwards the rate
    follows a half cosine from ``base_lr`` down to ``min_lr_ratio * base_lr`` at ``total_steps``.
    Steps past the end stay at the floor.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    floor = base_lr * min_lr_ratio
    return floor + (base_lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


class CosineWarmup:
    """Sets ``param_group["lr"]`` of an optimizer from :func:`lr_at` (each group keeps its base lr).

    Call :meth:`apply` before each optimizer step; :meth:`step` advances the counter afterwards.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int,
                 min_lr_ratio: float = 0.0):
        self.optimizer = optimizer
        self.warmup_steps = int(warmup_steps)
        self.total_steps = int(total_steps)
        self.min_lr_ratio = float(min_lr_ratio)
        # Base rates are read once from the freshly built optimizer (i.e. from the config).
        self.base_lrs = [float(g["lr"]) for g in optimizer.param_groups]
        self.step_count = 0
        self.apply()

    def lr(self, group: int = 0) -> float:
        return lr_at(self.step_count, self.base_lrs[group], self.warmup_steps, self.total_steps,
                     self.min_lr_ratio)

    def apply(self) -> float:
        """Write the current step's rate into the optimizer; returns the first group's rate."""
        for i, g in enumerate(self.optimizer.param_groups):
            g["lr"] = self.lr(i)
        return self.optimizer.param_groups[0]["lr"]

    def step(self) -> None:
        self.step_count += 1
        self.apply()

    def state_dict(self) -> dict[str, Any]:
        return {"step_count": self.step_count, "base_lrs": list(self.base_lrs),
                "warmup_steps": self.warmup_steps, "total_steps": self.total_steps,
                "min_lr_ratio": self.min_lr_ratio}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the step only: rates, warmup and length come from the *current* config, so a
        resumed run may be extended or given a new rate on purpose (same config = exact resume)."""
        self.step_count = int(state["step_count"])
        self.apply()
