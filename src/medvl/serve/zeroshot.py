"""Zero-shot finding probabilities from a dataset card's prompt ensembles.

Class text embeddings are computed once at startup (the prompts never change while serving), so
a zero-shot request costs one image forward plus a [B,E]x[E,K] product.

- binary/multiclass cards with >= 2 classes: softmax over the classes of
  ``scale * cos(image, mean prompt embedding)`` (the CLIP recipe);
- multilabel cards (and single-class binary cards): each class independently, as a softmax over
  the pair (positive prompts, negative prompts) from ``card.prompts(cls, negative=True)``, i.e.
  ``sigmoid(scale * (cos_pos - cos_neg))``, so "no effusion" competes with "effusion" rather than
  with the other findings.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from medvl.data.card import DatasetCard

DEFAULT_LOGIT_SCALE = 100.0  # CLIP's trained temperature ceiling; used when the encoder exposes none


class TextEncoder(Protocol):
    def encode_text(self, texts: list[str]) -> Any: ...


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def prompt_embedding(encoder: TextEncoder, prompts: list[str]) -> np.ndarray:
    """Mean of the L2-normalised prompt embeddings, renormalised (the prompt-ensemble recipe)."""
    return _unit(_unit(_to_numpy(encoder.encode_text(list(prompts)))).mean(axis=0))


class ZeroShotHead:
    """Precomputed class (and negative) text embeddings for one card."""

    def __init__(self, encoder: TextEncoder, card: DatasetCard, logit_scale: float | None = None):
        self.card = card
        self.classes = card.class_names
        self.scale = float(logit_scale) if logit_scale else DEFAULT_LOGIT_SCALE
        self.pairwise = card.task == "multilabel" or len(self.classes) == 1
        self.positive = np.stack([prompt_embedding(encoder, card.prompts(c)) for c in self.classes])
        self.negative = (np.stack([prompt_embedding(encoder, card.prompts(c, negative=True)) for c in self.classes])
                         if self.pairwise else None)

    @property
    def mode(self) -> str:
        return "pairwise" if self.pairwise else "softmax"

    def probabilities(self, image_features: np.ndarray) -> np.ndarray:
        """[B,E] image embeddings (any norm) -> [B,K] probabilities in ``self.classes`` order."""
        f = _unit(np.asarray(image_features, dtype=np.float32))
        pos = self.scale * f @ self.positive.T
        if self.negative is not None:
            neg = self.scale * f @ self.negative.T
            return (1.0 / (1.0 + np.exp(-(pos - neg)))).astype(np.float32)
        z = pos - pos.max(axis=1, keepdims=True)
        e = np.exp(z)
        return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
