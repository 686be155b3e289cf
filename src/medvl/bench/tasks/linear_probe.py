"""Bench task ``linear_probe``: logistic regression on frozen features, one result per label fraction."""

from __future__ import annotations

from typing import TYPE_CHECKING

from medvl.bench.tasks.registry import TaskContext, register_task, tag_variant

if TYPE_CHECKING:
    from medvl.evaluate.results import EvalResult


@register_task("linear_probe", params={"fractions", "c_grid"}, headline="auroc")
def run(ctx: TaskContext) -> list[EvalResult]:
    """Linear probe via :func:`medvl.evaluate.linear_probe.linear_probe_features` (C chosen on ``val``)."""
    from medvl.evaluate.linear_probe import linear_probe_features

    inputs = ctx.inputs()
    test = ctx.feats(ctx.split)
    fractions = list(ctx.params.get("fractions", [1.0]))
    kw = {"c_grid": ctx.params["c_grid"]} if "c_grid" in ctx.params else {}
    results = linear_probe_features(ctx.feats("train"), ctx.val_or_none(), test, inputs.task, inputs.classes,
                                    fractions=fractions, seeds=[ctx.seed], device=ctx.device, split=ctx.split,
                                    **kw, **ctx.common)
    for r, fraction in zip(results, fractions, strict=True):
        tag_variant([r], f"{fraction * 100:g}% labels")
    return results
