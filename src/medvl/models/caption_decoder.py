"""The captioning decoder of CoCa (Yu et al. 2022): a causal transformer that writes the report
while cross-attending to the image tower's tokens.

Why a separate small module: the dual encoder stays exactly what the contrastive objectives and
every evaluator expect, and the decoder is an add-on trained by the ``caption`` objective
(:mod:`medvl.objectives.caption`). It reads the same tokenizer as the text tower, so a
checkpoint needs no second vocabulary.

Contract: ``forward(input_ids [B, T], memory [B, M, D], attention_mask [B, T] | None)`` ->
next-token logits ``[B, T, V]``; ``memory`` is :func:`image_memory` of the dual encoder (the
L2-normalised pooled image feature followed by the normalised patch features, all in the joint
embedding space). :class:`DecoderConfig` rebuilds the module; it is a plain dataclass so that it
round-trips through YAML.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medvl.errors import ConfigError

BOS_TOKENS = ("[CLS]", "<s>", "<|startoftext|>", "<bos>")
EOS_TOKENS = ("[SEP]", "</s>", "<|endoftext|>", "<eos>")


@dataclass
class DecoderConfig:
    """Everything needed to rebuild a :class:`CaptionDecoder` (sizes and the special token ids)."""

    vocab_size: int
    memory_dim: int
    bos_id: int
    eos_id: int
    pad_id: int = 0
    width: int = 128
    layers: int = 2
    heads: int = 4
    mlp_ratio: float = 4.0
    context_length: int = 64
    dropout: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def special_ids(tokenizer: Any) -> tuple[int, int, int]:
    """``(bos, eos, pad)`` ids of a medvl tokenizer; ConfigError when it has no start/end tokens."""
    backend = getattr(tokenizer, "backend", None)
    if backend is None or not getattr(tokenizer, "trained", True):
        raise ConfigError("the caption decoder needs a trained tokenizer (train or load the model first)")

    def first(names: tuple[str, ...], what: str) -> int:
        for tok in names:
            idx = backend.token_to_id(tok)
            if idx is not None:
                return int(idx)
        raise ConfigError(f"the tokenizer has no {what} token (looked for {', '.join(names)}); the caption "
                          f"decoder needs one to start and stop a report")

    return first(BOS_TOKENS, "start"), first(EOS_TOKENS, "end"), int(tokenizer.pad_id)


def image_memory(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """``[B, 1 + P, E]``: the normalised pooled image feature followed by the normalised patch features.

    The same tensors the trainer hands the ``caption`` objective (``image_features`` and
    ``patch_features`` of a ``return_tokens=True`` forward), so generation sees what training saw.
    """
    pooled, patches, _ = model.encode_image_tokens(images)
    return torch.cat([F.normalize(pooled, dim=-1).unsqueeze(1), F.normalize(patches, dim=-1)], dim=1)


class CaptionDecoder(nn.Module):
    """Token + position embeddings, pre-norm ``nn.TransformerDecoderLayer`` stack (causal self-
    attention, cross-attention over the image memory), final norm and a vocabulary head."""

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        if cfg.width % cfg.heads:
            raise ConfigError(f"caption decoder: width ({cfg.width}) must be divisible by heads ({cfg.heads})")
        if cfg.vocab_size < 2 or cfg.layers < 1 or cfg.context_length < 2:
            raise ConfigError(f"caption decoder: invalid sizes vocab_size={cfg.vocab_size}, layers={cfg.layers}, "
                              f"context_length={cfg.context_length}")
        self.cfg = cfg
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width)
        self.positional_embedding = nn.Parameter(torch.zeros(cfg.context_length, cfg.width))
        self.memory_proj = nn.Sequential(nn.Linear(cfg.memory_dim, cfg.width), nn.LayerNorm(cfg.width))
        self.layers = nn.ModuleList(
            nn.TransformerDecoderLayer(cfg.width, cfg.heads, int(cfg.width * cfg.mlp_ratio), cfg.dropout,
                                       activation="gelu", batch_first=True, norm_first=True)
            for _ in range(cfg.layers)
        )
        self.ln_final = nn.LayerNorm(cfg.width)
        self.head = nn.Linear(cfg.width, cfg.vocab_size)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)

    def project_memory(self, memory: torch.Tensor) -> torch.Tensor:
        """Image memory ``[B, M, memory_dim]`` -> ``[B, M, width]`` (done once per image when generating)."""
        if memory.shape[-1] != self.cfg.memory_dim:
            raise ConfigError(f"caption decoder: memory width {memory.shape[-1]} != memory_dim {self.cfg.memory_dim}")
        return self.memory_proj(memory)

    def forward(self, input_ids: torch.Tensor, memory: torch.Tensor, attention_mask: torch.Tensor | None = None,
                *, projected: bool = False) -> torch.Tensor:
        """Next-token logits ``[B, T, V]``; ``projected=True`` when ``memory`` already went through
        :meth:`project_memory`."""
        seq = input_ids.shape[1]
        if seq > self.cfg.context_length:
            raise ConfigError(f"caption decoder: {seq} tokens exceed its context length {self.cfg.context_length}")
        mem = memory if projected else self.project_memory(memory)
        x = self.token_embedding(input_ids) + self.positional_embedding[:seq]
        causal = torch.full((seq, seq), float("-inf"), dtype=x.dtype, device=x.device).triu(1)
        pad = None
        if attention_mask is not None:
            pad = torch.zeros(attention_mask.shape, dtype=x.dtype, device=x.device)
            pad = pad.masked_fill(attention_mask == 0, float("-inf"))
        for layer in self.layers:
            x = layer(x, mem, tgt_mask=causal, tgt_key_padding_mask=pad)
        return self.head(self.ln_final(x))
