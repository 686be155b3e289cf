"""The dual encoder: image tower + text tower + projections + learnable temperature (and bias).

Contract (docs/ARCHITECTURE.md): ``forward(images, input_ids, attention_mask)`` returns
``{"image_features", "text_features"}`` L2-normalised, ``"logit_scale"`` already exponentiated
and clamped at ``max_logit_scale``, and ``"logit_bias"`` (a tensor for SigLIP models, else None).
``.config`` is a plain dict that rebuilds the model, tokenizer included.

Tokenizer order for a from-scratch text tower (what the trainer does):
    1. ``model = create_model("clip-tiny")``             (tokenizer untrained)
    2. ``model.set_tokenizer(train_tokenizer(train_reports, model.cfg.text.vocab_size))``
       -- or in one step ``create_model("clip-tiny", tokenizer_texts=train_reports)``
    3. build the optimizer (step 2 may resize the token embedding), then train.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medvl.config import to_dict
from medvl.errors import ConfigError
from medvl.models.config import ModelConfig
from medvl.models.image_towers import build_image_tower
from medvl.models.text_towers import build_text_tower, pool_tokens
from medvl.models.tokenizer import Tokenizer, UntrainedTokenizer

PROJECTIONS = ("linear", "mlp")


def _projection(kind: str, width: int, embed_dim: int) -> nn.Module:
    if kind == "linear":
        return nn.Linear(width, embed_dim, bias=False)
    if kind == "mlp":
        hidden = max(width, embed_dim)
        return nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, embed_dim))
    raise ConfigError(f"unknown projection {kind!r}; valid: {', '.join(PROJECTIONS)}")


def _per_channel(values: list[float] | None, in_chans: int, what: str) -> torch.Tensor | None:
    if values is None:
        return None
    vals = [float(v) for v in values]
    if len(vals) == 1:
        vals = vals * in_chans
    if len(vals) != in_chans:
        raise ConfigError(f"image.{what} has {len(vals)} values but image.in_chans is {in_chans}")
    return torch.tensor(vals)


class CLIPModel(nn.Module):
    """CLIP-style dual encoder built from a :class:`ModelConfig` (see module docstring for the contract)."""

    def __init__(self, cfg: ModelConfig, tokenizer: Tokenizer | None = None, *, load_pretrained: bool = True):
        super().__init__()
        self.cfg = cfg
        self.visual = build_image_tower(cfg.image, load_pretrained=load_pretrained)
        self.text = build_text_tower(cfg.text, load_pretrained=load_pretrained)
        self.image_projection = _projection(cfg.projection, self.visual.num_features, cfg.embed_dim)
        self.text_projection = _projection(cfg.projection, self.text.width, cfg.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(float(cfg.init_logit_scale)))
        self.logit_bias = (nn.Parameter(torch.tensor(float(cfg.init_logit_bias)))
                           if cfg.init_logit_bias is not None else None)
        mean = _per_channel(cfg.image.mean, cfg.image.in_chans, "mean")
        std = _per_channel(cfg.image.std, cfg.image.in_chans, "std")
        # Non-persistent: they are rebuilt from the config, so weights files stay tower-only.
        self.register_buffer("pixel_mean", mean, persistent=False)
        self.register_buffer("pixel_std", std, persistent=False)
        self._tokenizer: Tokenizer | UntrainedTokenizer = UntrainedTokenizer(cfg.text.context_length)
        if tokenizer is None and cfg.text.tokenizer:
            tokenizer = Tokenizer.from_json(cfg.text.tokenizer, cfg.text.context_length)
        if tokenizer is not None:
            self.set_tokenizer(tokenizer)
        self._apply_locks()

    # -- tokenizer ---------------------------------------------------------------------------
    @property
    def tokenizer(self) -> Tokenizer | UntrainedTokenizer:
        """``tokenizer(texts) -> {"input_ids", "attention_mask"}``; ``.trained`` is False until set."""
        return self._tokenizer

    def set_tokenizer(self, tokenizer: Tokenizer) -> None:
        """Attach a tokenizer, store its JSON in the config and fit the embedding table to its vocab.

        Call before building the optimizer: a vocabulary of a different size re-creates the
        token embedding of a from-scratch tower.
        """
        if tokenizer.context_length != self.cfg.text.context_length:
            tokenizer = Tokenizer.from_json(tokenizer.to_json(), self.cfg.text.context_length)
        if self.cfg.text.type == "transformer":
            self.text.resize_vocab(tokenizer.vocab_size)
            self.cfg.text.vocab_size = tokenizer.vocab_size
        else:
            self.text.resize_vocab(tokenizer.vocab_size)
        self.cfg.text.tokenizer = tokenizer.to_json()
        self._tokenizer = tokenizer
        if self.cfg.lock_text:  # a re-created token embedding must be frozen again
            self._apply_locks()

    # -- config ------------------------------------------------------------------------------
    @property
    def config(self) -> dict[str, Any]:
        """Plain dict that :func:`medvl.models.create_model` / ``CLIPModel(from_dict(...))`` rebuilds from."""
        return to_dict(self.cfg)

    @property
    def embed_dim(self) -> int:
        return self.cfg.embed_dim

    # -- encoders ----------------------------------------------------------------------------
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` (or ``[B, C, D, H, W]`` for 3D towers), values in [0, 1] -> ``[B, E]`` (not normalised)."""
        return self.image_projection(self.visual(self.normalise_pixels(images)))

    def encode_image_tokens(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[int, ...]]:
        """Pooled ``[B, E]`` plus local features ``[B, P, E]`` (not normalised) and their grid.

        The local features go through the same projection as the pooled one, so with a linear
        projection the global embedding is the mean of the local ones: patches and report words
        live in the joint space without extra parameters (what grounding reads).
        """
        pooled, tokens, grid = self.visual.forward_tokens(self.normalise_pixels(images))
        return self.image_projection(pooled), self.image_projection(tokens), grid

    def encode_text_tokens(self, input_ids: torch.Tensor,
                           attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled ``[B, E]`` plus per-token features ``[B, L, E]`` (not normalised)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden = self.text.forward_tokens(input_ids, attention_mask)
        pooled = pool_tokens(hidden, attention_mask, self.text.pool)
        return self.text_projection(pooled), self.text_projection(hidden)

    def word_mask(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """1 where a token is a word of the text (not padding, not [CLS]/[SEP]/[MASK]...)."""
        special = getattr(self.tokenizer, "special_ids", None) or []
        keep = attention_mask.bool()
        if special:
            keep = keep & ~torch.isin(input_ids, torch.tensor(special, device=input_ids.device))
        return keep.long()

    def normalise_pixels(self, images: torch.Tensor) -> torch.Tensor:
        """Check the channel count and apply the model's mean/std (if it has them)."""
        if images.shape[1] != self.cfg.image.in_chans:
            raise ConfigError(f"images have {images.shape[1]} channels but the model expects "
                              f"image.in_chans={self.cfg.image.in_chans} (shape {tuple(images.shape)})")
        if self.pixel_mean is not None or self.pixel_std is not None:
            view = (1, -1) + (1,) * (images.ndim - 2)
            if self.pixel_mean is not None:
                images = images - self.pixel_mean.to(images.dtype).view(view)
            if self.pixel_std is not None:
                images = images / self.pixel_std.to(images.dtype).view(view)
        return images

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Token ids ``[B, L]`` -> ``[B, E]`` (not normalised)."""
        return self.text_projection(self.text(input_ids, attention_mask))

    def forward(
        self,
        images: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        return_tokens: bool = False,
    ) -> dict[str, Any]:
        """Normalised features of both modalities plus the (exp'd, clamped) scale and the bias.

        ``return_tokens`` adds the local features the local-alignment objectives need:
        ``patch_features`` ``[B, P, E]`` and ``patch_grid``; ``token_features`` ``[B, L, E]`` and
        ``word_mask`` ``[B, L]`` (1 for report words); all features L2-normalised.
        """
        out: dict[str, Any] = {}
        if images is not None:
            if return_tokens:
                pooled, patches, grid = self.encode_image_tokens(images)
                out["patch_features"], out["patch_grid"] = F.normalize(patches, dim=-1), grid
            else:
                pooled = self.encode_image(images)
            out["image_features"] = F.normalize(pooled, dim=-1)
        if input_ids is not None:
            if return_tokens:
                if attention_mask is None:
                    attention_mask = torch.ones_like(input_ids)
                pooled, tokens = self.encode_text_tokens(input_ids, attention_mask)
                out["token_features"] = F.normalize(tokens, dim=-1)
                out["word_mask"] = self.word_mask(input_ids, attention_mask)
            else:
                pooled = self.encode_text(input_ids, attention_mask)
            out["text_features"] = F.normalize(pooled, dim=-1)
        out["logit_scale"] = self.logit_scale.exp().clamp(max=self.cfg.max_logit_scale)
        out["logit_bias"] = self.logit_bias
        return out

    @torch.no_grad()
    def clamp_logit_scale_(self) -> None:
        """Keep the raw parameter in [0, log(max_logit_scale)] (open_clip does this after each step)."""
        self.logit_scale.clamp_(0, math.log(self.cfg.max_logit_scale))

    # -- training helpers --------------------------------------------------------------------
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Trade compute for memory in both towers."""
        self.visual.set_grad_checkpointing(enable)
        self.text.set_grad_checkpointing(enable)

    def _apply_locks(self) -> None:
        """Freeze the towers the config locks (``lock_image``/``lock_text`` + ``*_unlocked_layers``)."""
        for tower in ("image", "text"):
            locked = getattr(self.cfg, f"lock_{tower}")
            unlocked = getattr(self.cfg, f"lock_{tower}_unlocked_layers")
            if not isinstance(locked, bool):
                raise ConfigError(f"lock_{tower} must be true or false, got {locked!r}")
            if not isinstance(unlocked, int) or isinstance(unlocked, bool) or unlocked < 0:
                raise ConfigError(f"lock_{tower}_unlocked_layers must be an integer >= 0, got {unlocked!r}")
            if unlocked and not locked:
                raise ConfigError(f"lock_{tower}_unlocked_layers={unlocked} has no effect without "
                                  f"lock_{tower}: true")
        if self.cfg.lock_image:
            self.lock_image_tower(self.cfg.lock_image_unlocked_layers)
        if self.cfg.lock_text:
            self.lock_text_tower(self.cfg.lock_text_unlocked_layers)

    def train(self, mode: bool = True) -> CLIPModel:
        """As ``nn.Module.train``, but a tower the config locks *fully* stays in eval mode.

        A frozen tower in train mode would still change: dropout adds noise to its features and
        BatchNorm layers overwrite their pretrained running statistics (LiT keeps the locked
        tower exactly as pretrained). Partially unlocked towers train normally.
        """
        super().train(mode)
        if mode:
            if self.cfg.lock_image and not self.cfg.lock_image_unlocked_layers:
                self.visual.eval()
            if self.cfg.lock_text and not self.cfg.lock_text_unlocked_layers:
                self.text.eval()
        return self

    def lock_image_tower(self, unlocked_layers: int = 0) -> None:
        """Freeze the image tower except its last ``unlocked_layers`` groups (LiT: lock it fully)."""
        self.visual.lock(unlocked_layers)

    def lock_text_tower(self, unlocked_layers: int = 0) -> None:
        """Freeze the text tower except its last ``unlocked_layers`` layers."""
        self.text.lock(unlocked_layers)

    def num_params(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)
