"""The ``Encoder`` interface every evaluator and the server use, and ``load_encoder(spec)``.

Why an interface: benchmarks compare medvl checkpoints with other encoders (timm backbones,
later open_clip and HF models); evaluators only see ``encode_image``/``encode_text`` plus the
preprocessing the encoder expects, never the model class.

Conventions: inputs are float images scaled to [0, 1] (``[B, C, H, W]``, or ``[B, C, D, H, W]``
for 3D encoders); the caller resizes to ``image_size`` and applies ``(x - mean) / std``
(identity for medvl checkpoints and the pretrained adapters, which normalise inside the model).
Channel counts are adapted (1 -> 3 by repetition, 3 -> 1 by averaging). Outputs are float32 CPU
tensors, L2-normalised unless ``normalize=False``; encoding runs batched, under ``no_grad``, in
eval mode, on ``device``.

Adding a schema is one registration: ``@register_encoder_schema("hf")`` on a
``loader(rest: str, device: str, **kwargs) -> Encoder`` function. The pretrained adapters
(``openclip:``, ``hf:`` and known names such as ``biomedclip``, in :mod:`medvl.models.pretrained`)
register on first use of :func:`load_encoder`/:func:`encoder_schemas`, so importing medvl never
imports open_clip or transformers.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from medvl.errors import ConfigError, MedvlError

log = logging.getLogger(__name__)

EncoderLoader = Callable[..., "Encoder"]
_SCHEMAS: dict[str, EncoderLoader] = {}


def register_encoder_schema(prefix: str) -> Callable[[EncoderLoader], EncoderLoader]:
    """Decorator registering ``loader`` for specs of the form ``<prefix>:<rest>``."""

    def deco(fn: EncoderLoader) -> EncoderLoader:
        _SCHEMAS[prefix] = fn
        return fn

    return deco


def _ensure_pretrained_schemas() -> None:
    """Register ``openclip:``/``hf:`` from :mod:`medvl.models.pretrained` (cheap: no open_clip import).

    Done lazily, and with ``setdefault`` into the current registry, so a registry swapped out
    (tests monkeypatch it) still gets them and a user's own registration is never overwritten.
    """
    from medvl.models.pretrained import ENCODER_SCHEMAS

    for prefix, loader in ENCODER_SCHEMAS.items():
        _SCHEMAS.setdefault(prefix, loader)


def encoder_schemas() -> list[str]:
    """Registered schema prefixes (``medvl`` is also implied for a bare directory path)."""
    _ensure_pretrained_schemas()
    return sorted(_SCHEMAS)


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


class _ImageBranch(torch.nn.Module):
    """The image half of a CLIPModel (tower + projection) as a standalone module."""

    def __init__(self, model: Any):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(images)


class CLIPEncoder(Encoder):
    """A medvl :class:`~medvl.models.clip.CLIPModel` (projected, shared-space embeddings)."""

    has_text = True
    normalises_inside = True

    def __init__(self, model: Any, name: str, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.name = name
        cfg = model.cfg
        self.image_size = cfg.image.image_size
        self.in_chans = cfg.image.in_chans
        # The model normalises internally (config mean/std), so callers feed [0, 1] images.
        self.mean = (0.0,) * self.in_chans
        self.std = (1.0,) * self.in_chans
        self.embed_dim = cfg.embed_dim
        self.has_text = bool(model.tokenizer.trained)

    def _encode_image_batch(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(images)

    def image_model(self) -> torch.nn.Module:
        return _ImageBranch(self.model)

    def _encode_text_batch(self, texts: list[str]) -> torch.Tensor:
        tok = self.model.tokenizer(texts)
        return self.model.encode_text(tok["input_ids"].to(self.device), tok["attention_mask"].to(self.device))


class TimmEncoder(Encoder):
    """A timm backbone's pooled features (image only); random init unless weights are given."""

    def __init__(self, model_name: str, weights: str | None = None, device: str | torch.device = "cpu",
                 in_chans: int = 3, image_size: int | None = None, **kwargs: Any):
        from medvl.models.config import ImageTowerConfig
        from medvl.models.image_towers import TimmImageTower

        self.device = torch.device(device)
        probe_cfg = ImageTowerConfig(type="timm", name=model_name, in_chans=in_chans,
                                     image_size=image_size or 224, pretrained_weights=weights, kwargs=kwargs)
        self.tower = TimmImageTower(probe_cfg).to(self.device).eval()
        pcfg = getattr(self.tower.trunk, "pretrained_cfg", {}) or {}
        self.name = f"timm:{model_name}" + (f"@{weights}" if weights else "")
        self.in_chans = in_chans
        self.image_size = int(image_size or pcfg.get("input_size", (3, 224, 224))[-1])
        mean = tuple(pcfg.get("mean", (0.5, 0.5, 0.5)))
        std = tuple(pcfg.get("std", (0.5, 0.5, 0.5)))
        if in_chans != len(mean):  # grey input: the average of the RGB statistics
            mean = (sum(mean) / len(mean),) * in_chans
            std = (sum(std) / len(std),) * in_chans
        self.mean, self.std = mean, std
        self.embed_dim = self.tower.num_features

    def _encode_image_batch(self, images: torch.Tensor) -> torch.Tensor:
        return self.tower(images)

    def image_model(self) -> torch.nn.Module:
        return self.tower


@register_encoder_schema("medvl")
def _load_medvl(rest: str, device: str = "cpu", **kwargs: Any) -> Encoder:
    from medvl.models.serialization import load_model

    if kwargs:
        raise ConfigError(f"medvl checkpoints take no encoder options, got {sorted(kwargs)}")
    return CLIPEncoder(load_model(rest, device=device), name=str(rest), device=device)


@register_encoder_schema("timm")
def _load_timm(rest: str, device: str = "cpu", **kwargs: Any) -> Encoder:
    name, _, weights = rest.partition("@")
    if not name:
        raise ConfigError("timm encoder spec needs a model name: timm:<name>[@weights.safetensors]")
    return TimmEncoder(name, weights or None, device=device, **kwargs)


def load_encoder(spec: str | Path, device: str | torch.device = "cpu", **kwargs: Any) -> Encoder:
    """Resolve ``spec`` to an :class:`Encoder`.

    ``spec``: a medvl checkpoint directory (or ``medvl:<dir>``), ``timm:<name>`` (random init),
    ``timm:<name>@/path/weights.safetensors``, ``openclip:<folder>[?text=<dir>]``,
    ``openclip:hf-hub:org/repo``, ``hf:<folder>[?pool=cls|mean|pooler]``, ``hf:hf-hub:org/repo``,
    or a known model name (``biomedclip``, ``medsiglip``, ``rad-dino``... see
    :mod:`medvl.models.pretrained.known`). ``kwargs`` go to the loader (e.g.
    ``in_chans=1, image_size=64`` for timm, ``text=<dir>`` for openclip, ``pool=mean`` for hf).
    """
    text = str(spec)
    if Path(text).is_dir():
        return _SCHEMAS["medvl"](text, device=str(device), **kwargs)
    _ensure_pretrained_schemas()
    prefix, sep, rest = text.partition(":")
    if sep and prefix in _SCHEMAS:
        return _SCHEMAS[prefix](rest, device=str(device), **kwargs)
    from medvl.models.pretrained import known

    if not sep and known.get_known(text) is not None:
        return known.load_known_encoder(text, device=str(device), **kwargs)
    valid = ", ".join(f"{s}:" for s in _SCHEMAS)  # registration order: built-in schemas first
    names = ", ".join(known.KNOWN_MODELS)
    if sep:
        raise MedvlError(f"unknown encoder schema {prefix!r} in {text!r}; valid schemas: {valid} "
                         f"(or a medvl checkpoint directory, or a known model name: {names})")
    raise MedvlError(f"encoder {text!r} is neither a checkpoint directory nor a '<schema>:<name>' spec nor a known "
                     f"model; valid schemas: {valid}; known models: {names}")
