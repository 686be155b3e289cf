"""The ``Encoder`` interface every evaluator and the server use (no loaders here).

Why an interface: benchmarks compare medvl checkpoints with other encoders (timm backbones,
open_clip and HF models); evaluators only see ``encode_image``/``encode_text`` plus the
preprocessing the encoder expects, never the model class.

Conventions: inputs are float images scaled to [0, 1] (``[B, C, H, W]``, or ``[B, C, D, H, W]``
for 3D encoders); the caller resizes to ``image_size`` and applies ``(x - mean) / std``
(identity for medvl checkpoints and the pretrained adapters, which normalise inside the model).
Channel counts are adapted (1 -> 3 by repetition, 3 -> 1 by averaging). Outputs are float32 CPU
tensors, L2-normalised unless ``normalize=False``; encoding runs batched, under ``no_grad``, in
eval mode, on ``device``.

Layering (like timm's ``_registry.py`` / ``_factory.py``): this module (the interface) and
:mod:`medvl.models.encoder_registry` (schema prefix -> loader) import no loader; the loaders
(:mod:`medvl.models.pretrained`, :mod:`medvl.models.volume_encoders`, the built-in medvl/timm ones)
import these two; :mod:`medvl.models.encoder` (``load_encoder``) sits on top of all of them.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from medvl.errors import MedvlError

log = logging.getLogger("medvl.models.encoder")


class Encoder(abc.ABC):
    """Image (and optionally text) encoder with the preprocessing it expects.

    Subclasses implement :meth:`_encode_image_batch` (and :meth:`_encode_text_batch` when
    ``has_text``); batching, device moves, channel adaptation, no_grad and normalisation are
    shared here.
    """

    name: str
    has_text: bool = False
    # True when the model applies its own mean/std inside (callers feed [0, 1] images): evaluators
    # must then not impose other input statistics.
    normalises_inside: bool = False
    image_size: int
    in_chans: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    embed_dim: int
    device: torch.device

    @property
    def preprocess(self) -> dict[str, Any]:
        """What the caller should do to [0, 1] images before :meth:`encode_image`."""
        return {"image_size": self.image_size, "in_chans": self.in_chans,
                "mean": list(self.mean), "std": list(self.std)}

    @abc.abstractmethod
    def _encode_image_batch(self, images: torch.Tensor) -> torch.Tensor: ...

    @abc.abstractmethod
    def image_model(self) -> torch.nn.Module:
        """``nn.Module`` mapping preprocessed images to *unnormalised* features ``[B, embed_dim]``.

        For evaluators that fine-tune (gradients, train mode). It shares weights with this
        encoder: ``copy.deepcopy`` it first to keep the encoder intact. Channels are not adapted.
        """

    def _encode_text_batch(self, texts: list[str]) -> torch.Tensor:
        raise MedvlError(f"encoder {self.name!r} has no text tower (has_text is False)")

    def _adapt_channels(self, images: torch.Tensor) -> torch.Tensor:
        c = images.shape[1]
        if c == self.in_chans:
            return images
        if c == 1:
            return images.expand(-1, self.in_chans, *images.shape[2:])
        if self.in_chans == 1:
            return images.mean(dim=1, keepdim=True)
        raise MedvlError(f"encoder {self.name!r} expects {self.in_chans} channels, got {c}")

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor, batch_size: int = 64, normalize: bool = True) -> torch.Tensor:
        """``FloatTensor[B, C, H, W]`` -> ``FloatTensor[B, E]`` on CPU."""
        if images.ndim < 4:
            raise MedvlError(f"encode_image expects [B, C, H, W] (or [B, C, D, H, W]), got {tuple(images.shape)}")
        if images.numel() and float(images.max()) > 20:
            log.warning("encoder %s: input max %.1f looks like 0-255 pixels; expected [0, 1] scaled "
                        "then normalised with mean/std", self.name, float(images.max()))
        outs = []
        for i in range(0, images.shape[0], batch_size):
            chunk = self._adapt_channels(images[i:i + batch_size].to(self.device, torch.float32))
            feats = self._encode_image_batch(chunk).float()
            outs.append((F.normalize(feats, dim=-1) if normalize else feats).cpu())
        return torch.cat(outs) if outs else torch.zeros(0, self.embed_dim)

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str], batch_size: int = 256, normalize: bool = True) -> torch.Tensor:
        """``list[str]`` -> ``FloatTensor[B, E]`` on CPU; raises :class:`MedvlError` without a text tower."""
        if not self.has_text:
            raise MedvlError(f"encoder {self.name!r} has no text tower (has_text is False)")
        if isinstance(texts, str):
            texts = [texts]
        outs = []
        texts = list(texts)
        for i in range(0, len(texts), batch_size):
            feats = self._encode_text_batch(texts[i:i + batch_size]).float()
            outs.append((F.normalize(feats, dim=-1) if normalize else feats).cpu())
        return torch.cat(outs) if outs else torch.zeros(0, self.embed_dim)
