"""Masked image and masked report modelling (M3AE, Chen et al. 2022; MMCLIP; SimMIM for CNNs).

Why: contrastive pairs teach what distinguishes one report from another in the batch; making
the model also *reconstruct* hidden image regions and *predict* hidden report words from the
image forces features that keep local detail, which small medical datasets otherwise lose.

* ``mim`` (:class:`MaskedImageLoss`): a share ``mask_ratio`` of the image tower's feature-grid
  cells is hidden (their pixels set to the image's mean), the masked image goes through the
  tower, and a light two-layer decoder predicts each hidden cell's pixels from that cell's
  local feature. Loss: mean squared error on the hidden cells only, against per-cell
  normalised pixels (MAE's ``norm_pix_loss``). Masking pixels rather than dropping tokens (as
  MAE does) is SimMIM's choice, and the one that works for CNN towers as well as ViTs.
* ``mlm`` (:class:`MaskedTextLoss`): a share ``mask_ratio`` of the report's words is replaced
  by the tokenizer's mask token; the text tower encodes the masked report, each token
  cross-attends to the image's patch features (the image conditioning of M3AE's fusion), and
  a head predicts the hidden words. Loss: cross-entropy on the hidden positions only. With a
  causal text tower a position sees only its left context plus the image.

Both run an extra forward pass of one tower per step (see ``needs_model`` in
:mod:`medvl.objectives.context`) and are combined with a contrastive loss in the config.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medvl.errors import ConfigError
from medvl.objectives.context import ObjectiveContext, TrainingDataInfo


def _check_ratio(name: str, ratio: float) -> float:
    if not 0.0 < float(ratio) < 1.0:
        raise ConfigError(f"objective {name!r}: mask_ratio must be in (0, 1), got {ratio}")
    return float(ratio)


def random_cell_mask(batch: int, cells: int, ratio: float, device: torch.device) -> torch.Tensor:
    """``[B, P]`` bool, exactly ``round(ratio * P)`` (at least 1) True cells per row, uniformly at random.

    Uses the global torch RNG, which the trainer checkpoints: a resumed run masks the same cells.
    """
    k = min(cells, max(1, round(ratio * cells)))
    order = torch.rand(batch, cells, device=device).argsort(dim=1)
    mask = torch.zeros(batch, cells, dtype=torch.bool, device=device)
    mask.scatter_(1, order[:, :k], True)
    return mask


def patchify(images: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``[B, C, H, W]`` -> ``[B, h*w, C*ph*pw]`` cells in row-major grid order (the tower's token order)."""
    b, c, hh, ww = images.shape
    gh, gw = grid
    if hh % gh or ww % gw:
        raise ConfigError(f"image size {hh}x{ww} is not divisible by the feature grid {gh}x{gw}")
    ph, pw = hh // gh, ww // gw
    x = images.reshape(b, c, gh, ph, gw, pw).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, gh * gw, c * ph * pw)


def unpatchify(cells: torch.Tensor, grid: tuple[int, int], channels: int) -> torch.Tensor:
    """Inverse of :func:`patchify`."""
    b, n, d = cells.shape
    gh, gw = grid
    side = d // channels
    ph = pw = int(math.isqrt(side))
    if ph * pw != side:
        raise ConfigError(f"cannot unpatchify non-square cells of {side} pixels")
    x = cells.reshape(b, gh, gw, channels, ph, pw).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, channels, gh * ph, gw * pw)


def masked_patch_loss(pred: torch.Tensor, target: torch.Tensor, cell_mask: torch.Tensor,
                      norm_pix: bool = True) -> torch.Tensor:
    """Mean squared error over the masked cells only (``pred``/``target`` ``[B, P, D]``, mask ``[B, P]``)."""
    if norm_pix:
        mu = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True, unbiased=False)
        target = (target - mu) / (var + 1e-6).sqrt()
    per_cell = ((pred - target) ** 2).mean(dim=-1)
    m = cell_mask.to(per_cell.dtype)
    return (per_cell * m).sum() / m.sum().clamp(min=1.0)


class MaskedImageLoss(nn.Module):
    """Masked image modelling on the tower's feature grid (see the module docstring)."""

    needs_model = True

    def __init__(self, mask_ratio: float = 0.6, decoder_width: int = 128, norm_pix: bool = True):
        super().__init__()
        self.mask_ratio = _check_ratio("mim", mask_ratio)
        self.decoder_width = int(decoder_width)
        self.norm_pix = bool(norm_pix)
        self.decoder: nn.Module | None = None
        self.grid: tuple[int, int] | None = None

    def bind(self, model: nn.Module, data: TrainingDataInfo | None = None) -> None:
        """Size the decoder to the model's feature grid and cell size (probed with one blank image)."""
        cfg = model.cfg.image
        probe = torch.zeros(1, cfg.in_chans, cfg.image_size, cfg.image_size,
                            device=next(model.parameters()).device)
        with torch.no_grad():
            _, tokens, grid = model.encode_image_tokens(probe)
        if len(grid) != 2:
            raise ConfigError("objective 'mim' supports 2D image towers only")
        self.grid = (int(grid[0]), int(grid[1]))
        cell_dim = patchify(probe, self.grid).shape[-1]
        self.decoder = nn.Sequential(nn.Linear(tokens.shape[-1], self.decoder_width), nn.GELU(),
                                     nn.Linear(self.decoder_width, cell_dim)).to(probe.device)

    def forward(self, outputs: dict[str, Any], batch: dict[str, Any] | None = None,
                context: ObjectiveContext | None = None) -> dict[str, torch.Tensor]:
        if context is None or self.decoder is None or self.grid is None:
            raise ConfigError("objective 'mim' must be bound to a model (the trainer calls bind) and "
                              "given the step's context")
        images = context.images
        cells = patchify(images.float(), self.grid)
        mask = random_cell_mask(images.shape[0], cells.shape[1], self.mask_ratio, images.device)
        fill = cells.mean(dim=(1, 2), keepdim=True).expand_as(cells)
        masked = torch.where(mask.unsqueeze(-1), fill, cells)
        masked_images = unpatchify(masked, self.grid, images.shape[1]).to(images.dtype)
        _, tokens, grid = context.model.encode_image_tokens(masked_images)
        if tuple(grid) != self.grid:
            raise ConfigError(f"objective 'mim': feature grid {tuple(grid)} differs from the bound {self.grid} "
                              f"(images of a different size than data.image_size?)")
        pred = self.decoder(tokens.float())
        loss = masked_patch_loss(pred, cells, mask, self.norm_pix)
        return {"loss": loss, "mask_share": mask.float().mean()}


def random_word_mask(word_mask: torch.Tensor, ratio: float) -> torch.Tensor:
    """``[B, L]`` bool: each word masked with probability ``ratio``, at least one per report with words."""
    words = word_mask.bool()
    pick = (torch.rand(words.shape, device=words.device) < ratio) & words
    none = words.any(dim=1) & ~pick.any(dim=1)
    if none.any():  # guarantee one masked word: the first-ranked random word of those rows
        score = torch.rand(words.shape, device=words.device).masked_fill(~words, -1.0)
        forced = F.one_hot(score.argmax(dim=1), words.shape[1]).bool() & none.unsqueeze(1)
        pick = pick | forced
    return pick


def masked_token_loss(logits: torch.Tensor, targets: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the masked ``positions`` only (``logits`` [B, L, V], ``targets`` [B, L])."""
    if not positions.any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits[positions].float(), targets[positions])


class MaskedTextLoss(nn.Module):
    """Image-conditioned masked report modelling (see the module docstring)."""

    needs_model = True
    needs_tokens = True

    def __init__(self, mask_ratio: float = 0.15, heads: int = 4):
        super().__init__()
        self.mask_ratio = _check_ratio("mlm", mask_ratio)
        self.heads = int(heads)
        self.fusion: nn.MultiheadAttention | None = None
        self.norm: nn.LayerNorm | None = None
        self.head: nn.Module | None = None
        self.mask_id: int | None = None

    def bind(self, model: nn.Module, data: TrainingDataInfo | None = None) -> None:
        tok = model.tokenizer
        self.mask_id = getattr(tok, "mask_id", None)
        if self.mask_id is None:
            raise ConfigError("objective 'mlm' needs a tokenizer with a mask token ([MASK] or <mask>)")
        dim = int(model.embed_dim)
        if dim % self.heads:
            raise ConfigError(f"objective 'mlm': heads={self.heads} must divide the embedding width {dim}")
        device = next(model.parameters()).device
        self.fusion = nn.MultiheadAttention(dim, self.heads, batch_first=True).to(device)
        self.norm = nn.LayerNorm(dim).to(device)
        self.head = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, int(tok.vocab_size))).to(device)

    def forward(self, outputs: dict[str, Any], batch: dict[str, Any] | None = None,
                context: ObjectiveContext | None = None) -> dict[str, torch.Tensor]:
        if context is None or self.head is None or self.fusion is None or self.norm is None:
            raise ConfigError("objective 'mlm' must be bound to a model (the trainer calls bind) and given "
                              "the step's context")
        if outputs.get("patch_features") is None:
            raise ConfigError("objective 'mlm' needs patch_features (model forward with return_tokens=True)")
        ids, attn = context.input_ids, context.attention_mask
        words = context.model.word_mask(ids, attn)
        positions = random_word_mask(words, self.mask_ratio)
        masked_ids = ids.masked_fill(positions, int(self.mask_id))
        _, tokens = context.model.encode_text_tokens(masked_ids, attn)
        tokens = tokens.float()
        patches = outputs["patch_features"].float()
        fused, _ = self.fusion(tokens, patches, patches, need_weights=False)
        logits = self.head(self.norm(tokens + fused))
        loss = masked_token_loss(logits, ids, positions)
        with torch.no_grad():
            acc = (logits[positions].argmax(-1) == ids[positions]).float().mean() if positions.any() \
                else torch.zeros((), device=ids.device)
        return {"loss": loss, "accuracy": acc}
