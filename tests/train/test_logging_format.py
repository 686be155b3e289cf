"""Training log lines: one format per quantity, whatever its magnitude."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

from medvl.train.logging import MetricsLogger


def test_samples_per_s_and_loss_keep_one_format(tmp_path: Path) -> None:
    buf = io.StringIO()
    logger = MetricsLogger(tmp_path, total_steps=2, tensorboard=False, progress=False,
                           console=Console(file=buf, force_terminal=False, width=200))
    logger.log(1, {"loss": 2.345678, "lr": 0.0005, "samples_per_s": 53.6672})
    logger.log(2, {"loss": 123.4, "lr": 5e-6, "samples_per_s": 305.0})
    logger.close()
    lines = buf.getvalue().splitlines()
    assert lines == ["step 1  loss 2.3457  lr 5.00e-04  samples_per_s 53.7",
                     "step 2  loss 123.4000  lr 5.00e-06  samples_per_s 305.0"]
