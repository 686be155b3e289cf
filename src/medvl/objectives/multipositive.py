"""Label-aware contrastive loss (MedCLIP-style): pairs sharing findings are not negatives.

Why: in medical datasets many images in a batch share the same findings ("no finding",
"effusion"), and plain InfoNCE pushes those true matches apart. Here the target of row ``i`` is
spread over every ``j`` that is a positive for ``i``:

- ``mode="hard"``: ``j`` is a positive when its label set equals ``i``'s;
- ``mode="soft"``: weight = cosine similarity of the label vectors (two empty sets = 1);
- identical captions are always positives, and so is ``j == i``.

Targets are row-normalised, and the loss is the symmetric soft cross-entropy with the model's
logit scale. With all-distinct labels and captions it equals InfoNCE exactly.

Contract: ``forward(outputs, batch) -> {"loss": scalar}``; needs ``batch["labels"]``
[B, K] (1 positive, 0 negative/unknown, -1 uncertain: mapped to ``uncertain``, default 0) and
uses ``batch["text"]`` (list of str) or else ``batch["input_ids"]`` to find identical captions.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medvl.errors import ConfigError
from medvl.objectives.distributed import gather_features, gather_no_grad
from medvl.objectives.infonce import contrastive_inputs, soft_cross_entropy

MODES = ("hard", "soft")


def _text_keys(batch: dict[str, Any], n: int, device: torch.device) -> torch.Tensor | None:
    """One int64 per caption, equal for identical (whitespace/case-normalised) captions."""
    texts = batch.get("text")
    if texts is not None:
        if len(texts) != n:
            raise ConfigError(f"multipositive: batch['text'] has {len(texts)} entries for {n} features")
        keys = [int.from_bytes(hashlib.blake2b(" ".join(str(t).lower().split()).encode(), digest_size=8)
                               .digest(), "little", signed=True) for t in texts]
        return torch.tensor(keys, dtype=torch.long, device=device)
    ids = batch.get("input_ids")
    if ids is not None:
        rows = ids.detach().cpu().numpy()
        keys = [int.from_bytes(hashlib.blake2b(r.tobytes(), digest_size=8).digest(), "little", signed=True)
                for r in rows]
        return torch.tensor(keys, dtype=torch.long, device=device)
    return None


def positive_weights(labels: torch.Tensor, text_keys: torch.Tensor | None = None, mode: str = "hard",
                     uncertain: float = 0.0) -> torch.Tensor:
    """Symmetric positive-pair weights [N, N] in [0, 1] (diagonal 1), before row normalisation."""
    lab = torch.nan_to_num(labels.float(), nan=0.0)
    lab = torch.where(lab < 0, torch.full_like(lab, float(uncertain)), lab)
    if mode == "hard":
        pos = (lab[:, None, :] == lab[None, :, :]).all(dim=-1).float()
    elif mode == "soft":
        normed = F.normalize(lab, dim=1)
        pos = (normed @ normed.T).clamp(min=0)
        empty = lab.abs().sum(dim=1) == 0
        pos = torch.where(empty[:, None] & empty[None, :], torch.ones_like(pos), pos)
    else:
        raise ConfigError(f"unknown multipositive mode {mode!r}; valid: {', '.join(MODES)}")
    if text_keys is not None:
        pos = torch.maximum(pos, (text_keys[:, None] == text_keys[None, :]).float())
    pos.fill_diagonal_(1.0)
    return pos


def label_targets(labels: torch.Tensor, text_keys: torch.Tensor | None = None, mode: str = "hard",
                  uncertain: float = 0.0) -> torch.Tensor:
    """Row-normalised image->text target matrix [N, N]."""
    pos = positive_weights(labels, text_keys, mode, uncertain)
    return pos / pos.sum(dim=1, keepdim=True)


class MultiPositiveLoss(nn.Module):
    """Symmetric soft-target contrastive loss; see the module docstring."""

    def __init__(self, mode: str = "hard", uncertain: float = 0.0, same_text_positive: bool = True):
        super().__init__()
        if mode not in MODES:
            raise ConfigError(f"unknown multipositive mode {mode!r}; valid: {', '.join(MODES)}")
        self.mode = mode
        self.uncertain = float(uncertain)
        self.same_text_positive = bool(same_text_positive)

    def forward(self, outputs: dict[str, Any], batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        img, txt, scale = contrastive_inputs(outputs, "multipositive")
        if batch is None or batch.get("labels") is None:
            raise ConfigError("objective 'multipositive' needs batch['labels'] [B, K]")
        labels = torch.as_tensor(batch["labels"], device=img.device)
        if labels.ndim != 2 or labels.shape[0] != img.shape[0]:
            raise ConfigError(f"multipositive: batch['labels'] must be [B, K] with B={img.shape[0]}, "
                              f"got {tuple(labels.shape)}")
        keys = _text_keys(batch, img.shape[0], img.device) if self.same_text_positive else None
        img, txt = gather_features(img, txt)
        labels = gather_no_grad(labels.float())
        keys = gather_no_grad(keys) if keys is not None else None
        pos = positive_weights(labels, keys, self.mode, self.uncertain)
        logits = scale * img @ txt.T
        loss = (soft_cross_entropy(logits, pos / pos.sum(dim=1, keepdim=True))
                + soft_cross_entropy(logits.T, pos.T / pos.T.sum(dim=1, keepdim=True))) / 2
        return {"loss": loss}
