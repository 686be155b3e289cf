"""``medvl eval reports``: score generated reports (any system's JSONL) against a manifest, with CIs."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from medvl.cli.app import eval_app

console = Console()


@eval_app.command("reports")
def reports_cmd(
    pred: Path = typer.Option(..., "--pred", "-p", help="JSONL, one {\"study_id\", \"report\"} per line "
                              "(aliases: id; text or prediction)."),
    data: Path = typer.Option(..., "--data", "-d", help="Manifest with the reference reports (text column)."),
    split: str | None = typer.Option(None, "--split", help="Only this split (default: every row)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Write JSON records (+ .predictions.npz beside it) "
                                    "for `medvl eval compare`."),
    model_name: str = typer.Option("", "--name", help="Name of the system that wrote the reports "
                                   "(default: the file's name)."),
    section: str = typer.Option("all", "--section", help="Text the CE labeler reads: all, findings or impression."),
    uncertain_as: str = typer.Option("negative", "--uncertain-as", help="CE: count uncertain labels as negative "
                                     "(R2Gen) or positive."),
    meteor: bool = typer.Option(False, "--meteor", help="Also METEOR 1.5 (needs pycocoevalcap and Java; slow to "
                                "start)."),
    n_boot: int = typer.Option(1000, "--n-boot", help="Bootstrap replicates (patients resampled) for the 95% CIs."),
    seed: int = typer.Option(0, "--seed", help="Bootstrap seed."),
) -> None:
    """BLEU-1..4, ROUGE-L, CIDEr-D, clinical efficacy (CheXpert-style labels, P/R/F1 micro/macro), optionally
    METEOR; every metric with a patient-level 95% bootstrap CI."""
    from medvl.evaluate.reports import evaluate_reports, read_predictions
    from medvl.evaluate.results import records_table, save_results

    runs = evaluate_reports(read_predictions(pred), data, split=split, model_name=model_name or pred.stem,
                            n_boot=n_boot, seed=seed, section=section, uncertain_as=uncertain_as, meteor=meteor)
    console.print(records_table([r for run in runs for r in run.records], title=f"reports: {pred.name} vs {data}"))
    if out is not None:
        path = save_results(runs, out)
        console.print(f"results: {path} (+ per-sample predictions beside it)")
