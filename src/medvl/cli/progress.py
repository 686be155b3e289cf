"""One progress display for every CLI command: a live rich bar on a terminal, periodic lines elsewhere.

Why: a ``\\r``-rewritten counter is right on a terminal and wrong everywhere else -- piped into a
log or CI it became one endless line (``embedding: 32/4000embedding: 64/4000...``). Library code
reports ``(done, total)`` through a plain callback; this module decides how a person sees it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

Report = Callable[[int, int], None]


class LineProgress:
    """``(done, total)`` -> a line at most every ``every_s`` seconds or ``every_frac`` of the total,
    plus the last one: readable in a log file, a CI transcript or ``| tee``."""

    def __init__(self, label: str, stream: TextIO | None = None, every_s: float = 10.0, every_frac: float = 0.1,
                 clock: Callable[[], float] = time.monotonic):
        self.label, self.stream, self.every_s, self.every_frac, self.clock = label, stream, every_s, every_frac, clock
        self._last_t: float | None = None
        self._last_done = 0

    def __call__(self, done: int, total: int) -> None:
        now = self.clock()
        step = max(1, int(total * self.every_frac)) if total else 1
        due = (self._last_t is None or now - self._last_t >= self.every_s or done - self._last_done >= step
               or done >= total)
        if not due:
            return
        pct = f" ({100 * done / total:.0f}%)" if total else ""
        print(f"{self.label}: {done}/{total}{pct}", file=self.stream or sys.stderr, flush=True)
        self._last_t, self._last_done = now, done


@contextmanager
def progress_reporter(label: str, console: Console | None = None, live: bool | None = None) -> Iterator[Report]:
    """Yield a ``(done, total)`` callback: a rich bar when ``console`` is a terminal, else :class:`LineProgress`."""
    console = console or Console(stderr=True)
    if live is None:
        live = console.is_terminal
    if not live:
        yield LineProgress(label, stream=console.file)
        return
    with Progress(TextColumn(f"{label}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=False) as bar:
        task = bar.add_task(label, total=None)

        def report(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield report
