"""Bench task ``retrieval``: image-to-report and report-to-image recall@k and median rank on the split."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from medvl.bench.tasks.registry import TaskContext, register_task

if TYPE_CHECKING:
    from medvl.evaluate.features import Features
    from medvl.evaluate.results import EvalResult


def t2i_top(encoder: Any, test: Features, k: int = 5) -> np.ndarray:
    """For each report of the split, the indices of the k most similar images (the report's examples)."""
    import torch

    txt = encoder.encode_text(list(test.texts)).float()
    sim = txt @ torch.as_tensor(test.x).float().T
    return sim.topk(min(k, sim.shape[1]), dim=1).indices.numpy()


@register_task("retrieval", params={"ks"}, needs_text=True, headline="t2i_R@5")
def run(ctx: TaskContext) -> list[EvalResult]:
    """Cross-modal retrieval via :func:`medvl.evaluate.retrieval.retrieval_features`."""
    from medvl.evaluate.retrieval import retrieval_features

    inputs = ctx.inputs()
    test = ctx.feats(ctx.split)
    kw = {"ks": ctx.params["ks"]} if "ks" in ctx.params else {}
    result = retrieval_features(inputs.encoder, test, inputs.classes, split=ctx.split, seed=ctx.seed, **kw,
                                **ctx.common)
    if result.predictions is not None:
        result.predictions.extra["t2i_top"] = t2i_top(inputs.encoder, test)
    return [result]
