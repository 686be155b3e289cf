"""Typed training configuration: the schema of ``medvl train --config FILE.yaml key=value ...``.

The YAML on disk is a plain nested mapping; :func:`load_train_config` applies dotted overrides,
builds these dataclasses with :func:`medvl.config.from_dict` (so a typo is a :class:`ConfigError`
listing the valid keys, never a silent default) and then coerces and checks every value, because
YAML reads ``lr=1e-3`` as the *string* ``"1e-3"`` and a string learning rate would only fail deep
inside the optimizer.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medvl.config import apply_overrides, from_dict, load_yaml, to_dict
from medvl.errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16")
DEVICES = ("auto", "cpu", "cuda")
ON_ERROR = ("raise", "skip")
EMPTY_TEXT = ("skip", "error")
OPTIM_IMPLS = ("auto", "fused", "foreach", "loop")
DISTRIBUTED = ("ddp", "fsdp")


@dataclass
class DataConfig:
    """Where the image-report pairs come from and how they are turned into tensors.

    ``shards`` (a directory or an fsspec URL: ``https://``, ``s3://``, ``gs://``) replaces the
    manifest. By default shards are read by random access (one byte-range read per sample, the
    exact global shuffle of a manifest run); ``stream_buffer: N`` instead streams each shard with
    one sequential read, shards shuffled per epoch and samples through an N-sample shuffle
    buffer (:class:`medvl.train.shards.ShardStream`): far fewer requests to an object store, a
    local shuffle only. Resume is exact either way.

    ``empty_text`` is the policy for training pairs whose report is empty: ``skip`` removes them
    from the training index before the first step (a pair without text has no positive partner
    in a contrastive loss, and removing them up front keeps every batch, on every rank, the same
    size), ``error`` refuses to train and names the rows.
    """

    manifest: str = "phantoms/manifest.csv"
    shards: str | None = None
    split: str = "train"
    image_size: int = 64
    channels: int = 1
    augment: bool = False
    cache_dir: str | None = None
    on_error: str = "raise"
    empty_text: str = "skip"
    num_workers: int = 0
    stream_buffer: int = 0  # with data.shards: 0 = random access; N > 0 = stream shards through an N-sample buffer
    # CT/MR volume policy (VolumePolicy fields, e.g. {intensity: window, window: [40, 400]}); recorded in the
    # checkpoint's model config and applied by evaluation and serving. None: per-volume min-max (to_uint8).
    volume: dict[str, Any] | None = None


@dataclass
class ModelConfig:
    """A preset name plus keyword overrides, passed verbatim to ``create_model(name, **overrides)``."""

    name: str = "clip-tiny"
    overrides: dict[str, Any] = field(default_factory=dict)
    tokenizer_vocab_size: int = 0  # 0 = the preset's default vocabulary size


@dataclass
class OptimConfig:
    lr: float = 5e-4
    weight_decay: float = 0.1
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-6
    warmup_steps: int = 100
    min_lr_ratio: float = 0.0
    grad_accum: int = 1
    clip_grad_norm: float | None = 1.0
    impl: str = "auto"


@dataclass
class TrainSection:
    """Loop length, batch, precision, parallelism and run bookkeeping.

    ``precision: auto`` is bf16 autocast on CUDA and fp32 on CPU (:func:`resolve_precision`).
    ``distributed`` picks how ``--nproc N`` (or torchrun) processes share the model: ``ddp``
    replicates it and all-reduces gradients; ``fsdp`` shards parameters, gradients and AdamW state
    with FSDP2 (``medvl.train.fsdp``) for towers that do not fit one device. Both give the same
    losses as one process on the same global batch. ``activation_checkpointing`` recomputes each
    transformer block / ResNet stage in the backward instead of storing its activations.

    ``batch_size`` is the *global* batch of one forward pass (all ranks together); each of the
    ``world_size`` processes takes a contiguous ``batch_size / world_size`` slice, so a run on 2
    processes sees exactly the batches a 1-process run sees. One optimizer step consumes
    ``grad_accum`` such batches. What accumulation does to a contrastive loss, exactly: each
    micro-batch's loss is computed over that micro-batch gathered from all ranks (``batch_size``
    pairs, ``batch_size - 1`` negatives per pair) and the step applies the mean of the
    ``grad_accum`` gradients; it is *not* one loss over ``batch_size * grad_accum`` pairs (that
    would need every micro-batch's features at once). It buys the larger step's gradient-noise
    level, not the larger batch's negatives. ``max_steps`` (optimizer steps) wins over ``epochs`` when > 0.
    """

    epochs: int = 10
    max_steps: int = 0
    batch_size: int = 64
    seed: int = 0
    precision: str = "auto"  # auto: bf16 autocast on CUDA (fp32 master weights), fp32 on CPU
    grad_checkpointing: bool = False  # older name of activation_checkpointing (either one enables it)
    activation_checkpointing: bool = False  # recompute each tower block's activations in the backward
    distributed: str = "ddp"  # with --nproc > 1: ddp (full replica per rank) or fsdp (FSDP2, sharded)
    sync_batchnorm: bool = False  # DDP on CUDA: BatchNorm statistics over the global batch
    channels_last: bool = True  # NHWC memory format for 2D image towers (faster convs on CPU and GPU)
    compile: bool = False  # torch.compile the model: ~10-20% faster steps, minutes of compiling first
    device: str = "auto"
    ckpt_every: int = 500
    keep_last: int = 0  # 0 keeps every checkpoint
    log_every: int = 10
    out_dir: str = "runs/clip-tiny-synth"
    threads: int = 0  # torch intra-op threads; 0 = torch's default
    progress: bool = True
    tensorboard: bool = True


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    # None (unset) = the objective the model preset was designed for (its ``objective`` field, e.g.
    # siglip-tiny -> siglip); resolved by :func:`validate`, so saved configs always list it.
    objectives: list[dict[str, Any]] | None = None
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainSection = field(default_factory=TrainSection)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


def resolve_precision(precision: str, device_type: str) -> str:
    """``auto`` -> ``bf16`` on CUDA, ``fp32`` elsewhere; explicit choices pass through.

    Why bf16 on CUDA: tensor cores run bf16 matmuls several times faster and halve activation
    memory, while bf16's fp32-sized exponent needs no loss scaling; the weights, gradients and
    optimizer state stay fp32 (autocast only casts the operands of matmuls and convolutions) and
    the contrastive loss is computed in fp32. Why fp32 on CPU: most CPUs have no bf16 matmul
    units, so autocast there mostly adds casts (``benchmarks/train_throughput.py`` measures it).
    """
    if precision == "auto":
        return "bf16" if device_type == "cuda" else "fp32"
    return precision


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Coerce a YAML scalar to the annotated simple type, or raise a ConfigError naming the key."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if isinstance(value, str) and value.lower() in ("none", "null", "") and type(None) in args:
            return None
        return _coerce(value, inner[0], where) if len(inner) == 1 else value
    try:
        if tp is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
                return value.lower() in ("true", "yes", "1")
            if isinstance(value, int) and value in (0, 1):
                return bool(value)
            raise ValueError
        if tp is int:
            if isinstance(value, bool):
                raise ValueError
            f = float(value)
            if f != int(f):
                raise ValueError
            return int(f)
        if tp is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if tp is str:
            if isinstance(value, (dict, list)):
                raise ValueError
            return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"config key {where!r}: expected {tp.__name__}, got {value!r}") from None
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {where!r}: expected a list, got {value!r}")
        return [_coerce(v, args[0], f"{where}[{i}]") if args else v for i, v in enumerate(value)]
    if origin is dict and not isinstance(value, dict):
        raise ConfigError(f"config key {where!r}: expected a mapping, got {value!r}")
    return value


def _coerce_all(obj: Any, where: str = "") -> None:
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        key = f"{where}.{f.name}" if where else f.name
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            _coerce_all(value, key)
        elif dataclasses.is_dataclass(hints[f.name]):
            raise ConfigError(f"config key {key!r} must be a mapping, got {value!r}")
        else:
            setattr(obj, f.name, _coerce(value, hints[f.name], key))


def _choice(value: str, choices: tuple[str, ...], key: str) -> None:
    if value not in choices:
        raise ConfigError(f"config key {key!r}: {value!r} is not one of {', '.join(choices)}")


def validate(cfg: TrainConfig) -> TrainConfig:
    """Coerce scalar types and check ranges/choices; returns ``cfg`` for chaining."""
    _coerce_all(cfg)
    _choice(cfg.train.precision, PRECISIONS, "train.precision")
    _choice(cfg.train.device, DEVICES, "train.device")
    _choice(cfg.data.on_error, ON_ERROR, "data.on_error")
    _choice(cfg.data.empty_text, EMPTY_TEXT, "data.empty_text")
    _choice(cfg.optim.impl, OPTIM_IMPLS, "optim.impl")
    _choice(cfg.train.distributed, DISTRIBUTED, "train.distributed")
    positive = {"train.batch_size": cfg.train.batch_size, "optim.grad_accum": cfg.optim.grad_accum,
                "train.ckpt_every": cfg.train.ckpt_every, "train.log_every": cfg.train.log_every,
                "data.image_size": cfg.data.image_size, "data.channels": cfg.data.channels}
    for key, v in positive.items():
        if v < 1:
            raise ConfigError(f"config key {key!r} must be >= 1, got {v}")
    if cfg.data.volume is not None:
        from medvl.data.volume_preprocess import VolumePolicy

        try:
            VolumePolicy.from_dict(cfg.data.volume)
        except (ConfigError, TypeError, ValueError) as exc:
            raise ConfigError(f"config key 'data.volume': {exc}") from None
        if cfg.data.shards:
            raise ConfigError("config key 'data.volume' applies to manifest data; tar shards (data.shards) do not "
                              "support a volume policy yet")
    if cfg.data.stream_buffer and not cfg.data.shards:
        raise ConfigError("config key 'data.stream_buffer' streams tar shards: set data.shards too")
    nonneg = {"train.epochs": cfg.train.epochs, "train.max_steps": cfg.train.max_steps,
              "data.stream_buffer": cfg.data.stream_buffer,
              "optim.warmup_steps": cfg.optim.warmup_steps, "data.num_workers": cfg.data.num_workers,
              "train.keep_last": cfg.train.keep_last, "train.threads": cfg.train.threads}
    for key, v in nonneg.items():
        if v < 0:
            raise ConfigError(f"config key {key!r} must be >= 0, got {v}")
    if cfg.train.epochs == 0 and cfg.train.max_steps == 0:
        raise ConfigError("set train.epochs or train.max_steps to a positive number")
    if cfg.optim.lr <= 0:
        raise ConfigError(f"config key 'optim.lr' must be > 0, got {cfg.optim.lr}")
    if len(cfg.optim.betas) != 2:
        raise ConfigError(f"config key 'optim.betas' needs two values, got {cfg.optim.betas}")
    if not 0.0 <= cfg.optim.min_lr_ratio <= 1.0:
        raise ConfigError(f"config key 'optim.min_lr_ratio' must be in [0, 1], got {cfg.optim.min_lr_ratio}")
    if cfg.optim.clip_grad_norm is not None and cfg.optim.clip_grad_norm <= 0:
        cfg.optim.clip_grad_norm = None
    if cfg.objectives is None:
        cfg.objectives = [{"name": preset_objective(cfg.model), "weight": 1.0}]
    if not cfg.objectives:
        raise ConfigError("config key 'objectives' must list at least one objective, e.g. [{name: infonce}]")
    for i, obj in enumerate(cfg.objectives):
        if not isinstance(obj, dict) or "name" not in obj:
            raise ConfigError(f"config key 'objectives[{i}]' must be a mapping with a 'name', got {obj!r}")
    return cfg


def preset_objective(model: ModelConfig) -> str:
    """The loss the model preset names (``objective`` in its YAML; overrides may change it)."""
    from medvl.models.registry import model_config

    return str(model_config(model.name, **model.overrides).objective)


def build_train_config(data: dict[str, Any], overrides: list[str] | None = None) -> TrainConfig:
    """Dict (+ dotted overrides) -> validated :class:`TrainConfig`."""
    merged = apply_overrides(data, list(overrides or []))
    return validate(from_dict(TrainConfig, merged))


def load_train_config(path: str | Path | None, overrides: list[str] | None = None,
                      out_dir: str | Path | None = None) -> TrainConfig:
    """Read ``path`` (or start from defaults when None), apply overrides and ``--out``."""
    data = load_yaml(path) if path is not None else {}
    cfg = build_train_config(data, overrides)
    if out_dir is not None:
        cfg.train.out_dir = str(out_dir)
    return cfg


# Keys whose change makes an existing checkpoint unusable for --resume: they define the network,
# its inputs or the training objective state that is restored from train_state.pt.
RESUME_LOCKED = ("model", "objectives", "data.image_size", "data.channels", "data.volume")


def _get(d: dict[str, Any], dotted: str) -> Any:
    node: Any = d
    for k in dotted.split("."):
        node = node.get(k) if isinstance(node, dict) else None
    return node


def incompatible_keys(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Locked keys whose value differs between a checkpoint's config and the requested one."""
    return [k for k in RESUME_LOCKED if _get(saved, k) != _get(current, k)]
