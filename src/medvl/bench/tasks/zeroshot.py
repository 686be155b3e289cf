"""Bench task ``zeroshot``: classify the split with the card's prompts (no training)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from medvl.bench.tasks.registry import TaskContext, register_task

if TYPE_CHECKING:
    from medvl.evaluate.results import EvalResult


@register_task("zeroshot", params=set(), needs_text=True, headline="auroc")
def run(ctx: TaskContext) -> list[EvalResult]:
    """Zero-shot classification via :func:`medvl.evaluate.zeroshot.zeroshot_features`."""
    from medvl.evaluate.zeroshot import zeroshot_features

    inputs = ctx.inputs()
    test = ctx.feats(ctx.split)
    return [zeroshot_features(inputs.encoder, test, inputs.manifest.card, inputs.classes, inputs.task,
                              split=ctx.split, seed=ctx.seed, **ctx.common)]
