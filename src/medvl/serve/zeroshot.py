"""Zero-shot finding probabilities for the server: the evaluator's computation, precomputed once.

Why no scoring code here: ``medvl eval zeroshot`` and ``POST /v1/zero-shot`` must give the same
numbers for the same image, so both call :mod:`medvl.evaluate.zeroshot` (prompt ensembles from the
card, softmax over classes for binary/multiclass cards, present-vs-absent prompt pairs for
multilabel and single-class cards). The server only caches the class text embeddings at startup
(the prompts never change while serving), so a request costs one image forward plus a
``[B, E] x [E, K]`` product.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medvl.data.card import DatasetCard
from medvl.evaluate.zeroshot import (
    DEFAULT_LOGIT_SCALE,
    class_embeddings,
    uses_prompt_pairs,
    zeroshot_scores,
)

__all__ = ["DEFAULT_LOGIT_SCALE", "ZeroShotHead"]


class ZeroShotHead:
    """Precomputed class (and, for prompt pairs, class-absent) text embeddings for one card."""

    def __init__(self, encoder: Any, card: DatasetCard, logit_scale: float | None = None):
        self.card = card
        self.classes = card.class_names
        self.task = card.task
        self.scale = float(logit_scale) if logit_scale else DEFAULT_LOGIT_SCALE
        self.pairwise = uses_prompt_pairs(card.task, len(self.classes))
        self.positive = class_embeddings(encoder, card, self.classes)
        self.negative = class_embeddings(encoder, card, self.classes, negative=True) if self.pairwise else None

    @property
    def mode(self) -> str:
        return "pairwise" if self.pairwise else "softmax"

    def probabilities(self, image_features: np.ndarray) -> np.ndarray:
        """[B, E] image embeddings (any norm) -> [B, K] probabilities in ``self.classes`` order."""
        scores = zeroshot_scores(np.asarray(image_features, dtype=np.float32), self.positive, self.task,
                                 self.negative, self.scale)
        return np.asarray(scores, dtype=np.float32)
