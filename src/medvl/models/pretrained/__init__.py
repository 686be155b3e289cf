"""Pretrained public models behind medvl's :class:`~medvl.models.encoder.Encoder` interface.

Schemas (registered with :func:`~medvl.models.encoder_registry.register_encoder_schema`; this package
imports only the interface and the registry, never :mod:`medvl.models.encoder`, which imports it)::

    openclip:<folder>[?text=<hf text folder>]   open_clip folder (open_clip_config.json + weights)
    openclip:hf-hub:org/repo                    the same from the Hub / HF cache
    hf:<folder>[?pool=cls|mean|pooler]          transformers CLIPModel, SiglipModel, ViT/DINOv2...
    hf:hf-hub:org/repo
    <known name>                                e.g. biomedclip, medsiglip, rad-dino (see known.py)

Importing this package is cheap: open_clip and transformers are imported only when a model is
loaded, so ``import medvl`` stays fast and works without them.
"""

from __future__ import annotations

from medvl.models.pretrained.base import ImagePreprocess, InputRangeWarning, PretrainedEncoder
from medvl.models.pretrained.hf import load_hf_encoder
from medvl.models.pretrained.known import (
    KnownModel,
    get_known,
    known_models,
    load_known_encoder,
    minilm_path,
    resolve_hf_path,
)
from medvl.models.pretrained.openclip import load_openclip_encoder

# Prefix -> loader (they register themselves on import); medvl.models.encoder re-adds them to a swapped registry.
ENCODER_SCHEMAS = {"openclip": load_openclip_encoder, "hf": load_hf_encoder}

__all__ = [
    "ENCODER_SCHEMAS",
    "ImagePreprocess",
    "InputRangeWarning",
    "KnownModel",
    "PretrainedEncoder",
    "get_known",
    "known_models",
    "load_hf_encoder",
    "load_known_encoder",
    "load_openclip_encoder",
    "minilm_path",
    "resolve_hf_path",
]
