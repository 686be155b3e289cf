"""``medvl generate`` (draft reports from a caption-trained checkpoint or a baseline) and ``medvl eval vqa``.

No logic here: :mod:`medvl.generate` and :mod:`medvl.evaluate.vqa` do the work."""

from __future__ import annotations

from pathlib import Path

import typer

from medvl.cli.app import app, eval_app
from medvl.errors import ConfigError

SYSTEMS_HELP = ("What writes the reports: 'model' (the checkpoint's caption decoder), or a baseline: "
                "'retrieval' (nearest training image's report), 'normal' (most frequent normal report), "
                "'template' (linear-probe labels rendered with templates).")


@app.command("generate")
def generate(
    model: Path = typer.Option(..., "--model", help="Checkpoint (or run) directory trained with the caption "
                                                    "objective; for baselines, any medvl checkpoint."),
    data: Path | None = typer.Option(None, "--data", help="Manifest of the studies to write reports for."),
    image: Path | None = typer.Option(None, "--image", help="A single image instead of --data."),
    split: str = typer.Option("test", "--split", help="Manifest split to generate for ('all': every row)."),
    out: Path | None = typer.Option(None, "--out", help="JSONL output {study_id, report}; printed if omitted."),
    system: str = typer.Option("model", "--system", help=SYSTEMS_HELP),
    method: str = typer.Option("greedy", "--method", help="greedy, beam or sample."),
    max_tokens: int = typer.Option(60, "--max-tokens", help="Most new tokens per report."),
    min_tokens: int = typer.Option(1, "--min-tokens", help="Fewest new tokens before the end token may come."),
    beams: int = typer.Option(4, "--beams", help="Beams for --method beam."),
    length_penalty: float = typer.Option(1.0, "--length-penalty", help="Score / length**penalty (beam)."),
    temperature: float = typer.Option(1.0, "--temperature", help="Sampling temperature (--method sample)."),
    top_p: float = typer.Option(1.0, "--top-p", help="Nucleus mass kept when sampling (1 = all)."),
    seed: int = typer.Option(0, "--seed", help="Sampling seed."),
    batch_size: int = typer.Option(16, "--batch-size", help="Images decoded together."),
    train_split: str = typer.Option("train", "--train-split",
                                    help="Split the baselines learn from (retrieval, normal, template)."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
) -> None:
    """Write a draft report per study (or for one --image) as JSONL keyed by study id."""
    import json

    from medvl.generate import DecodeConfig, write_predictions
    from medvl.generate.run import run_system

    if (data is None) == (image is None):
        raise ConfigError("give exactly one of --data MANIFEST or --image FILE")
    cfg = DecodeConfig(method=method, max_new_tokens=max_tokens, min_new_tokens=min_tokens, num_beams=beams,
                       length_penalty=length_penalty, temperature=temperature, top_p=top_p, seed=seed).validate()
    run = run_system(system, model, data=data, image=image, split=None if split == "all" else split, cfg=cfg,
                     batch_size=batch_size, train_split=train_split, device=device)
    if out is None:
        for sid, text in run.reports.items():
            typer.echo(json.dumps({"study_id": sid, "report": text}))
    else:
        write_predictions(run, out)
        typer.echo(f"wrote {len(run.reports)} report(s) to {out} ({run.reports_per_s:.1f} reports/s)", err=True)
    if run.truncated:
        shown = ", ".join(run.truncated[:5]) + (" ..." if len(run.truncated) > 5 else "")
        typer.echo(f"warning: {len(run.truncated)} report(s) reached --max-tokens {max_tokens} without ending "
                   f"(flagged 'truncated' in the output): {shown}", err=True)


@eval_app.command("vqa")
def eval_vqa(
    data: Path = typer.Option(..., "--data", help="VQA manifest: image, question, answer, answer_type (vqa.csv)."),
    model: str | None = typer.Option(None, "--model", help="medvl checkpoint (or encoder spec) that answers."),
    answers: Path | None = typer.Option(None, "--answers",
                                        help="External answers, JSONL {id | study_id + question, answer}."),
    mode: str = typer.Option("auto", "--mode", help="rank (CLIP-style candidate ranking) or generate "
                                                    "(caption decoder continues the question); auto = rank."),
    split: str = typer.Option("test", "--split", help="Split to score ('all': every row)."),
    answer_type: str | None = typer.Option(None, "--answer-type", help="Score only closed or only open questions."),
    n_boot: int = typer.Option(1000, "--n-boot", help="Bootstrap replicates (patient-level)."),
    seed: int = typer.Option(0, "--seed", help="Bootstrap seed."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    out: Path | None = typer.Option(None, "--out", help="results.json (+ per-question predictions for compare)."),
) -> None:
    """Score VQA answers (closed: accuracy; open: exact match, token F1, recall; twin pairs) with CIs."""
    from rich.console import Console

    from medvl.evaluate.results import records_table, save_results
    from medvl.evaluate.vqa import run_vqa_eval

    res = run_vqa_eval(data, model=model, answers=answers, split=None if split == "all" else split, mode=mode,
                       n_boot=n_boot, seed=seed, device=device, answer_type=answer_type)
    console = Console()
    console.print(records_table(res.records, title=f"VQA: {model or answers} on {data.parent.name}/{split}"))
    if out is not None:
        console.print(f"results: {save_results(res, out)} (+ per-question predictions beside it)")
