"""``load_encoder(spec)``: the factory that turns a spec into an :class:`Encoder`, plus the built-in loaders.

The interface itself (:class:`~medvl.models.encoder_base.Encoder`, conventions in that module) and
the schema registry (:mod:`medvl.models.encoder_registry`) live below this module and import no
loader; the pretrained adapters import only those two, so there is no import circle. This module
re-exports ``Encoder`` and ``register_encoder_schema``: ``medvl.models.encoder`` stays the public
place to import them from.

Adding a schema is one registration: ``@register_encoder_schema("hf")`` on a
``loader(rest: str, device: str, **kwargs) -> Encoder`` function. The pretrained adapters
(``openclip:``, ``hf:`` and known names such as ``biomedclip``, in :mod:`medvl.models.pretrained`)
register on first use of :func:`load_encoder`/:func:`encoder_schemas`, so importing medvl never
imports open_clip or transformers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from medvl.errors import ConfigError, MedvlError
from medvl.models import encoder_registry
from medvl.models.encoder_base import Encoder
from medvl.models.encoder_registry import EncoderLoader, register_encoder_schema

__all__ = ["CLIPEncoder", "Encoder", "EncoderLoader", "TimmEncoder", "encoder_schemas", "load_encoder",
           "register_encoder_schema"]


def _ensure_pretrained_schemas() -> None:
    """Register ``openclip:``/``hf:`` from :mod:`medvl.models.pretrained` (cheap: no open_clip import).

    Done lazily, and with ``setdefault`` into the current registry, so a registry swapped out
    (tests monkeypatch it) still gets them and a user's own registration is never overwritten.
    """
    from medvl.models.pretrained import ENCODER_SCHEMAS  # importing registers them; setdefault below for a swap

    for prefix, loader in ENCODER_SCHEMAS.items():
        encoder_registry.schema_loaders().setdefault(prefix, loader)


def encoder_schemas() -> list[str]:
    """Registered schema prefixes (``medvl`` is also implied for a bare directory path)."""
    _ensure_pretrained_schemas()
    return sorted(encoder_registry.schema_loaders())


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
        # The volume policy the checkpoint was trained with (None: per-volume min-max); evaluation and serving
        # read it through preprocessing_of so volumes are mapped exactly as in training.
        from medvl.data.volume_preprocess import as_volume_policy

        self.volume_policy = as_volume_policy(getattr(cfg.image, "volume", None))

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


def resolve_device(device: str = "auto") -> str:
    """``auto`` -> ``cuda`` when a GPU is present, else ``cpu``; anything else as given.

    Why one place: evaluation, index builds and the server all accept ``--device auto`` and must
    agree on what it means.
    """
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


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
    schemas = encoder_registry.schema_loaders()
    if Path(text).is_dir():
        return schemas["medvl"](text, device=str(device), **kwargs)
    _ensure_pretrained_schemas()
    prefix, sep, rest = text.partition(":")
    if sep and prefix in schemas:
        return schemas[prefix](rest, device=str(device), **kwargs)
    from medvl.models.pretrained import known

    if not sep and known.get_known(text) is not None:
        return known.load_known_encoder(text, device=str(device), **kwargs)
    valid = ", ".join(f"{s}:" for s in schemas)  # registration order: built-in schemas first
    names = ", ".join(known.KNOWN_MODELS)
    if sep:
        raise MedvlError(f"unknown encoder schema {prefix!r} in {text!r}; valid schemas: {valid} "
                         f"(or a medvl checkpoint directory, or a known model name: {names})")
    raise MedvlError(f"encoder {text!r} is neither a checkpoint directory nor a '<schema>:<name>' spec nor a known "
                     f"model; valid schemas: {valid}; known models: {names}")
