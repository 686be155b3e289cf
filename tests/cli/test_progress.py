"""CLI progress: periodic, newline-terminated lines when the output is not a terminal."""

from __future__ import annotations

import io

from rich.console import Console

from medvl.cli.progress import LineProgress, progress_reporter


def test_lines_not_carriage_returns_and_throttled() -> None:
    out = io.StringIO()
    t = {"now": 0.0}
    report = LineProgress("embedding", stream=out, every_s=10.0, every_frac=0.25, clock=lambda: t["now"])
    for done in range(32, 4001, 32):
        t["now"] += 0.01
        report(done, 4000)
    text = out.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    # first report, then one per 25 % of the total, then the last: a handful of whole lines, not 125
    assert lines[0] == "embedding: 32/4000 (1%)" and lines[-1] == "embedding: 4000/4000 (100%)"
    assert 4 <= len(lines) <= 6, lines


def test_time_also_triggers_a_line() -> None:
    out = io.StringIO()
    t = {"now": 0.0}
    report = LineProgress("x", stream=out, every_s=5.0, every_frac=1.0, clock=lambda: t["now"])
    report(1, 100)
    t["now"] = 6.0
    report(2, 100)
    t["now"] = 7.0
    report(3, 100)
    assert out.getvalue().splitlines() == ["x: 1/100 (1%)", "x: 2/100 (2%)"]


def test_reporter_degrades_to_lines_off_a_terminal() -> None:
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=False)
    with progress_reporter("embedding", console=console) as report:
        assert isinstance(report, LineProgress)
        report(10, 10)
    assert buf.getvalue() == "embedding: 10/10 (100%)\n"
