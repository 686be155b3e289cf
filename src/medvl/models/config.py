"""Typed model configuration: what a preset YAML, an override and a checkpoint's ``config.yaml`` contain.

The dataclasses are the schema: :func:`medvl.config.from_dict` rejects unknown keys against them,
so a typo in ``image.nmae=resnet18`` fails loudly with the list of valid keys.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ImageTowerConfig:
    """Image tower: a timm 2D backbone (``type: timm``) or the built-in 3D ResNet (``type: resnet3d``).

    ``mean``/``std`` (one value per channel or one value for all) are applied *inside* the model,
    so a checkpoint expects inputs scaled to [0, 1] and carries its own normalisation.
    ``kwargs`` go to the backbone constructor (timm kwargs such as ``depth``; for ``resnet3d``:
    ``widths``, ``blocks``).
    """

    type: str = "timm"
    name: str = "resnet18"
    in_chans: int = 1
    image_size: int = 64
    patch_size: int | None = None
    pretrained_weights: str | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    # The CT/MR volume policy the tower was trained with (VolumePolicy.to_dict(); the training config's
    # data.volume): evaluation and serving map volumes the same way. None: per-volume min-max (older checkpoints).
    volume: dict[str, Any] | None = None


@dataclass
class TextTowerConfig:
    """Text tower: ``type: transformer`` (from scratch) or ``type: hf`` (Hugging Face AutoModel).

    ``tokenizer`` holds the serialised Hugging Face ``tokenizers`` JSON once trained (or copied
    from the HF folder), so the checkpoint alone rebuilds the tokenizer. ``hf_config`` holds the
    HF model config so a checkpoint does not need the original folder either.
    """

    type: str = "transformer"
    vocab_size: int = 4096
    width: int = 128
    layers: int = 2
    heads: int = 4
    mlp_ratio: float = 4.0
    context_length: int = 64
    causal: bool = False
    pool: str = "eot"
    dropout: float = 0.0
    tokenizer_type: str = "bpe"
    tokenizer: str | None = None
    hf_path: str | None = None
    hf_config: dict[str, Any] | None = None


@dataclass
class ModelConfig:
    """A dual encoder: image tower + text tower + projections into a shared ``embed_dim`` space.

    ``objective`` is the loss the preset was designed for (the trainer's default; the trainer's
    own config may override it). ``init_logit_bias`` set (e.g. -10) enables SigLIP's bias.

    Locked-tower training (LiT, Zhai et al. 2022): ``lock_text: true`` freezes a pretrained text
    tower (e.g. the MiniLM) so only the image tower and both projections learn -- the image side
    is pulled into a language space that is already good, instead of both drifting together on
    a small dataset; ``lock_image: true`` is the reverse (a pretrained image tower, a text tower
    trained to match it). ``lock_<tower>_unlocked_layers: N`` keeps the last N blocks trainable.
    Applied whenever the model is built (fresh, or rebuilt from a checkpoint to resume):
    frozen parameters get ``requires_grad=False``, which the trainer's optimizer skips, and a
    fully locked tower stays in eval mode (no dropout; BatchNorm statistics stay pretrained).
    """

    name: str = "custom"
    embed_dim: int = 64
    projection: str = "linear"
    init_logit_scale: float = math.log(1 / 0.07)
    max_logit_scale: float = 100.0
    init_logit_bias: float | None = None
    objective: str = "infonce"
    lock_image: bool = False
    lock_image_unlocked_layers: int = 0
    lock_text: bool = False
    lock_text_unlocked_layers: int = 0
    image: ImageTowerConfig = field(default_factory=ImageTowerConfig)
    text: TextTowerConfig = field(default_factory=TextTowerConfig)
