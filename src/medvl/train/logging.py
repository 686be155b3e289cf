"""Where training metrics go: ``metrics.csv``, TensorBoard (when importable) and a rich progress bar.

Only rank 0 logs. On resume the CSV is truncated to the rows at or before the resumed step (a
killed run may have logged steps past its last checkpoint, which the resumed run will redo) and
TensorBoard's ``purge_step`` drops the same steps from its event files.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

METRICS_CSV = "metrics.csv"


def _truncate_csv(path: Path, keep_upto_step: int) -> list[str]:
    """Keep rows with ``step <= keep_upto_step``; returns the header (empty when no file)."""
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        header = list(reader.fieldnames or [])
        rows = [r for r in reader if r.get("step", "").isdigit() and int(r["step"]) <= keep_upto_step]
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=header)
        w.writeheader()
        w.writerows(rows)
    return header


class MetricsLogger:
    """Append-only metrics sink; a no-op object on ranks other than 0 (``enabled=False``)."""

    def __init__(self, out_dir: str | Path, total_steps: int, start_step: int = 0, enabled: bool = True,
                 progress: bool = True, tensorboard: bool = True, console: Console | None = None):
        self.enabled = enabled
        self.out_dir = Path(out_dir)
        self.console = console or Console(stderr=True)
        self.csv_path = self.out_dir / METRICS_CSV
        self._header: list[str] = []
        self._tb: Any = None
        self._progress: Progress | None = None
        self._task: Any = None
        if not enabled:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._header = _truncate_csv(self.csv_path, start_step) if start_step > 0 else []
        if start_step == 0 and self.csv_path.exists():
            self.csv_path.unlink()
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.out_dir / "tb"), purge_step=start_step or None)
            except Exception:  # tensorboard missing or broken: metrics.csv still has everything
                self._tb = None
        # A live bar only on a terminal; in logs/pipes the periodic lines below tell the same story.
        self.live = progress and sys.stderr.isatty()
        if self.live:
            self._progress = Progress(
                TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"), TimeRemainingColumn(), console=self.console,
            )
            self._progress.start()
            self._task = self._progress.add_task("train", total=total_steps, completed=start_step, info="")

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Record ``metrics`` for optimizer step ``step`` (1-based count of steps done)."""
        if not self.enabled:
            return
        row = {"step": step, **{k: float(v) for k, v in metrics.items()}}
        if not self._header or any(k not in self._header for k in row):
            self._rewrite_header([*self._header, *[k for k in row if k not in self._header]])
        with self.csv_path.open("a", newline="") as f:
            csv.DictWriter(f, fieldnames=self._header).writerow({k: row.get(k, "") for k in self._header})
        if self._tb is not None:
            for k, v in metrics.items():
                self._tb.add_scalar(f"train/{k}", float(v), step)
        info = "  ".join(f"{k} {self._fmt(k, metrics[k])}" for k in ("loss", "lr", "samples_per_s") if k in metrics)
        if self._progress is not None:
            self._progress.update(self._task, completed=step, info=info)
        else:
            self.console.print(f"step {step}  {info}", highlight=False, soft_wrap=True)

    def advance(self, step: int) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=step)

    def message(self, text: str) -> None:
        if self.enabled:
            self.console.print(text, highlight=False, soft_wrap=True)

    # One format per quantity, whatever its magnitude (53.6672 next to 305 read as two kinds of number).
    FORMATS = {"loss": "{:.4f}", "lr": "{:.2e}", "samples_per_s": "{:.1f}"}

    @classmethod
    def _fmt(cls, key: str, v: float) -> str:
        return cls.FORMATS.get(key, "{:.4g}").format(float(v))

    def _rewrite_header(self, header: list[str]) -> None:
        rows: list[dict[str, str]] = []
        if self.csv_path.is_file():
            with self.csv_path.open(newline="") as f:
                rows = list(csv.DictReader(f))
        with self.csv_path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=header)
            w.writeheader()
            w.writerows(rows)
        self._header = header

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
