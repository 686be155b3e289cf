"""``medvl data label`` and ``medvl data reports``: label a manifest's reports; describe them."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from medvl.cli.app import data_app

console = Console()


@data_app.command("label")
def label_cmd(
    manifest: Path = typer.Argument(..., help="Manifest with a 'text' column of reports (.csv, .jsonl, .parquet)."),
    out: Path = typer.Option(..., "--out", "-o", help="Labelled manifest to write (card.yaml is written beside it)."),
    card: Path | None = typer.Option(None, "--card", help="Dataset card whose classes (names + synonyms) to label "
                                     "(default: card.yaml beside the manifest)."),
    section: str = typer.Option("all", "--section", help="Text to label: impression, findings or all."),
    classes: str = typer.Option("auto", "--classes", help="Label columns: card, chexpert (14 observations), both, "
                                "or auto (card if any, else chexpert)."),
    explain: bool = typer.Option(False, "--explain", help="Print the mention and cue that decided every label."),
    max_chars: int = typer.Option(20_000, "--max-chars", help="Longer texts are not labelled (reported)."),
    max_shown: int = typer.Option(20, "--max-shown", help="Problem rows printed (all are in the label_status column)."),
    chexpert_blank: bool = typer.Option(False, "--chexpert-blank", help="Leave No Finding blank (CheXpert's CSV) "
                                        "instead of 0 when another observation is positive."),
) -> None:
    """CheXpert-style labels (1 positive, 0 negative, -1 uncertain, blank not mentioned) for every report.

    Rows that cannot be labelled keep blank labels and say why in a label_status column."""
    from medvl.text.annotate import label_manifest

    s = label_manifest(manifest, out, card=card, section=section, classes=classes, explain=explain,
                       max_chars=max_chars, no_finding_zero=not chexpert_blank)
    if explain:
        for row, lines in s.explanations:
            console.print(f"[bold]row {row}[/]", highlight=False)
            for line in lines:
                console.print(f"  {line}", highlight=False, soft_wrap=True)
    table = Table(title=f"{s.out}: {s.n_rows} rows labelled")
    for col in ("class", "1", "0", "-1", "blank"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for c in s.classes:
        k = s.counts[c]
        table.add_row(c, str(k["1"]), str(k["0"]), str(k["-1"]), str(k["blank"]))
    console.print(table)
    for row, why in s.problems[:max_shown]:
        console.print(f"{manifest}, row {row}: {why} (kept with blank labels)", style="yellow", highlight=False,
                      soft_wrap=True)
    if len(s.problems) > max_shown:
        console.print(f"... and {len(s.problems) - max_shown} more (see the label_status column)")
    console.print(f"{len(s.problems)} of {s.n_rows} rows not labelled (blank labels, reason in label_status)",
                  highlight=False)
    if s.normalised:
        console.print(f"{s.normalised} rows had <br> or &entities; (read as plain text)", highlight=False)
    if section != "all":
        console.print(f"{s.section_missing} rows had no {section} section: the whole report was labelled",
                      highlight=False)
    if s.replaced_columns:
        console.print(f"replaced existing columns: {', '.join(s.replaced_columns)}", highlight=False)
    console.print(f"card: {s.card_path}", highlight=False)


@data_app.command("reports")
def reports_cmd(
    manifest: Path = typer.Argument(..., help="Manifest with a 'text' column of reports."),
    top: int = typer.Option(10, "--top", help="How many of the most frequent sentences to print."),
) -> None:
    """Section coverage, length statistics, the most frequent sentences and the de-identification tokens."""
    from medvl.text.annotate import report_stats

    st = report_stats(manifest, top=top)
    console.print(f"{manifest}: {st.n_rows} rows, {st.n_reports} readable reports, {st.headerless} without any "
                  "section header (read as findings)", highlight=False)
    t = Table(title="section coverage")
    t.add_column("section")
    t.add_column("reports", justify="right")
    for name, frac in st.section_coverage.items():
        t.add_row(name, f"{frac:.1%}")
    console.print(t)
    t = Table(title="lengths")
    for col in ("", "mean", "median", "p95", "max"):
        t.add_column(col, justify="right" if col else "left")
    for what, v in st.lengths.items():
        t.add_row(what, f"{v['mean']:.1f}", f"{v['median']:.0f}", f"{v['p95']:.0f}", f"{v['max']:.0f}")
    console.print(t)
    t = Table(title=f"{len(st.top_sentences)} most frequent sentences")
    t.add_column("count", justify="right")
    t.add_column("sentence")
    for s, n in st.top_sentences:
        t.add_row(str(n), s)
    console.print(t)
    deid = ", ".join(f"{k} x{v}" for k, v in list(st.deid.items())[:10]) or "none"
    console.print(f"de-identification tokens: {deid} ({st.reports_with_deid} reports)", highlight=False)
    for row, why in st.problems[:20]:
        console.print(f"{manifest}, row {row}: {why}", style="yellow", highlight=False, soft_wrap=True)
    console.print(f"{len(st.problems)} rows without a usable report", highlight=False)
