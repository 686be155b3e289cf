"""``medvl generate`` (draft reports from a caption-trained checkpoint or a baseline) and ``medvl eval vqa``.

No logic here: :mod:`medvl.generate` and :mod:`medvl.evaluate.vqa` do the work."""

from __future__ import annotations

from pathlib import Path

import typer

from medvl.cli.app import app, device_option, eval_app
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
    train_data: Path | None = typer.Option(None, "--train-data",
                                           help="Manifest the baselines learn from (default: --data; needed "
                                                "with --image)."),
    device: str = device_option(),
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
                     batch_size=batch_size, train_split=train_split, device=device, train_data=train_data)
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
    prompt: str = typer.Option("qa", "--prompt", help="Ranking prompts: qa ('Is there a nodule? no') or "
                                                      "statement ('no nodule')."),
    n_boot: int = typer.Option(1000, "--n-boot", help="Bootstrap replicates (patient-level)."),
    seed: int = typer.Option(0, "--seed", help="Bootstrap seed."),
    device: str = device_option(),
    out: Path | None = typer.Option(None, "--out", help="results.json (+ per-question predictions for compare)."),
) -> None:
    """Score VQA answers (closed: accuracy; open: exact match, token F1, recall; twin pairs) with CIs."""
    from rich.console import Console

    from medvl.evaluate.results import records_table, save_results
    from medvl.evaluate.vqa import run_vqa_eval

    res = run_vqa_eval(data, model=model, answers=answers, split=None if split == "all" else split, mode=mode,
                       n_boot=n_boot, seed=seed, device=device, answer_type=answer_type, prompt=prompt)
    console = Console()
    console.print(records_table(res.records, title=f"VQA: {model or answers} on {data.parent.name}/{split}"))
    if out is not None:
        console.print(f"results: {save_results(res, out)} (+ per-question predictions beside it)")


@eval_app.command("report-gen")
def eval_report_gen(
    data: Path = typer.Option(..., "--data", help="Manifest with reference reports (text column)."),
    model: str | None = typer.Option(None, "--model", help="Checkpoint trained with the caption objective "
                                                           "(its image tower also drives the baselines)."),
    systems: str = typer.Option("model,retrieval,normal,template", "--systems",
                                help="Comma-separated: model, retrieval, normal, template ('' for none)."),
    external: list[str] = typer.Option([], "--external", help="NAME=FILE.jsonl: another system's reports "
                                                              "({study_id, report}); repeatable."),
    split: str = typer.Option("test", "--split", help="Split to write and score."),
    train_split: str = typer.Option("train", "--train-split", help="Split the baselines learn from."),
    method: str = typer.Option("greedy", "--method", help="Decoding for the model: greedy, beam or sample."),
    max_tokens: int = typer.Option(60, "--max-tokens", help="Most new tokens per report."),
    beams: int = typer.Option(4, "--beams", help="Beams for --method beam."),
    length_penalty: float = typer.Option(1.0, "--length-penalty", help="Beam score / length**penalty."),
    batch_size: int = typer.Option(16, "--batch-size", help="Images decoded together."),
    n_boot: int = typer.Option(1000, "--n-boot", help="Bootstrap replicates (patient-level)."),
    seed: int = typer.Option(0, "--seed", help="Bootstrap and sampling seed."),
    device: str = device_option(),
    out: Path | None = typer.Option(None, "--out", help="results.json: one run per system (+ predictions); the "
                                                        "generated JSONL files go beside it."),
) -> None:
    """Generate with the model and the baselines, score BLEU/ROUGE-L/CIDEr-D/CE with CIs, test vs retrieval."""
    import json

    from rich.console import Console
    from rich.table import Table

    from medvl.evaluate.report_gen import HEADLINE, evaluate_report_generation, parse_external, summary_rows
    from medvl.evaluate.results import save_results
    from medvl.generate import DecodeConfig

    cfg = DecodeConfig(method=method, max_new_tokens=max_tokens, num_beams=beams, length_penalty=length_penalty,
                       seed=seed).validate()
    names = tuple(s.strip() for s in systems.split(",") if s.strip())
    pred_dir = (out.parent / f"{out.stem}.reports") if out is not None else None
    res = evaluate_report_generation(model, data, systems=names, external=parse_external(external), split=split,
                                     train_split=train_split, cfg=cfg, batch_size=batch_size, n_boot=n_boot,
                                     seed=seed, device=device, pred_dir=pred_dir)
    table = Table(title=f"report generation on {data.parent.name}/{split} (95% patient-bootstrap CIs; "
                        f"delta and p: paired test vs {res.reference})")
    table.add_column("system")
    for m in HEADLINE:
        table.add_column(m, justify="right")
        table.add_column(f"Δ{m} (p)", justify="right")
    for row in summary_rows(res):
        cells = [row["system"]]
        for m in HEADLINE:
            v = row.get(m)
            cells.append(f"{v[0]:.3f} [{v[1]:.3f},{v[2]:.3f}]" if v and v[1] is not None else
                         (f"{v[0]:.3f}" if v else ""))
            d = row.get(f"delta_{m}")
            cells.append(f"{d[0]:+.3f} ({d[3]:.3g})" if d else "")
        table.add_row(*cells)
    console = Console(width=max(Console().width, 180))
    console.print(table)
    if out is not None:
        path = save_results(list(res.runs.values()), out)
        comps = {name: c.to_dict() for name, c in res.comparisons.items()}
        out.with_name(f"{out.stem}.compare.json").write_text(json.dumps(comps, indent=1))
        from medvl.evaluate.report_gen import side_by_side_html

        page = out.with_name(f"{out.stem}.html")
        page.write_text(side_by_side_html(res, data, split), encoding="utf-8")
        console.print(f"results: {path}; paired tests: {out.stem}.compare.json; reports: {pred_dir}/; "
                      f"side by side: {page.name}")


llava_app = typer.Typer(help="LLaVA-style adapter: medvl encoder + projector + a local causal LM.",
                        no_args_is_help=True)
app.add_typer(llava_app, name="llava")


@llava_app.command("train")
def llava_train(
    encoder: str = typer.Option(..., "--encoder", help="Image encoder: medvl checkpoint, biomedclip, timm:..."),
    lm: str = typer.Option(..., "--lm", help="Causal LM folder: hf-lm:<dir> (config, weights and tokenizer)."),
    data: Path = typer.Option(..., "--data", help="Manifest of image-report pairs, or a VQA manifest."),
    out: Path = typer.Option(..., "--out", help="Output directory (llava.yaml, projector, lora/)."),
    stage: int = typer.Option(1, "--stage", help="1: projector only; 2: projector + LoRA on the LM."),
    init: Path | None = typer.Option(None, "--init", help="Adapter directory to continue from (stage 2 after 1)."),
    projector: str = typer.Option("mlp", "--projector", help="linear or mlp (2 layers, GELU)."),
    steps: int = typer.Option(100, "--steps", help="Optimizer steps."),
    lr: float = typer.Option(1e-3, "--lr", help="AdamW learning rate."),
    batch_size: int = typer.Option(8, "--batch-size", help="Pairs per step."),
    split: str = typer.Option("train", "--split", help="Manifest split to train on."),
    lora_r: int = typer.Option(8, "--lora-r", help="LoRA rank (stage 2)."),
    seed: int = typer.Option(0, "--seed", help="Data order seed."),
    device: str = device_option(),
) -> None:
    """Train one stage of the adapter; run stage 1, then stage 2 with --init <stage-1 dir>."""
    from medvl.models.llava import build_llava, load_llava, train_llava

    model = load_llava(init, device=device) if init is not None else \
        build_llava(encoder, lm, projector=projector, device=device, lora_r=lora_r)
    res = train_llava(model, data, out, stage=stage, steps=steps, lr=lr, batch_size=batch_size, split=split,
                      seed=seed, log=lambda m: typer.echo(m, err=True))
    typer.echo(f"stage {stage}: {len(res.losses)} steps, loss {res.losses[0]:.4f} -> {res.losses[-1]:.4f}, "
               f"{res.trainable} trainable parameters, {res.seconds:.1f}s; adapter: {res.out_dir}")
