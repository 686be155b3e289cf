"""``medvl bench SUITE.yaml`` and ``medvl demo``: the runner and the main job."""

from __future__ import annotations

import resource
import time
from pathlib import Path

import typer
from rich.console import Console

from medvl.cli.app import app

console = Console()


def _peak_rss_mb() -> float:
    """Peak resident memory of this process and its finished children, in MB (Linux: ru_maxrss is KiB)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, kids) / 1024


def _finish(outcome) -> None:  # type: ignore[no-untyped-def]
    console.print(f"results:     {outcome.results_path}")
    console.print(f"leaderboard: {outcome.leaderboard_path}")
    console.print(f"report:      [bold]{outcome.report_path}[/]")
    console.print(f"wall time {outcome.wall_s:.0f} s, peak memory {_peak_rss_mb():.0f} MB; "
                  f"{outcome.n_run} run, {outcome.n_cached} cached, {len(outcome.failed)} failed, "
                  f"{len(outcome.skipped)} skipped")
    if outcome.failed:
        console.print(f"[red]{len(outcome.failed)} job(s) failed[/]: see {outcome.out_dir / 'failed.json'}")
        raise typer.Exit(1)


@app.command("bench")
def bench(
    suite: Path = typer.Argument(..., help="Suite YAML: models x tasks x datasets x seeds."),
    out: Path | None = typer.Option(None, help="Output folder (default runs/bench-<suite name>)."),
) -> None:
    """Run every missing job of a suite (cached by content hash) and write results.jsonl,
    leaderboard.md and a self-contained report.html."""
    from medvl.bench.runner import run_suite
    from medvl.bench.suite import load_suite

    spec = load_suite(suite)
    _finish(run_suite(spec, out or Path("runs") / f"bench-{spec.name}"))


@app.command("demo")
def demo(
    out: Path = typer.Option(Path("runs/demo"), help="Output folder."),
    dataset: str = typer.Option("synth", help="'synth' (chest phantoms) or a MedMNIST subset name."),
    npz: str | None = typer.Option(None, help="Local MedMNIST npz (offline) when --dataset is a MedMNIST name."),
    quick: bool = typer.Option(False, help="Seconds-long miniature (for tests and smoke checks)."),
) -> None:
    """The main job: generate phantoms, pretrain a tiny CLIP, bench it against a supervised baseline
    and a random-init encoder, and print where the report is."""
    from medvl.bench.demo import demo_suite
    from medvl.bench.runner import run_suite

    start = time.perf_counter()
    outcome = run_suite(demo_suite(out, dataset, npz, quick), out)
    console.print(f"demo finished in {time.perf_counter() - start:.0f} s")
    _finish(outcome)
