"""CLIP's symmetric InfoNCE loss (image->text and text->image cross-entropy).

Contract: ``forward(outputs, batch) -> {"loss": scalar}`` where ``outputs`` holds
L2-normalised ``image_features``/``text_features`` [B, E] and the exp'd ``logit_scale`` (as
:class:`~medvl.models.CLIPModel` returns); ``batch`` is unused. Pair ``i`` is the only
positive of row ``i``. Under torch.distributed the features are gathered with gradients and the
loss is computed over the global batch on every rank (open_clip ``local_loss=False``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medvl.errors import ConfigError
from medvl.objectives.distributed import gather_features


def contrastive_inputs(outputs: dict[str, Any], name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pull (image_features, text_features, logit_scale) out of model outputs with a clear error."""
    missing = [k for k in ("image_features", "text_features", "logit_scale") if outputs.get(k) is None]
    if missing:
        raise ConfigError(f"objective {name!r} needs model outputs {missing}; got keys {sorted(outputs)}")
    # float32 even under bf16 autocast: the softmax over B (or B + queue) logits needs the range.
    img, txt = outputs["image_features"].float(), outputs["text_features"].float()
    scale = torch.as_tensor(outputs["logit_scale"], device=img.device).float()
    return img, txt, scale


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over rows of ``-sum_j targets_ij * log_softmax(logits)_ij`` (targets rows sum to 1)."""
    return -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


class InfoNCELoss(nn.Module):
    """Symmetric CLIP loss ``(CE(s * I T^T, diag) + CE(s * T I^T, diag)) / 2``."""

    def __init__(self, label_smoothing: float = 0.0):
        super().__init__()
        self.label_smoothing = float(label_smoothing)

    def forward(self, outputs: dict[str, Any], batch: dict[str, Any] | None = None) -> dict[str, torch.Tensor]:
        img, txt, scale = contrastive_inputs(outputs, "infonce")
        img, txt = gather_features(img, txt)
        logits = scale * img @ txt.T
        labels = torch.arange(logits.shape[0], device=logits.device)
        loss = (F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
                + F.cross_entropy(logits.T, labels, label_smoothing=self.label_smoothing)) / 2
        return {"loss": loss}
