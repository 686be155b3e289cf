"""``caption``: CoCa's captioning loss (Yu et al. 2022) -- next-token cross-entropy on the report,
predicted by a small decoder that cross-attends to the image tower's tokens.

Why: a contrastive loss alone teaches the image tower to tell reports apart; a captioning loss
makes it keep what a report *says* (which findings, which side, how large), and leaves a
decoder that writes draft reports (``medvl generate``). It trains alone or next to the
contrastive losses in one config::

    objectives: [{name: infonce}, {name: caption, weight: 1.0, layers: 2}]

The decoder (:class:`medvl.models.caption_decoder.CaptionDecoder`) is created in :meth:`bind`
from the model's tokenizer and embedding width, so its parameters are trained with the model,
saved in the checkpoint's objective state and restored on resume (exact, like every objective).
:func:`medvl.generate.load_captioner` rebuilds it from a checkpoint for generation.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medvl.errors import ConfigError
from medvl.models.caption_decoder import CaptionDecoder, DecoderConfig, special_ids
from medvl.objectives.context import ObjectiveContext, TrainingDataInfo


def next_token_loss(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor,
                    label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy over the positions where ``mask`` is 1 (``logits`` [B, T, V], ``targets`` [B, T])."""
    keep = mask.bool()
    if not keep.any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits[keep].float(), targets[keep], label_smoothing=label_smoothing)


class CaptionLoss(nn.Module):
    """Next-token loss of an image-conditioned report decoder (see the module docstring)."""

    needs_model = True  # reads the step's token ids (the context), not only the pooled features
    needs_tokens = True  # cross-attends to the patch features

    def __init__(self, width: int | None = None, layers: int = 2, heads: int = 4, mlp_ratio: float = 4.0,
                 dropout: float = 0.0, label_smoothing: float = 0.0):
        super().__init__()
        if width is not None and (not isinstance(width, int) or width < 1):
            raise ConfigError(f"objective 'caption': width must be a positive integer, got {width!r}")
        if not 0.0 <= float(label_smoothing) < 1.0:
            raise ConfigError(f"objective 'caption': label_smoothing must be in [0, 1), got {label_smoothing}")
        self.width = width
        self.layers = int(layers)
        self.heads = int(heads)
        self.mlp_ratio = float(mlp_ratio)
        self.dropout = float(dropout)
        self.label_smoothing = float(label_smoothing)
        self.decoder: CaptionDecoder | None = None

    def decoder_config(self, model: nn.Module) -> DecoderConfig:
        """The decoder's sizes for ``model``: its tokenizer's vocabulary and special ids, its joint width."""
        bos, eos, pad = special_ids(model.tokenizer)
        dim = int(model.embed_dim)
        return DecoderConfig(vocab_size=int(model.tokenizer.vocab_size), memory_dim=dim, bos_id=bos, eos_id=eos,
                             pad_id=pad, width=int(self.width or dim), layers=self.layers, heads=self.heads,
                             mlp_ratio=self.mlp_ratio, context_length=int(model.tokenizer.context_length),
                             dropout=self.dropout)

    def bind(self, model: nn.Module, data: TrainingDataInfo | None = None) -> None:
        device = next(model.parameters()).device
        self.decoder = CaptionDecoder(self.decoder_config(model)).to(device)

    def forward(self, outputs: dict[str, Any], batch: dict[str, Any] | None = None,
                context: ObjectiveContext | None = None) -> dict[str, torch.Tensor]:
        if context is None or self.decoder is None:
            raise ConfigError("objective 'caption' must be bound to a model (the trainer calls bind) and given "
                              "the step's context")
        if outputs.get("patch_features") is None:
            raise ConfigError("objective 'caption' needs patch_features (model forward with return_tokens=True)")
        memory = torch.cat([outputs["image_features"].unsqueeze(1), outputs["patch_features"]], dim=1)
        ids, attn = context.input_ids, context.attention_mask
        logits = self.decoder(ids[:, :-1], memory.float(), attn[:, :-1])
        targets, mask = ids[:, 1:], attn[:, 1:]
        loss = next_token_loss(logits, targets, mask, self.label_smoothing)
        with torch.no_grad():
            keep = mask.bool()
            acc = (logits[keep].argmax(-1) == targets[keep]).float().mean() if keep.any() \
                else torch.zeros((), device=ids.device)
        return {"loss": loss, "accuracy": acc}
