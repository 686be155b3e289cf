"""Bench task ``knn``: k-nearest-neighbour classification on frozen features."""

from __future__ import annotations

from typing import TYPE_CHECKING

from medvl.bench.tasks.registry import TaskContext, register_task

if TYPE_CHECKING:
    from medvl.evaluate.results import EvalResult


@register_task("knn", params={"ks", "temperature"}, headline="auroc")
def run(ctx: TaskContext) -> list[EvalResult]:
    """kNN via :func:`medvl.evaluate.knn.knn_features` (k chosen on ``val`` when several are given)."""
    from medvl.evaluate.knn import knn_features

    inputs = ctx.inputs()
    test = ctx.feats(ctx.split)
    kw = {k: ctx.params[k] for k in ("ks", "temperature") if k in ctx.params}
    return [knn_features(ctx.feats("train"), ctx.val_or_none(), test, inputs.task, inputs.classes, split=ctx.split,
                         seed=ctx.seed, device=ctx.device, **kw, **ctx.common)]
