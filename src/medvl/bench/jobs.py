"""What the bench runs and what a run returns: :class:`Job` (model x task x seed) and :class:`BenchOutcome`.

These are plain records shared by the runner, the task registry and the report writers. They live
in their own module, below all three, so that the report and the task modules can name a job
without importing the runner that imports them (the import circle issue 13 found).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medvl.bench.suite import TaskSpec


@dataclass
class Job:
    """One unit of bench work; ``key`` is its content hash in the result store once known."""

    model: str
    task: TaskSpec
    seed: int
    key: str = ""

    @property
    def label(self) -> str:
        return f"{self.model} / {self.task.name} ({self.task.dataset}) / seed {self.seed}"


@dataclass
class BenchOutcome:
    """Counts, failures, skips and output paths of one :func:`medvl.bench.runner.run_suite` call."""

    out_dir: Path
    n_jobs: int
    n_cached: int
    n_run: int
    failed: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    results_path: Path | None = None
    leaderboard_path: Path | None = None
    report_path: Path | None = None
    wall_s: float = 0.0
