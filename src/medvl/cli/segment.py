"""``medvl train-seg`` and ``medvl eval segment``: parse arguments, call one library function each."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from medvl.cli.app import app, device_option, eval_app

console = Console()


@app.command("train-seg")
def train_seg_cmd(
    config: Path | None = typer.Option(None, "--config", "-c", help="Segmentation recipe (configs/seg-*.yaml)."),
    overrides: list[str] | None = typer.Argument(None, help="Dotted overrides, e.g. optim.max_steps=200 "
                                                            "model.freeze=frozen."),
    resume: bool = typer.Option(False, "--resume", help="Continue the newest complete checkpoint in the output dir."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Output dir (overrides out_dir)."),
    label_fraction: float | None = typer.Option(None, "--label-fraction",
                                                help="Train on this fraction of the training patients' masks "
                                                     "(e.g. 0.01, 0.1, 1.0; sets data.label_fraction)."),
) -> None:
    """Train a segmentation head on an encoder (frozen, fine-tuned or last blocks); exact --resume."""
    from medvl.segment.train import load_seg_config, train_segmentation

    extra = [f"data.label_fraction={label_fraction}"] if label_fraction is not None else []
    cfg = load_seg_config(config, list(overrides or []) + extra, out)
    result = train_segmentation(cfg, resume=resume)
    if not result.losses:
        console.print(f"nothing to do: {result.last_checkpoint} is already at step {result.step}", highlight=False)
        return
    console.print(f"{result.n_train_cases} training cases, {len(result.losses)} steps in {result.seconds:.1f} s; "
                  f"final loss {result.final_loss:.4f}; model: {Path(cfg.out_dir) / 'last'}", highlight=False,
                  soft_wrap=True)


@eval_app.command("segment")
def segment_cmd(
    model: str = typer.Option(..., "--model", "-m", help="Segmentation checkpoint (a train-seg run's 'last')."),
    data: Path = typer.Option(..., "--data", "-d", help="Manifest with 'mask' and 'mask_labels' columns."),
    split: str = typer.Option("test", "--split", help="Split to evaluate on."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Write JSON records (+ per-case values beside them)."),
    masks_out: Path | None = typer.Option(None, "--masks-out",
                                          help="Also write predicted masks here (PNG label maps; NIfTI with the "
                                               "input's affine)."),
    tolerance: float = typer.Option(1.0, "--nsd-tolerance", help="NSD tolerance in mm (pixels for 2D images)."),
    n_boot: int = typer.Option(1000, "--n-boot", help="Bootstrap replicates for the 95% CIs (0 = none)."),
    seed: int = typer.Option(0, "--seed", help="Bootstrap seed."),
    device: str = device_option(),
    all_classes: bool = typer.Option(False, "--per-class", help="Print every per-class record too."),
    prompt: str = typer.Option("none", "--prompt",
                               help="none: --model is a train-seg checkpoint; text: zero-shot masks of a CLIP "
                                    "checkpoint from its phrase grounding maps (threshold chosen on --val-split)."),
    phrases: str = typer.Option("report", "--phrases", help="--prompt text: the report's sentence naming the "
                                                            "finding (report) or the class name (class)."),
    val_split: str = typer.Option("val", "--val-split", help="--prompt text: split the threshold is chosen on."),
    mask_column: str = typer.Option("mask", "--mask-column", help="--prompt text: the mask column to score."),
) -> None:
    """Dice, IoU, HD95 and NSD per class with patient-level 95% bootstrap CIs."""
    from medvl.errors import ConfigError
    from medvl.evaluate.results import records_table, save_results

    if prompt == "text":
        from medvl.evaluate.segment_prompt import text_prompt_eval

        res = text_prompt_eval(model, data, split, val_split=val_split, phrases=phrases, n_boot=n_boot, seed=seed,
                               tolerance=tolerance, device=device, mask_column=mask_column)
    elif prompt == "none":
        from medvl.evaluate.segment import segment_eval

        res = segment_eval(model, data, split, n_boot=n_boot, seed=seed, tolerance=tolerance, device=device,
                           masks_out=masks_out)
    else:
        raise ConfigError(f"--prompt must be none or text, got {prompt!r}")
    shown = res.records if all_classes else [r for r in res.records if "/" not in r.metric]
    console.print(records_table(shown, title=f"segmentation: {model} on {data} / {split}"))
    head = next(r for r in res.records if r.metric == "dice")
    console.print("Dice per class: " + ", ".join(f"{c} {v:.3f}" for c, v in (head.per_class or {}).items()
                                               if v is not None), highlight=False, soft_wrap=True)
    if out is not None:
        path = save_results(res, out)
        console.print(f"results: {path} (+ per-case values beside it, for `medvl eval compare`)", highlight=False)
