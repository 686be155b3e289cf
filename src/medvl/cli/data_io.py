"""``medvl data info`` (inspect one image) and ``medvl data deid`` (de-identify DICOM files)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from medvl.cli.app import data_app

console = Console()


@data_app.command("info")
def info(
    path: Path = typer.Argument(..., help="Image file, or a folder holding one DICOM series."),
    window: str | None = typer.Option(
        None, help="'auto' (default: the file's own window), 'none', 'center,width' or a preset "
                   "(lung, mediastinum, soft-tissue, bone, brain)."),
    frame: int | None = typer.Option(None, help="Read only this frame / slice (0-based)."),
) -> None:
    """Print the metadata medvl reads from an image and its array shape, dtype, min and max."""
    from medvl.data.io import describe, parse_window, read_image

    summary = describe(read_image(path, window=parse_window(window), frame=frame))
    table = Table(title=str(path), show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    extra = summary.pop("extra")
    for key, value in summary.items():
        table.add_row(key, str(value))
    for key, value in extra.items():
        text = str(value)
        table.add_row(f"extra.{key}", text if len(text) <= 300 else text[:300] + " ...")
    console.print(table)


@data_app.command("deid")
def deid(
    src: Path = typer.Argument(..., help="DICOM file or folder (searched recursively)."),
    out: Path = typer.Argument(..., help="Output folder; mirrors the input structure."),
    salt: str | None = typer.Option(
        None, envvar="MEDVL_DEID_SALT",
        help="Secret salt for pseudonyms, date shifts and UIDs (or env MEDVL_DEID_SALT). Keep it to get "
             "the same pseudonyms in later runs; without it a random salt is used for this run only."),
    report: Path | None = typer.Option(None, help="JSON report path (default OUT/deid_report.json)."),
    max_shown: int = typer.Option(20, help="Failed files listed on screen (all go to the report)."),
    keep_descriptors: bool = typer.Option(
        False, "--keep-descriptors",
        help="Keep StudyDescription, SeriesDescription, ProtocolName and procedure descriptions verbatim (the "
             "Basic Profile removes them; they are not cleaned: review them for PHI before sharing)."),
) -> None:
    """Write de-identified copies of DICOM files (PS3.15 Basic Profile, common tags; descriptors removed
    unless --keep-descriptors). Exits 1 if any file failed (not DICOM, corrupt, unwritable)."""
    from medvl.data.deid import deidentify

    result = deidentify(src, out, salt=salt, report_path=report, keep_descriptors=keep_descriptors)
    table = Table(title=f"de-identification {src} -> {out}")
    table.add_column("files", justify="right")
    table.add_column("written", justify="right")
    table.add_column("failed", justify="right")
    table.add_column("patients", justify="right")
    table.add_row(str(len(result.files)), str(result.n_ok), str(result.n_failed), str(result.n_patients))
    console.print(table)
    failed = [f for f in result.files if f.status == "failed"]
    for f in failed[:max_shown]:
        console.print(f"[red]failed[/] {f.input}: {f.reason}", highlight=False, soft_wrap=True)
    if len(failed) > max_shown:
        console.print(f"... and {len(failed) - max_shown} more (see the report)")
    flagged = [f for f in result.files if f.warnings]
    for f in flagged[:max_shown]:
        console.print(f"[yellow]warning[/] {f.input}: {'; '.join(f.warnings)}", highlight=False, soft_wrap=True)
    if result.skipped_hidden:
        console.print(f"skipped {len(result.skipped_hidden)} hidden file(s)")
    if keep_descriptors:
        console.print("[yellow]--keep-descriptors: study/series/protocol descriptions were kept verbatim; review "
                      "them for names, dates and history before sharing[/]")
    if not result.salt_provided:
        console.print("[yellow]no --salt given: a random salt was used, pseudonyms will differ in other runs[/]")
    console.print(f"report written to {result.report_path}")
    if failed:
        raise typer.Exit(1)
