"""``medvl data check`` and ``medvl data split``: validate a manifest; split it by patient."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from medvl.cli.app import data_app

console = Console()


@data_app.command("check")
def check(
    manifest: Path = typer.Argument(..., help="Manifest file (.csv, .jsonl or .parquet)."),
    report: Path | None = typer.Option(None, help="Also write the full report as JSON here."),
    no_images: bool = typer.Option(False, "--no-images", help="Skip decoding images (existence only)."),
    max_shown: int = typer.Option(30, help="Findings printed per severity (all go to --report)."),
    against: Path | None = typer.Option(None, "--against", help="Another manifest (e.g. the pretraining set): "
                                        "report identical images and shared patients; across splits = error."),
) -> None:
    """Report missing/unreadable files, unknown labels, empty texts, duplicates, patient leaks, finding
    masks (readable, image-sized, binary or a declared label map, labels in the card) and class
    balance per split. Exits 1 when any error is found."""
    from medvl.data.check import check_manifest

    result = check_manifest(manifest, verify_images=not no_images, against=against)
    table = Table(title=f"{manifest}: {result.n_rows} rows")
    table.add_column("split")
    table.add_column("rows", justify="right")
    classes = next(iter(result.class_balance.values()), {})
    for c in classes:
        table.add_column(c, justify="right")
    for split, n in result.split_counts.items():
        table.add_row(split, str(n), *(str(result.class_balance[split][c]) for c in classes))
    console.print(table)
    for severity, items in (("error", result.errors), ("warning", result.warnings)):
        for f in items[:max_shown]:
            console.print(str(f), style="red" if severity == "error" else "yellow", highlight=False,
                          soft_wrap=True)
        if len(items) > max_shown:
            console.print(f"... and {len(items) - max_shown} more {severity}s (see --report)")
    if result.against is not None:
        a = result.against
        console.print(f"against {a['manifest']} ({a['n_rows']} rows): {a['shared_images']} image(s) with identical "
                      f"content, {a['shared_patients']} shared patient id(s)", highlight=False, soft_wrap=True)
    if report:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(json.dumps(result.to_dict(), indent=2))
        console.print(f"report written to {report}")
    verdict = "[green]OK[/]" if result.ok else "[red]FAILED[/]"
    console.print(f"{verdict}: {len(result.errors)} errors, {len(result.warnings)} warnings")
    if not result.ok:
        raise typer.Exit(1)


@data_app.command("split")
def split(
    manifest: Path = typer.Argument(..., help="Input manifest."),
    out: Path = typer.Option(..., help="Output manifest (the input is never modified)."),
    fractions: str = typer.Option("0.7,0.1,0.2", help="train,val,test fractions."),
    seed: int = typer.Option(0, help="Random seed."),
) -> None:
    """Assign train/val/test by patient (stratified by label) so no patient spans two splits."""
    from medvl.data.split import parse_fractions, split_manifest

    counts = split_manifest(manifest, out, parse_fractions(fractions), seed)
    console.print(f"wrote {out}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
