"""Zero-shot prompt sensitivity: how much does the metric move when only the wording changes?

A zero-shot AUROC is a property of the model *and* of the prompts; papers that report one number
hide that a different template or synonym can move it by several points. This module scores the
same image features with prompt variants read from the dataset card (never invented in code):

* ``template: <t>`` -- one template at a time, with every phrase (name, synonyms, descriptions)
  of each class ensembled, as :mod:`medvl.evaluate.zeroshot` does with all templates;
* ``phrase #i`` -- the i-th phrase of every class (its name, then its synonyms and
  descriptions; a class with fewer phrases keeps its last one) with every template;
* ``ensemble`` -- the card's full prompt ensemble (what ``medvl eval zeroshot`` reports).

Multilabel / single-class binary tasks vary the positive prompts only; the negative prompt
set stays the card's (so the spread measures the class wording, not the negation wording).
Reported: every variant's value, mean, sd, min, max and range over the non-ensemble variants.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from medvl.data.card import DatasetCard
from medvl.errors import MedvlError


@dataclass
class PromptSensitivity:
    metric: str
    ensemble: float
    variants: list[dict[str, Any]] = field(default_factory=list)  # {"name", "kind", "value"}

    def _values(self) -> np.ndarray:
        v = np.array([x["value"] for x in self.variants], dtype=np.float64)
        return v[~np.isnan(v)]

    def summary(self) -> dict[str, float]:
        v = self._values()
        if v.size == 0:
            return {"mean": math.nan, "sd": math.nan, "min": math.nan, "max": math.nan, "range": math.nan}
        return {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if v.size > 1 else 0.0, "min": float(v.min()),
                "max": float(v.max()), "range": float(v.max() - v.min())}

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), **self.summary(), "n_variants": len(self.variants)}


def prompt_variants(card: DatasetCard, classes: Sequence[str]) -> list[tuple[str, str, dict[str, list[str]]]]:
    """(name, kind, {class: prompts}) for every template alone and every phrase position alone."""
    out = []
    for t in card.templates:
        out.append((f"template: {t}", "template",
                    {c: [t.format(label=p) for p in card.class_info(c).phrases] for c in classes}))
    n_phrases = max(len(card.class_info(c).phrases) for c in classes)
    for i in range(n_phrases):
        prompts = {}
        for c in classes:
            ph = card.class_info(c).phrases
            p = ph[min(i, len(ph) - 1)]
            prompts[c] = [t.format(label=p) for t in card.templates]
        label = ", ".join(dict.fromkeys(card.class_info(c).phrases[min(i, len(card.class_info(c).phrases) - 1)]
                                        for c in classes))
        out.append((f"phrase #{i + 1}: {label}", "phrase", prompts))
    return out


def prompt_sensitivity(encoder: Any, test: Any, card: DatasetCard, classes: Sequence[str], task: str,
                       metric: str = "auroc", logit_scale: float | None = None) -> PromptSensitivity:
    """Metric of every prompt variant on already extracted test features (text is encoded here)."""
    from medvl.evaluate.features import classification_labels
    from medvl.evaluate.metrics import metric_value, prepare
    from medvl.evaluate.zeroshot import (
        class_embeddings,
        ensemble_embedding,
        model_logit_scale,
        uses_prompt_pairs,
        zeroshot_scores,
    )

    if not getattr(encoder, "has_text", False):
        raise MedvlError(f"prompt sensitivity needs a text tower; {getattr(encoder, 'name', encoder)!r} has none")
    scale = float(logit_scale) if logit_scale is not None else model_logit_scale(encoder)
    labels = classification_labels(test, task)
    neg = class_embeddings(encoder, card, classes, negative=True) if uses_prompt_pairs(task, len(classes)) else None

    def score(pos: torch.Tensor) -> float:
        s = zeroshot_scores(test.x, pos, task, neg, scale)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return float(metric_value(metric, prepare(s, labels, task, classes)))

    ens = score(class_embeddings(encoder, card, classes))
    result = PromptSensitivity(metric, ens)
    for name, kind, prompts in prompt_variants(card, classes):
        pos = torch.stack([ensemble_embedding(encoder, prompts[c]) for c in classes])
        result.variants.append({"name": name, "kind": kind, "value": score(pos)})
    return result
