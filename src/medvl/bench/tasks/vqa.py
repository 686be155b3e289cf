"""Bench task ``vqa``: a VQA manifest beside the dataset's (default ``vqa.csv``, written by ``medvl
data synth --vqa``) answered by the model and scored (closed accuracy, open EM/F1/recall, pairs)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from medvl.bench.tasks.registry import TaskContext, register_task

if TYPE_CHECKING:
    from medvl.evaluate.results import EvalResult


@register_task("vqa", params={"questions", "mode", "answer_type"}, deterministic=True, headline="accuracy_closed")
def run(ctx: TaskContext) -> list[EvalResult] | str:
    """Answer and score via :func:`medvl.evaluate.vqa.run_vqa_eval` (CLIP-style ranking by default)."""
    from medvl.evaluate.vqa import run_vqa_eval
    from medvl.models.llava import is_llava_dir

    questions = Path(ctx.params.get("questions", "vqa.csv"))
    path = questions if questions.is_absolute() else ctx.manifest_path.parent / questions
    if not path.is_file():
        return f"no VQA questions at {path} (medvl data synth --vqa writes them; or set params.questions)"
    mode = ctx.params.get("mode", "rank")
    spec = ctx.encoder_spec
    if mode != "generate" and not is_llava_dir(spec):
        from medvl.generate.captioner import resolve_checkpoint
        from medvl.models.encoder import load_encoder

        spec = str(resolve_checkpoint(spec)) if Path(spec).is_dir() else spec  # a run dir: its newest checkpoint
        if not load_encoder(spec, device=ctx.device, **ctx.encoder_options).has_text:
            return f"{ctx.job.model} has no text tower to rank answers with (use mode: generate with a report writer)"
    res = run_vqa_eval(path, model=spec, split=ctx.split, mode=mode, n_boot=ctx.suite.bootstrap,
                       seed=ctx.seed, device=ctx.device, answer_type=ctx.params.get("answer_type"))
    for rec in res.records:
        rec.model, rec.dataset = ctx.common["model_name"], ctx.common["dataset"]
    if res.predictions is not None:
        res.predictions.meta["model"] = ctx.common["model_name"]
    return [res]
