"""Bench task ``grounding``: phrase grounding of finding masks (pointing game, IoU, map AUROC)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from medvl.bench.tasks.registry import TaskContext, register_task

if TYPE_CHECKING:
    from medvl.evaluate.results import EvalResult


@register_task("grounding", params={"threshold", "temperature", "batch_size"}, needs_text=True,
               headline="pointing_game")
def run(ctx: TaskContext) -> list[EvalResult]:
    """Via :func:`medvl.evaluate.grounding.grounding_eval`; reads patch tokens itself (no pooled features)."""
    from medvl.evaluate.grounding import grounding_eval

    inputs = ctx.inputs()
    return [grounding_eval(inputs.encoder, inputs.manifest, split=ctx.split, n_boot=ctx.suite.bootstrap,
                           seed=ctx.seed, device=ctx.device, model_name=ctx.job.model, dataset=ctx.job.task.dataset,
                           **ctx.params)]
