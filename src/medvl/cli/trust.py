"""``medvl eval robustness`` and ``medvl merge``: can you trust the model, and what does interpolating buy?

Both commands parse their options and call one library function
(:func:`medvl.evaluate.robustness.robustness_eval`, :func:`medvl.merge.merge_checkpoints`);
printing is :func:`robustness_tables`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from medvl.cli.app import app, device_option, eval_app
from medvl.cli.evaluation import DATA_HELP, MODEL_HELP, _cache, _encoder_kwargs, _floats, _ints, _setup

console = Console()


def _names(text: str | None) -> list[str]:
    return [v.strip() for v in (text or "").split(",") if v.strip()]


def _fmt(iv: Any) -> str:
    return iv.fmt(3) if iv is not None else ""


def robustness_tables(report: Any) -> list[Table]:
    """Rich tables of a robustness report: corruptions, sites, subgroups, calibration."""
    m = report.metric
    out = []
    t = Table(title=f"corruptions: {report.model} ({report.protocol}) on {report.dataset}/{report.split}, "
                    f"clean {m} {_fmt(report.clean)}; mean relative drop "
                    + ("n/a (no cell ran)" if math.isnan(report.mean_relative_drop)
                       else f"{report.mean_relative_drop:.1%}"))
    for col in ("corruption", "severity", m, "drop (paired 95% CI)", "relative"):
        t.add_column(col, justify="left" if col == "corruption" else "right")
    for c in report.cells:
        t.add_row(c.corruption, str(c.severity), _fmt(c.value), _fmt(c.drop),
                  "" if math.isnan(c.relative_drop) else f"{c.relative_drop:.1%}")
    for name, why in report.skipped.items():
        t.add_row(name, "-", "skipped", why, "")
    out.append(t)
    s = Table(title=f"site shift: {report.site_note}")
    for col in ("site", "role", "n (patients)", m, "drop vs in-site", "note"):
        s.add_column(col)
    for r in report.sites:
        s.add_row(r.site, r.role, f"{r.n} ({r.n_groups})", _fmt(r.value), _fmt(r.drop), r.note)
    out.append(s)
    for sg in report.subgroups:
        g = Table(title=f"subgroups by {sg.column}: worst {sg.worst or '-'}, gap {_fmt(sg.gap)} {sg.note}")
        for col in ("group", "n (patients)", m, "note"):
            g.add_column(col)
        for r in sg.groups:
            g.add_row(r.group, f"{r.n} ({r.n_groups})", _fmt(r.value), r.note)
        out.append(g)
    cal = report.calibration
    if cal is not None:
        c = Table(title=f"calibration (temperature {cal.temperature:.3g} fitted on validation) "
                        + "; ".join(cal.notes))
        for col in ("metric", "before", "after", "change"):
            c.add_column(col)
        for k in cal.before:
            c.add_row(k, _fmt(cal.before[k]), _fmt(cal.after[k]), _fmt(cal.change[k]))
        out.append(c)
    return out


@eval_app.command("robustness")
def robustness_cmd(
    model: str = typer.Option(..., "--model", "-m", help=MODEL_HELP),
    data: Path = typer.Option(..., "--data", "-d", help=DATA_HELP),
    protocol: str = typer.Option("linear-probe", "--protocol", help="zeroshot, linear-probe or finetune."),
    split: str = typer.Option("test", "--split"),
    metric: str = typer.Option("auroc", "--metric", help="Task metric to track (auroc, accuracy, ...)."),
    corruptions: str | None = typer.Option(None, "--corruptions", help="Comma list (default: all that apply)."),
    severities: str = typer.Option("1,2,3,4,5", "--severities"),
    subgroups: str | None = typer.Option(None, "--subgroups", help="Manifest columns, e.g. sex,site,view."),
    in_site: str | None = typer.Option(None, "--in-site", help="Site the probe/head is trained on (default: first)."),
    site_shift: bool = typer.Option(True, "--site-shift/--no-site-shift"),
    epochs: int | None = typer.Option(None, "--epochs", help="finetune protocol: epochs."),
    lr: float | None = typer.Option(None, "--lr", help="finetune protocol: learning rate."),
    n_boot: int = typer.Option(1000, "--n-boot", help="Bootstrap replicates (patient level) for the CIs."),
    seed: int = typer.Option(0, "--seed"),
    device: str = device_option(),
    batch_size: int = typer.Option(128, "--batch-size"),
    cache_dir: Path | None = typer.Option(None, "--cache-dir", help="Feature cache (clean and corrupted)."),
    no_cache: bool = typer.Option(False, "--no-cache"),
    image_size: int | None = typer.Option(None, "--image-size", help="timm encoders: input size."),
    in_chans: int | None = typer.Option(None, "--in-chans", help="timm encoders: input channels (default 3)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Write the report as JSON here."),
    card_out: Path | None = typer.Option(None, "--card-out", help="Write the model card (Markdown + HTML) here."),
    wise: Path | None = typer.Option(None, "--wise", help="wise.json of `medvl merge --data`: drawn in the card."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Corruptions x severities, site shift, subgroups and calibration of one model, with 95% CIs."""
    from medvl.evaluate.robustness import robustness_eval

    _setup(verbose)
    ft = {k: v for k, v in {"epochs": epochs, "lr": lr}.items() if v is not None}
    report = robustness_eval(model, data, protocol, split, metric, _names(corruptions) or None,
                             _ints(severities, "--severities"), _names(subgroups), in_site, site_shift, n_boot, seed,
                             device, batch_size, _cache(cache_dir, no_cache), ft,
                             encoder_kwargs=_encoder_kwargs(model, image_size, in_chans))
    if wise is not None:
        from medvl.merge import load_wise_curve

        report.extras["wise_curve"] = load_wise_curve(wise)
    for table in robustness_tables(report):
        console.print(table)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report.to_dict(), indent=1))
        console.print(f"report: {out}")
    if card_out is not None:
        from medvl.bench.model_card import write_model_card

        paths = write_model_card(report, card_out)
        console.print(f"model card: {', '.join(str(p) for p in paths)}")
    console.print(f"wall time {report.seconds.get('total', 0):.1f}s")


@app.command("merge")
def merge_cmd(
    a: Path = typer.Argument(..., help="Checkpoint A (alpha = 0), e.g. the zero-shot model."),
    b: Path = typer.Argument(..., help="Checkpoint B (alpha = 1), e.g. its fine-tuned version."),
    alpha: str = typer.Option("0,0.25,0.5,0.75,1", "--alpha", help="Mixing weights of B, comma-separated."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder; one checkpoint per alpha is written under it."),
    base: Path | None = typer.Option(None, "--base", help="Task arithmetic: A + alpha * (B - BASE) instead."),
    data: Path | None = typer.Option(None, "--data", "-d", help="Also evaluate every merge on this manifest "
                                                               "(in-distribution vs shifted): writes OUT/wise.json."),
    protocol: str = typer.Option("zeroshot", "--protocol", help="With --data: zeroshot or linear-probe."),
    in_site: str | None = typer.Option(None, "--in-site", help="With --data: the in-distribution site."),
    corruptions: str = typer.Option("gaussian_noise,contrast", "--corruptions", help="With --data: shifted by these."),
    n_boot: int = typer.Option(200, "--n-boot"),
) -> None:
    """WiSE-FT weight interpolation (1-alpha) A + alpha B, or task arithmetic A + alpha (B - base)."""
    from medvl.merge import merge_checkpoints, wise_curve

    written = merge_checkpoints(a, b, _floats(alpha, "--alpha"), out, base=base)
    for al, path in written:
        console.print(f"alpha {al:g}: {path}")
    if data is not None:
        rows = wise_curve(written, data, protocol, corruptions=_names(corruptions), in_site=in_site, n_boot=n_boot)
        t = Table(title=f"in-distribution vs shifted {rows[0]['metric']} over alpha ({protocol})")
        for col in ("alpha", "clean", "in-distribution", "other sites", "corrupted"):
            t.add_column(col, justify="right")
        for r in rows:
            t.add_row(f"{r['alpha']:g}", *(f"{r[k]:.3f}" if r[k] is not None else "-"
                                         for k in ("clean", "in_distribution", "shifted_sites", "corrupted")))
        console.print(t)
        (out / "wise.json").write_text(json.dumps(rows, indent=1))
        console.print(f"curve: {out / 'wise.json'} (pass it to `medvl eval robustness --wise` for the model card)")


@eval_app.command("pair-accuracy")
def pair_accuracy_cmd(
    answers: Path = typer.Argument(..., help="JSONL: image, question, pair_id, prediction, answer per row."),
    n_boot: int = typer.Option(1000, "--n-boot", help="Bootstrap replicates over pairs."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """MediConfusion pair accuracy of a generative model's answers (a pair counts when all its answers are right)."""
    from medvl.evaluate.confusable import answer_pair_accuracy

    r = answer_pair_accuracy(answers, n_boot, seed)
    console.print(f"{r.n_rows} answers, {r.n_pairs} pairs: question accuracy {r.question_accuracy.fmt()}, "
                  f"pair accuracy {r.pair_accuracy.fmt()} (95% CI over pairs)")
