"""What an objective may need beyond the global features, and how it asks for it.

Plain contrastive losses read ``outputs`` (the model's global features) and ``batch``. The
objectives from the medical VLP literature need more, and declare it with class attributes
that :class:`~medvl.objectives.CombinedObjective` and the trainer read:

* ``needs_tokens = True``: the model forward runs with ``return_tokens=True`` so ``outputs``
  also holds ``patch_features``/``patch_grid``/``token_features``/``word_mask`` (local alignment,
  masked language modelling conditioned on the image).
* ``needs_model = True``: ``forward(outputs, batch, context=...)`` receives an
  :class:`ObjectiveContext` with the (unwrapped) model and the tensors of this step, because the
  objective runs forward passes of its own (masked inputs, an EMA teacher).
* ``bind(model, data)``: called once after the model exists and before the optimizer is
  built, so an objective can size heads to the model (vocabulary, width, feature grid), copy a
  teacher, or read the dataset card. Parameters it creates are trained with the model; buffers
  and frozen modules it registers are saved in the checkpoint (exact resume).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass
class TrainingDataInfo:
    """The facts about the training data that objectives may bind to."""

    classes: list[str] = field(default_factory=list)
    task: str = "multilabel"
    card: Any | None = None  # medvl.data.card.DatasetCard when the manifest has one


@dataclass
class ObjectiveContext:
    """The model and this step's inputs, for objectives that run their own forward passes."""

    model: nn.Module
    images: torch.Tensor
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
