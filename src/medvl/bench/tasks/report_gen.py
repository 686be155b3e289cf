"""Bench task ``report_gen``: reports written by the model (caption decoder or LLaVA adapter) and by
the three baselines, scored with the report metrics; one result per system (``config.variant``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from medvl.bench.tasks.registry import TaskContext, register_task, tag_variant

if TYPE_CHECKING:
    from medvl.evaluate.results import EvalResult

DEFAULT_SYSTEMS = ("model", "retrieval", "normal", "template")


def has_report_writer(spec: str) -> bool:
    """True for a LLaVA adapter dir or a medvl checkpoint trained with the caption objective."""
    from medvl.errors import CheckpointError
    from medvl.generate.captioner import _caption_spec, resolve_checkpoint
    from medvl.models.llava import is_llava_dir

    if not Path(spec).is_dir():
        return False
    if is_llava_dir(spec):
        return True
    try:
        _caption_spec(resolve_checkpoint(spec))
    except CheckpointError:
        return False
    return True


@register_task("report_gen", params={"systems", "method", "max_tokens", "beams", "length_penalty", "train_split"},
               deterministic=True, headline="bleu4")
def run(ctx: TaskContext) -> list[EvalResult] | str:
    """Generate + score via :func:`medvl.evaluate.report_gen.evaluate_report_generation`."""
    from medvl.errors import ConfigError
    from medvl.evaluate.report_gen import evaluate_report_generation
    from medvl.generate.decoding import DecodeConfig

    p = ctx.params
    systems = list(p.get("systems", DEFAULT_SYSTEMS))
    if not isinstance(systems, list) or not all(isinstance(s, str) for s in systems):
        raise ConfigError(f"task {ctx.job.task.name!r}: params.systems must be a list of names, got {systems!r}")
    notes = []
    if "model" in systems and not has_report_writer(ctx.encoder_spec):
        systems.remove("model")  # the baselines still apply to any image encoder
        notes.append(f"{ctx.job.model} writes no reports (no caption decoder): baselines only")
    if not systems:
        return f"{ctx.job.model} has no caption decoder and no baseline was asked for"
    cfg = DecodeConfig(method=p.get("method", "greedy"), max_new_tokens=int(p.get("max_tokens", 60)),
                       num_beams=int(p.get("beams", 4)), length_penalty=float(p.get("length_penalty", 1.0)))
    res = evaluate_report_generation(ctx.encoder_spec, ctx.manifest_path, systems=tuple(systems), split=ctx.split,
                                     train_split=p.get("train_split", "train"), cfg=cfg, n_boot=ctx.suite.bootstrap,
                                     seed=ctx.seed, device=ctx.device,
                                     pred_dir=ctx.out_dir / f"{ctx.out_path.stem}.reports")
    from medvl.evaluate.report_gen import side_by_side_html

    page = ctx.out_dir / f"{ctx.out_path.stem}.reports" / "side_by_side.html"  # generated vs reference, per study
    page.write_text(side_by_side_html(res, ctx.manifest_path, ctx.split), encoding="utf-8")
    href = str(page.relative_to(ctx.out_dir.parent))  # the bench report links it (relative to the bench folder)
    out = []
    for system, run_ in res.runs.items():
        for rec in run_.records:
            rec.model, rec.dataset = ctx.common["model_name"], ctx.common["dataset"]
            rec.config = {**rec.config, "side_by_side": href, **({"note": notes[0]} if notes else {})}
        if run_.predictions is not None:
            run_.predictions.meta["model"] = ctx.common["model_name"]
        out.extend(tag_variant([run_], system))
    return out
