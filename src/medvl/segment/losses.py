"""Segmentation losses: soft Dice + cross-entropy (the nnU-Net / MONAI ``DiceCELoss`` recipe).

Why both: cross-entropy gives well-behaved per-voxel gradients early on; Dice counters the class
imbalance of small structures (a nodule is < 1 % of the image), so the sum trains small and large
structures alike. Dice is computed over the whole batch (numerators and denominators summed over
images before the ratio, "batch Dice"), so an image without a finding does not give the 0/0 of
a per-image Dice, and over the foreground classes only.

``target`` is ``bool/float [B, K, *S]``; for ``multiclass`` (softmax over background + K classes)
the classes are mutually exclusive, for ``multilabel`` (one sigmoid per class) they may overlap.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SMOOTH = 1e-5


def class_index(target: torch.Tensor) -> torch.Tensor:
    """``[B, K, *S]`` one-hot (no background channel) -> ``long [B, *S]`` with 0 = background."""
    t = target.float()
    any_fg = t.amax(1) > 0
    return torch.where(any_fg, t.argmax(1) + 1, torch.zeros_like(any_fg, dtype=torch.long))


def soft_dice_loss(probs: torch.Tensor, target: torch.Tensor, smooth: float = SMOOTH) -> torch.Tensor:
    """1 - mean over classes of the batch soft Dice; ``probs``/``target`` ``[B, K, *S]``."""
    dims = (0,) + tuple(range(2, probs.ndim))
    t = target.to(probs.dtype)
    inter = (probs * t).sum(dims)
    denom = probs.sum(dims) + t.sum(dims)
    return 1 - ((2 * inter + smooth) / (denom + smooth)).mean()


def dice_ce_loss(logits: torch.Tensor, target: torch.Tensor, task: str, dice_weight: float = 1.0,
                 ce_weight: float = 1.0) -> dict[str, torch.Tensor]:
    """``{"loss", "dice", "ce"}`` for ``logits`` ``[B, K(+1), *S]`` and ``target`` ``[B, K, *S]``."""
    if task == "multiclass":
        probs = logits.float().softmax(1)[:, 1:]
        ce = F.cross_entropy(logits.float(), class_index(target))
    else:
        probs = logits.float().sigmoid()
        ce = F.binary_cross_entropy_with_logits(logits.float(), target.float())
    dice = soft_dice_loss(probs, target)
    return {"loss": dice_weight * dice + ce_weight * ce, "dice": dice.detach(), "ce": ce.detach()}
