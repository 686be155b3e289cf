"""Zero-shot classification from the dataset card's prompts (``medvl eval zeroshot``).

Prompts come from the card, never from code: ``card.prompts(cls)`` is every template x every
phrase of the class (name, synonyms, descriptions). Each class embedding is the prompt ensemble
of CLIP (Radford et al. 2021): the mean of the L2-normalised prompt embeddings, renormalised.

Scoring, with ``s`` the model's logit scale (``exp(logit_scale)`` of a medvl checkpoint, 100
otherwise) and cosine similarities between the L2-normalised image and class embeddings:

* binary (two classes) / multiclass: softmax over the classes of ``s * cos`` (binary AUROC then
  uses the class-1 probability);
* multilabel, and binary cards with a single class: per class, a positive prompt set
  (``card.prompts(cls)``) against a negative one (``card.prompts(cls, negative=True)``), the
  probability being the softmax over that pair.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medvl.data.card import DatasetCard, uses_prompt_pairs
from medvl.errors import ManifestError, MedvlError

log = logging.getLogger(__name__)
DEFAULT_LOGIT_SCALE = 100.0


def ensemble_embedding(encoder: Any, prompts: Sequence[str]) -> torch.Tensor:
    """Mean of the L2-normalised prompt embeddings, renormalised: one [E] vector."""
    if not prompts:
        raise ManifestError("zero-shot: a class has no prompts (empty templates or phrases in the card)")
    emb = F.normalize(torch.as_tensor(encoder.encode_text(list(prompts))).float(), dim=-1)
    return F.normalize(emb.mean(0), dim=0)


def class_embeddings(encoder: Any, card: DatasetCard, classes: Sequence[str] | None = None,
                     negative: bool = False) -> torch.Tensor:
    """[K, E] ensembled class (or, with ``negative``, class-absent) embeddings in ``classes`` order."""
    names = list(classes) if classes is not None else card.class_names
    return torch.stack([ensemble_embedding(encoder, card.prompts(c, negative=negative)) for c in names])


def zeroshot_scores(image_emb: np.ndarray | torch.Tensor, pos_emb: torch.Tensor, task: str,
                    neg_emb: torch.Tensor | None = None, logit_scale: float = DEFAULT_LOGIT_SCALE) -> np.ndarray:
    """Probabilities [N, K] from image embeddings and class (and, for pairs, negative) embeddings."""
    img = F.normalize(torch.as_tensor(np.asarray(image_emb)).float(), dim=-1)
    pos = F.normalize(pos_emb.float(), dim=-1)
    if uses_prompt_pairs(task, pos.shape[0]):
        if neg_emb is None:
            raise ValueError(f"{task} zero-shot needs negative-prompt embeddings")
        neg = F.normalize(neg_emb.float(), dim=-1)
        logits = torch.stack([img @ pos.T, img @ neg.T], dim=-1) * logit_scale  # [N, K, 2]
        return torch.softmax(logits, dim=-1)[..., 0].numpy()
    return torch.softmax(logit_scale * (img @ pos.T), dim=1).numpy()


def model_logit_scale(encoder: Any) -> float:
    """The encoder's learned temperature (exp'd, clamped as in training) or CLIP's 100."""
    model = getattr(encoder, "model", None)
    raw = getattr(model, "logit_scale", None)
    if raw is None:
        return DEFAULT_LOGIT_SCALE
    value = math.exp(float(torch.as_tensor(raw).detach()))
    cap = getattr(getattr(model, "cfg", None), "max_logit_scale", None)
    return float(min(value, cap)) if cap else value


def zeroshot_features(encoder: Any, test: Any, card: DatasetCard, classes: Sequence[str], task: str,
                      logit_scale: float | None = None, model_name: str = "", dataset: str = "",
                      split: str = "test", n_boot: int = 1000, seed: int = 0) -> Any:
    """Zero-shot result on extracted image features (text is encoded here)."""
    from medvl.evaluate.features import classification_labels
    from medvl.evaluate.results import Predictions, make_result

    if not getattr(encoder, "has_text", False):
        raise MedvlError(f"zero-shot needs an encoder with a text tower; {getattr(encoder, 'name', encoder)!r} "
                         "has none (use linear-probe, knn or finetune for image-only encoders)")
    scale = float(logit_scale) if logit_scale is not None else model_logit_scale(encoder)
    pos = class_embeddings(encoder, card, classes)
    neg = class_embeddings(encoder, card, classes, negative=True) if uses_prompt_pairs(task, len(classes)) else None
    scores = zeroshot_scores(test.x, pos, task, neg, scale)
    labels = classification_labels(test, task)
    preds = Predictions(ids=test.ids, scores=scores, labels=labels, label_task=task, classes=list(classes),
                        patient_ids=test.patient_ids, rows=test.rows)
    n_prompts = {c: len(card.prompts(c)) for c in classes}
    config = {"logit_scale": scale, "prompts_per_class": n_prompts, "templates": list(card.templates),
              "negative_templates": list(card.negative_templates) if neg is not None else None}
    return make_result(preds, model_name, "zeroshot", dataset, split, config, n_boot=n_boot, seed=seed)
