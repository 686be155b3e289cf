"""Training objectives: one ``nn.Module`` per loss, combined by :func:`build_objective`.

Contract of every objective: ``forward(outputs: dict, batch: dict) -> dict[str, Tensor]`` with
a scalar ``"loss"``; ``outputs`` is what :class:`medvl.models.CLIPModel` returns
(``image_features``, ``text_features`` L2-normalised, ``logit_scale`` exp'd, ``logit_bias``) and
``batch`` the collated dataset batch (``labels``, ``text``...). Losses gather across ranks
themselves (:mod:`medvl.objectives.distributed`).

Objectives that need local features, forward passes of their own or the dataset card declare
it (``needs_tokens``, ``needs_model``, ``bind``): see :mod:`medvl.objectives.context`.

Adding a loss: one file with the module + one ``register_objective("name")`` line.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from medvl.errors import ConfigError
from medvl.objectives.caption import CaptionLoss
from medvl.objectives.context import ObjectiveContext, TrainingDataInfo
from medvl.objectives.describe import DescriptionLoss
from medvl.objectives.distill import MomentumDistillationLoss
from medvl.objectives.distributed import gather_features
from medvl.objectives.infonce import InfoNCELoss
from medvl.objectives.local import LocalAlignmentLoss
from medvl.objectives.masked import MaskedImageLoss, MaskedTextLoss
from medvl.objectives.multipositive import MultiPositiveLoss
from medvl.objectives.queue import QueueLoss
from medvl.objectives.siglip import SigLIPLoss

OBJECTIVES: dict[str, type[nn.Module]] = {}


def register_objective(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Register an objective class under ``name`` for :func:`build_objective`."""

    def deco(cls: type[nn.Module]) -> type[nn.Module]:
        OBJECTIVES[name] = cls
        return cls

    return deco


register_objective("infonce")(InfoNCELoss)
register_objective("siglip")(SigLIPLoss)
register_objective("multipositive")(MultiPositiveLoss)
register_objective("queue")(QueueLoss)
register_objective("local")(LocalAlignmentLoss)
register_objective("mim")(MaskedImageLoss)
register_objective("mlm")(MaskedTextLoss)
register_objective("distill")(MomentumDistillationLoss)
register_objective("describe")(DescriptionLoss)
register_objective("caption")(CaptionLoss)


class CombinedObjective(nn.Module):
    """Weighted sum of objectives; returns ``"loss"`` (the total) and each unweighted component."""

    def __init__(self, terms: Sequence[tuple[str, nn.Module, float]]):
        super().__init__()
        if not terms:
            raise ConfigError("build_objective needs at least one objective")
        self.losses = nn.ModuleDict({name: module for name, module, _ in terms})
        self.weights = {name: float(w) for name, _, w in terms}

    @property
    def needs_tokens(self) -> bool:
        """True when a term reads local features (the model forward needs ``return_tokens=True``)."""
        return any(getattr(m, "needs_tokens", False) for m in self.losses.values())

    @property
    def needs_model(self) -> list[str]:
        """Names of the terms that run forward passes of their own (they get an ObjectiveContext)."""
        return [n for n, m in self.losses.items() if getattr(m, "needs_model", False)]

    def bind(self, model: nn.Module, data: TrainingDataInfo | None = None) -> None:
        """Let every term that has ``bind`` size itself to the model / read the card (before the optimizer)."""
        for module in self.losses.values():
            bind = getattr(module, "bind", None)
            if callable(bind):
                bind(model, data)

    def forward(self, outputs: dict[str, Any], batch: dict[str, Any] | None = None,
                context: ObjectiveContext | None = None) -> dict[str, torch.Tensor]:
        batch = batch if batch is not None else {}
        result: dict[str, torch.Tensor] = {}
        total: torch.Tensor | None = None
        for name, module in self.losses.items():
            if getattr(module, "needs_model", False):
                if context is None:
                    raise ConfigError(f"objective {name!r} runs its own forward passes and needs the training "
                                      f"context (model + inputs); call it through the trainer")
                out = module(outputs, batch, context=context)
            else:
                out = module(outputs, batch)
            result[name] = out["loss"]
            for key, value in out.items():
                if key != "loss":
                    result[f"{name}.{key}"] = value
            term = self.weights[name] * out["loss"]
            total = term if total is None else total + term
        assert total is not None
        result["loss"] = total
        return result


def _build_one(spec: str | dict[str, Any]) -> tuple[str, nn.Module, float]:
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, dict) or "name" not in spec:
        raise ConfigError(f"objective spec must be a name or a mapping with 'name', got {spec!r}")
    spec = dict(spec)
    name = spec.pop("name")
    weight = spec.pop("weight", 1.0)
    if name not in OBJECTIVES:
        raise ConfigError(f"unknown objective {name!r}; valid: {', '.join(sorted(OBJECTIVES))}")
    if not isinstance(weight, (int, float)) or isinstance(weight, bool):
        raise ConfigError(f"objective {name!r}: weight must be a number, got {weight!r}")
    cls = OBJECTIVES[name]
    params = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(spec) - set(params))
    if unknown:
        raise ConfigError(f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
                          f"for objective {name!r}; valid keys: {', '.join(['name', 'weight', *params])}")
    return name, cls(**spec), float(weight)


def build_objective(specs: str | dict[str, Any] | Sequence[str | dict[str, Any]]) -> CombinedObjective:
    """``[{"name": "infonce", "weight": 1.0}, {"name": "multipositive", "weight": 0.5, "mode": "soft"}]``
    -> module returning ``{"loss": total, "infonce": ..., "multipositive": ...}``.

    A name used twice gets a ``_2`` suffix in the output keys. Unknown names/options raise
    :class:`ConfigError` listing the valid ones.
    """
    if isinstance(specs, (str, dict)):
        specs = [specs]
    terms = []
    seen: dict[str, int] = {}
    for spec in specs:
        name, module, weight = _build_one(spec)
        seen[name] = seen.get(name, 0) + 1
        key = name if seen[name] == 1 else f"{name}_{seen[name]}"
        terms.append((key, module, weight))
    return CombinedObjective(terms)


__all__ = [
    "OBJECTIVES",
    "CaptionLoss",
    "CombinedObjective",
    "DescriptionLoss",
    "InfoNCELoss",
    "LocalAlignmentLoss",
    "MaskedImageLoss",
    "MaskedTextLoss",
    "MomentumDistillationLoss",
    "MultiPositiveLoss",
    "ObjectiveContext",
    "QueueLoss",
    "SigLIPLoss",
    "TrainingDataInfo",
    "build_objective",
    "gather_features",
    "register_objective",
]
