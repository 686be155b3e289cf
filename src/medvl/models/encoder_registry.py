"""Encoder schema registry: ``<prefix>:<rest>`` specs -> loader functions. Imports no loader.

A loader is ``loader(rest: str, device: str, **kwargs) -> Encoder``; it registers itself with
``@register_encoder_schema("prefix")`` in its own module. :func:`medvl.models.encoder.load_encoder`
imports the built-in loader modules before it looks a prefix up, so this module never has to
import them (the import circle between ``encoder.py`` and ``models/pretrained`` issue 13 found).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from medvl.models.encoder_base import Encoder

EncoderLoader = Callable[..., "Encoder"]
_SCHEMAS: dict[str, EncoderLoader] = {}


def register_encoder_schema(prefix: str) -> Callable[[EncoderLoader], EncoderLoader]:
    """Decorator registering ``loader`` for specs of the form ``<prefix>:<rest>``."""

    def deco(fn: EncoderLoader) -> EncoderLoader:
        _SCHEMAS[prefix] = fn
        return fn

    return deco


def schema_loaders() -> dict[str, EncoderLoader]:
    """The live registry (prefix -> loader), in registration order."""
    return _SCHEMAS
