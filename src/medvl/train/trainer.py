"""The training loop: config in, checkpoints and metrics out, resumable bit for bit on CPU.

:func:`train` wires the pieces (data order from :mod:`.sampler`, schedule from :mod:`.schedule`,
checkpoint files from :mod:`.checkpoint`, RNG from :mod:`.rng`, ranks from :mod:`.distributed`)
around the models' and objectives' public contracts. What makes the resume exact:

* data order is a pure function of (seed, epoch) and the position is (epoch, batch); the
  augmentation of sample ``i`` runs under RNGs seeded with (seed, epoch, i);
* checkpoints are taken only at optimizer-step boundaries and hold the optimizer, schedule,
  objective buffers (e.g. a feature queue) and every global RNG state of every rank;
* the DataLoader gets its own generator, so creating it never consumes the global torch RNG.

A NaN/inf loss or gradient norm stops the run with :class:`TrainingDivergedError` *before* the
optimizer applies the bad update, naming the step, the manifest rows of the batch and the last
good checkpoint (never touched on the way out).

Testing aid: the environment variable ``MEDVL_DEBUG_STEP_DELAY`` (seconds) sleeps after each
optimizer step, so crash tests can kill a tiny run at a chosen point.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from medvl.config import save_yaml
from medvl.errors import CheckpointError, ConfigError, TrainingDivergedError
from medvl.models.tokenizer import trim_padding  # lives with the tokenizer; still importable from here
from medvl.train import checkpoint as ckpt_io
from medvl.train import fsdp
from medvl.train.config import TrainConfig, incompatible_keys, resolve_precision
from medvl.train.data import TrainData, build_train_data
from medvl.train.distributed import (
    DistInfo,
    all_reduce_mean,
    barrier,
    broadcast_object,
    cleanup_distributed,
    init_distributed,
    no_grad_sync,
)
from medvl.train.fsdp import shard_model
from medvl.train.logging import MetricsLogger
from medvl.train.rng import capture_rng_state, restore_rng_state, seed_everything
from medvl.train.sampler import EpochBatchSampler, SeededDataset
from medvl.train.schedule import CosineWarmup

STATE_VERSION = 1
BatchHook = Callable[[int, dict[str, Any]], "dict[str, Any] | None"]


@dataclass
class TrainResult:
    """What a finished run reports; ``losses`` holds (step, loss) for every step of this process."""

    out_dir: Path
    step: int
    last_checkpoint: Path | None
    final_loss: float
    losses: list[tuple[int, float]] = field(default_factory=list)
    skipped_images: int = 0
    skipped_empty_text: int = 0
    samples_per_s: float = 0.0
    resumed_from: Path | None = None


# --------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------

def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two AdamW groups: decay for weight matrices/kernels, none for biases, norms, scalars.

    Decaying a bias, a LayerNorm gain or the learned temperature only pulls them toward 0 for no
    regularisation benefit (the CLIP/open_clip recipe); ``ndim < 2`` catches all three.
    """
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or name.endswith(("logit_scale", "logit_bias")) or ".bias" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(params: list[dict[str, Any]], cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with the fused or multi-tensor (``foreach``) kernel where available.

    The fused/foreach kernels give the same update as the per-parameter loop up to float
    rounding and are several times faster for the many small tensors of a tiny model. ``auto``
    is fused on CUDA and on CPU (PyTorch >= 2.4 has a fused CPU AdamW: ~1.5 ms instead of ~20 ms
    per step for clip-tiny's 1.3 M parameters here), foreach for FSDP's ``DTensor`` shards on CPU.
    """
    o = cfg.optim
    kwargs: dict[str, Any] = {"lr": o.lr, "betas": tuple(o.betas), "eps": o.eps, "weight_decay": o.weight_decay}
    impl = o.impl
    if impl == "auto":
        from medvl.train.fsdp import is_dtensor

        sharded = any(is_dtensor(p) for g in params for p in g["params"])
        impl = "fused" if device.type == "cuda" or not sharded else "foreach"
    if impl == "fused":
        kwargs["fused"] = True
    elif impl == "foreach":
        kwargs["foreach"] = True
    else:
        kwargs["foreach"] = False
    return torch.optim.AdamW(params, **kwargs)


def total_steps(cfg: TrainConfig, batches_per_epoch: int) -> int:
    if cfg.train.max_steps > 0:
        return cfg.train.max_steps
    return max(1, cfg.train.epochs * batches_per_epoch // cfg.optim.grad_accum)


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    if resolve_precision(precision, device.type) == "bf16":  # auto: bf16 on CUDA, fp32 on CPU
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _build_model(cfg: TrainConfig, data: TrainData, info: DistInfo, resume_dir: Path | None) -> nn.Module:
    """A fresh model with a tokenizer trained on the training reports, or the checkpoint's model."""
    from medvl import models

    if resume_dir is not None:
        return models.load_model(resume_dir)
    overrides = model_overrides(cfg)
    model = models.create_model(cfg.model.name, **overrides)
    if not getattr(model.tokenizer, "trained", True):
        # Rank 0 trains the tokenizer and sends its JSON: every rank then has the same vocabulary
        # even if the tokenizers library were not deterministic across processes.
        from medvl.models.tokenizer import Tokenizer, train_tokenizer

        text_cfg = model.config.get("text", {})
        context = int(text_cfg.get("context_length", 64))
        tok_json = None
        if info.is_main:
            vocab = cfg.model.tokenizer_vocab_size or int(text_cfg.get("vocab_size", 4096))
            tok = train_tokenizer(data.train_texts, vocab, kind=text_cfg.get("tokenizer_type", "wordpiece"),
                                  context_length=context)
            tok_json = tok.to_json()
        tok_json = broadcast_object(tok_json, info)
        model.set_tokenizer(Tokenizer.from_json(str(tok_json), context))
    return model


def model_overrides(cfg: TrainConfig) -> dict[str, Any]:
    """``model.overrides`` plus the image size/channels of ``data``: the data section is the one
    place to set them; a contradicting ``model.overrides.image.*`` is a ConfigError."""
    import copy

    ov = copy.deepcopy(cfg.model.overrides)
    image = ov.setdefault("image", {})
    if not isinstance(image, dict):
        raise ConfigError(f"config key 'model.overrides.image' must be a mapping, got {image!r}")
    for key, value in (("image_size", cfg.data.image_size), ("in_chans", cfg.data.channels)):
        if key in image and image[key] != value:
            data_key = "data.image_size" if key == "image_size" else "data.channels"
            raise ConfigError(f"model.overrides.image.{key}={image[key]} disagrees with {data_key}={value}; "
                              f"set only {data_key}")
        image[key] = value
    if cfg.data.volume is not None:  # recorded in the checkpoint: evaluation and serving apply the same policy
        from medvl.data.volume_preprocess import VolumePolicy, policy_dict

        image["volume"] = policy_dict(VolumePolicy.from_dict(cfg.data.volume))
    return ov


def _build_objective(cfg: TrainConfig, info: DistInfo, model: nn.Module, data: TrainData) -> nn.Module:
    """The configured objectives, bound to the model and the training data (before the optimizer
    exists, so heads they create are trained)."""
    from medvl.objectives import TrainingDataInfo, build_objective

    objective = build_objective(cfg.objectives)
    own_passes = objective.needs_model
    if own_passes and info.enabled:
        raise ConfigError(f"objective(s) {', '.join(own_passes)} run forward passes of their own (masked "
                          f"inputs, an EMA teacher) and support single-process training only; drop --nproc")
    objective.bind(model, TrainingDataInfo(classes=list(data.classes), task=data.task, card=data.card))
    return objective


def _diverged(what: str, value: float, step: int, pos: tuple[int, int], rows: list[Any],
              last_ckpt: Path | None) -> TrainingDivergedError:
    shown = ", ".join(str(r) for r in rows[:32]) + (" ..." if len(rows) > 32 else "")
    where = f"last good checkpoint: {last_ckpt} (left intact; resume from it with a lower optim.lr)" \
        if last_ckpt else "no checkpoint was written before this step"
    return TrainingDivergedError(
        f"training diverged at step {step}: {what} is {value} (epoch {pos[0]}, batch {pos[1]}, "
        f"manifest rows {shown}); {where}"
    )


def _batch_rows(batch: dict[str, Any]) -> list[int]:
    rows = batch.get("row", [])
    return [int(r) for r in (rows.tolist() if torch.is_tensor(rows) else rows)]


def _gather_rows(rows: list[Any], info: DistInfo) -> list[Any]:
    if not info.enabled:
        return rows
    import torch.distributed as dist

    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, rows)
    return [r for part in out for r in part]


def _gather_rng(info: DistInfo) -> list[dict[str, Any]]:
    state = capture_rng_state()
    if not info.enabled:
        return [state]
    import torch.distributed as dist

    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, state)
    return out


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------

def _prepare_out_dir(cfg: TrainConfig, resume: bool) -> tuple[Path, Path | None, dict[str, Any] | None]:
    """Find the checkpoint to resume and refuse anything that would overwrite a run silently.

    Runs before anything is written, so an incompatible resume leaves the directory untouched.
    """
    out_dir = Path(cfg.train.out_dir)
    latest = ckpt_io.latest_checkpoint(out_dir)
    if not resume:
        if latest is not None:
            raise ConfigError(f"{out_dir} already holds checkpoints (newest: {latest}); pass --resume to "
                              f"continue that run or --out DIR to start a new one")
        return out_dir, None, None
    if latest is None:
        return out_dir, None, None
    saved = ckpt_io.load_train_config_dict(latest)
    bad = incompatible_keys(saved, cfg.to_dict())
    if bad:
        from medvl.train.config import _get

        diffs = "; ".join(f"{k}: checkpoint {_get(saved, k)!r} vs requested {_get(cfg.to_dict(), k)!r}"
                          for k in bad)
        raise CheckpointError(f"cannot resume {latest} with this config: {diffs}. Use a new --out DIR "
                              f"or the checkpoint's own config ({latest / ckpt_io.TRAIN_CONFIG})")
    state = ckpt_io.load_train_state(latest)
    if state.get("version") != STATE_VERSION:
        raise CheckpointError(f"{latest / ckpt_io.TRAIN_STATE}: unsupported train-state version "
                              f"{state.get('version')!r} (expected {STATE_VERSION})")
    return out_dir, latest, state


def train(cfg: TrainConfig, resume: bool = False, batch_hook: BatchHook | None = None) -> TrainResult:
    """Train per ``cfg``; with ``resume`` continue the newest complete checkpoint of ``out_dir``.

    ``batch_hook(step, batch)`` may return a replacement batch (tests use it to poison one).
    Raises ConfigError/ManifestError for bad input, CheckpointError for an unusable or
    incompatible checkpoint, TrainingDivergedError on NaN/inf.
    """
    info = init_distributed(cfg.train.device)
    try:
        return _train(cfg, resume, batch_hook, info)
    finally:
        cleanup_distributed()


def _train(cfg: TrainConfig, resume: bool, batch_hook: BatchHook | None, info: DistInfo) -> TrainResult:
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    device = info.device
    out_dir, resume_dir, state = _prepare_out_dir(cfg, resume)
    seed_everything(cfg.train.seed)

    data = build_train_data(cfg.data, seed=cfg.train.seed, out_dir=out_dir)
    model = _build_model(cfg, data, info, resume_dir).to(device)
    if cfg.train.grad_checkpointing or cfg.train.activation_checkpointing:
        if not hasattr(model, "set_grad_checkpointing"):
            raise ConfigError("train.activation_checkpointing=true but this model has no set_grad_checkpointing()")
        model.set_grad_checkpointing(True)
    volumetric = any(p.ndim == 5 for p in model.parameters())  # 3D towers keep the default layout
    memory_format = torch.channels_last if cfg.train.channels_last and not volumetric else torch.contiguous_format
    model = model.to(memory_format=memory_format)  # affects 4D (conv) weights only
    objective = _build_objective(cfg, info, model, data).to(device)
    core: nn.Module = model
    sharded = info.enabled and cfg.train.distributed == "fsdp"
    if info.enabled:
        has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in core.modules())
        if cfg.train.sync_batchnorm and has_bn:
            if device.type != "cuda":
                raise ConfigError("train.sync_batchnorm=true needs CUDA (torch's SyncBatchNorm has no CPU kernel)")
            core = model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        elif has_bn and info.is_main:
            print(f"note: the model has BatchNorm layers; with {info.world_size} processes their statistics "
                  f"come from each process's {cfg.train.batch_size // info.world_size} samples "
                  f"(set train.sync_batchnorm=true on CUDA for global-batch statistics)", flush=True)
        if sharded:
            core = model = shard_model(model)  # FSDP2: in place, the optimizer sees the DTensor shards
        else:
            model = nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None)
    # Compiled forward (opt-in): same parameters, so checkpoints and the optimizer see `core`.
    forward_model = torch.compile(model) if cfg.train.compile else model
    if cfg.train.compile and info.is_main:
        print("note: train.compile compiles the model first (tens of seconds to minutes); it pays on GPU "
              "runs of thousands of steps, rarely on CPU or short runs (benchmarks/train_throughput.py "
              "--variants ours,ours-compile measures it)", flush=True)
    groups = param_groups(core, cfg.optim.weight_decay)
    if sharded:  # FSDP keeps scalar parameters replicated: a group of their own (no DTensor mixing)
        groups = fsdp.split_replicated(groups, fsdp.replicated_params(core))
    extra = [p for p in objective.parameters() if p.requires_grad]
    if extra:
        groups.append({"params": extra, "weight_decay": 0.0})
    optimizer = build_optimizer(groups, cfg, device)
    sampler = EpochBatchSampler(data.indices, cfg.train.batch_size, cfg.train.seed, info.world_size, info.rank)
    steps = total_steps(cfg, sampler.batches_per_epoch)
    scheduler = CosineWarmup(optimizer, cfg.optim.warmup_steps, steps, cfg.optim.min_lr_ratio)

    step, pos = 0, (0, 0)
    fingerprint = data.fingerprint()
    if state is not None and info.is_main:
        saved = state.get("sampler", {}).get("data_fingerprint")
        if saved is not None and saved != fingerprint:
            print(f"warning: the training pairs differ from those of {resume_dir} (manifest edited?); the "
                  f"resumed run continues from step {state['step']} but is not an exact continuation", flush=True)
    if state is not None:
        if sharded:
            fsdp.load_optimizer_state(core, optimizer, state["optimizer"])
        else:
            optimizer.load_state_dict(state["optimizer"])
        # Hyper-parameters come from the current config (identical for an exact resume).
        for g, fresh in zip(optimizer.param_groups, groups, strict=True):
            g["weight_decay"] = fresh["weight_decay"]
            g["betas"], g["eps"] = tuple(cfg.optim.betas), cfg.optim.eps
        scheduler.load_state_dict(state["scheduler"])
        if state.get("objective"):
            objective.load_state_dict(state["objective"])
        rngs = state["rng"]
        restore_rng_state(rngs[info.rank] if len(rngs) == info.world_size else rngs[0])
        step, pos = int(state["step"]), (int(state["epoch"]), int(state["batch_in_epoch"]))
    sampler.start_epoch, sampler.start_batch = pos

    resolved = cfg.to_dict()
    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        ckpt_io.remove_partial(out_dir)
        if resume_dir is None and data.skip_report is not None and data.skip_report.exists():
            data.skip_report.unlink()  # a fresh run starts a fresh skip report
        data.report_label_skips()  # rows left out for unknown labels go (back) into it
        save_yaml(resolved, out_dir / "config.yaml")
    logger = MetricsLogger(out_dir, steps, start_step=step, enabled=info.is_main, progress=cfg.train.progress,
                           tensorboard=cfg.train.tensorboard)
    if info.is_main:
        what = f"resuming {resume_dir} at step {step}" if resume_dir else "starting"
        logger.message(f"{what}: {steps} steps, {len(data.indices)} training pairs, global batch "
                       f"{cfg.train.batch_size} x accum {cfg.optim.grad_accum}, {info.world_size} process(es) "
                       f"on {device}, {resolve_precision(cfg.train.precision, device.type)}")
        if data.skipped_empty_text:
            logger.message(f"data.empty_text=skip: {data.skipped_empty_text} training pair(s) with an empty "
                           f"text are left out of the contrastive loss")
        if data.skipped_labels:
            logger.message(f"data.on_error=skip: {data.skipped_labels} row(s) with labels the card does not know "
                           f"are left out (see {data.skip_report})")

    loader = DataLoader(
        SeededDataset(data.dataset, cfg.train.seed), batch_sampler=sampler, collate_fn=data.collate,
        num_workers=cfg.data.num_workers, pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(cfg.train.seed),
        persistent_workers=False,
    )
    if cfg.data.stream_buffer:  # stream the shards (one read per shard) through a shuffle buffer
        from medvl.train.shards import stream_loader

        loader = stream_loader(data.dataset, list(data.indices), data.collate, cfg.data.stream_buffer,
                               cfg.train.seed, cfg.train.batch_size, info.rank, info.world_size, *pos)
    delay = float(os.environ.get("MEDVL_DEBUG_STEP_DELAY", "0") or 0)
    last_ckpt = resume_dir
    losses: list[tuple[int, float]] = []
    result = TrainResult(out_dir=out_dir, step=step, last_checkpoint=last_ckpt, final_loss=float("nan"),
                         resumed_from=resume_dir, skipped_empty_text=data.skipped_empty_text)
    model.train()
    objective.train()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    t_log, n_log, t_all, n_all = time.perf_counter(), 0, time.perf_counter(), 0
    batches: Iterator[dict[str, Any]] = iter(loader)

    def save(at_step: int) -> Path:
        # Under FSDP every rank takes part in assembling the full weights and optimizer state.
        optim_state = fsdp.full_optimizer_state(core, optimizer) if sharded else optimizer.state_dict()
        to_save = fsdp.FullStateView(core, fsdp.full_model_state(core)) if sharded else core
        train_state = {
            "version": STATE_VERSION, "step": at_step, "epoch": pos[0], "batch_in_epoch": pos[1],
            "optimizer": optim_state, "scheduler": scheduler.state_dict(),
            "objective": objective.state_dict(), "rng": _gather_rng(info), "world_size": info.world_size,
            "sampler": {"seed": cfg.train.seed, "epoch": pos[0], "batch_in_epoch": pos[1],
                        "num_samples": len(data.indices), "data_fingerprint": fingerprint},
            "logit_scale": float(fsdp.to_local_value(getattr(core, "logit_scale",
                                                             torch.tensor(float("nan")))).detach().float()),
        }
        path = out_dir / ckpt_io.CHECKPOINTS / ckpt_io.step_dir_name(at_step)
        if info.is_main:
            from medvl.data.leakage import write_train_record
            from medvl.models import save_model

            def write_model(d: Path) -> None:
                save_model(to_save, d)
                write_train_record(d, data.training_record())  # for medvl eval's leakage check

            path = ckpt_io.save_checkpoint(out_dir, at_step, write_model, train_state,
                                           resolved, keep_last=cfg.train.keep_last)
        barrier(info)
        return path

    try:
        while step < steps:
            accum_loss = 0.0
            comps: dict[str, float] = {}
            step_rows: list[int] = []  # every micro-batch of this step, for a divergence report
            for micro in range(cfg.optim.grad_accum):
                batch_pos = pos
                batch = next(batches)
                pos = sampler.advance(*pos)
                if batch_hook is not None:
                    batch = batch_hook(step + 1, batch) or batch
                step_rows += _batch_rows(batch)
                images = batch["image"].to(device, non_blocking=True, memory_format=memory_format) \
                    if images_are_2d(batch["image"]) else batch["image"].to(device, non_blocking=True)
                ids, mask = trim_padding(**core.tokenizer(batch["text"]))
                ids, mask = ids.to(device, non_blocking=True), mask.to(device, non_blocking=True)
                last_micro = micro == cfg.optim.grad_accum - 1
                sync = contextlib.nullcontext() if last_micro or not info.enabled else no_grad_sync(model)
                with sync:
                    loss_dict = forward_loss(forward_model, objective, images, ids, mask, batch,
                                             cfg.train.precision, core=core)
                    loss = loss_dict["loss"]
                    names = sorted(k for k in loss_dict if k != "loss" and torch.is_tensor(loss_dict[k])
                                   and loss_dict[k].numel() == 1)
                    stats = all_reduce_mean(
                        torch.stack([loss.detach().float().reshape(())] +
                                    [loss_dict[k].detach().float().reshape(()) for k in names]), info).tolist()
                    if not math.isfinite(stats[0]):
                        rows = _gather_rows(_batch_rows(batch), info)
                        raise _diverged("the loss", stats[0], step + 1, batch_pos, rows, last_ckpt)
                    (loss / cfg.optim.grad_accum).backward()
                accum_loss += stats[0] / cfg.optim.grad_accum
                for k, v in zip(names, stats[1:], strict=True):
                    comps[k] = comps.get(k, 0.0) + v / cfg.optim.grad_accum
            grad_norm = clip_gradients(params, cfg.optim.clip_grad_norm)
            if not math.isfinite(grad_norm):
                raise _diverged("the gradient norm", grad_norm, step + 1, batch_pos,
                                _gather_rows(step_rows, info), last_ckpt)
            lr = optimizer_update(optimizer, scheduler, core)
            step += 1
            losses.append((step, accum_loss))
            n = cfg.train.batch_size * cfg.optim.grad_accum
            n_log += n
            n_all += n
            if step % cfg.train.log_every == 0 or step == steps:
                now = time.perf_counter()
                metrics = {"loss": accum_loss, "lr": lr, "samples_per_s": n_log / max(now - t_log, 1e-9),
                           "epoch": float(pos[0]), **comps}
                metrics["grad_norm"] = grad_norm
                if hasattr(core, "logit_scale"):
                    metrics["logit_scale"] = float(fsdp.to_local_value(core.logit_scale.detach()).exp())
                logger.log(step, metrics)
                t_log, n_log = now, 0
            else:
                logger.advance(step)
            if step % cfg.train.ckpt_every == 0 or step == steps:
                last_ckpt = save(step)
            if delay:
                time.sleep(delay)
    finally:
        logger.close()
        del batches

    result.step = step
    result.last_checkpoint = last_ckpt
    result.losses = losses
    result.final_loss = losses[-1][1] if losses else float("nan")
    result.samples_per_s = n_all / max(time.perf_counter() - t_all, 1e-9)
    result.skipped_images = data.skipped_images()
    if info.is_main:
        logger.enabled = True
        msg = f"done: {step} steps, last checkpoint {last_ckpt}"
        if result.skipped_images:
            msg += (f"; {result.skipped_images} image(s) could not be read and were skipped "
                    f"(data.on_error=skip; see {data.skip_report})")
        logger.message(msg)
    return result


def images_are_2d(images: torch.Tensor) -> bool:
    return images.ndim == 4


def forward_loss(model: nn.Module, objective: nn.Module, images: torch.Tensor, input_ids: torch.Tensor,
                 attention_mask: torch.Tensor, batch: dict[str, Any], precision: str = "fp32",
                 core: nn.Module | None = None) -> dict[str, Any]:
    """One forward pass and the objective's loss dict (the towers under bf16 autocast if asked).

    The loss itself runs in fp32: bf16 logits lose the resolution a softmax over the batch needs.
    Objectives that read local features get ``return_tokens=True``; those that run forward passes
    of their own (masked inputs, a teacher) get the unwrapped model ``core`` and the step's inputs.
    """
    tokens = bool(getattr(objective, "needs_tokens", False))
    own_passes = bool(getattr(objective, "needs_model", False))
    with _autocast(images.device, precision):
        out = model(images, input_ids, attention_mask, return_tokens=True) if tokens else \
            model(images, input_ids, attention_mask)
    out = {k: (v.float() if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in out.items()}
    if not own_passes:
        return objective(out, batch)
    from medvl.objectives import ObjectiveContext

    context = ObjectiveContext(model=core if core is not None else model, images=images,
                               input_ids=input_ids, attention_mask=attention_mask)
    with _autocast(images.device, precision):  # their extra tower passes; they compute losses in fp32
        return objective(out, batch, context=context)


def clip_gradients(params: list[torch.Tensor], max_norm: float | None) -> float:
    """Clip the global gradient norm to ``max_norm`` (when set) and return the norm before clipping.

    The norm is computed whatever the clipping setting: it is one fused pass over the gradients,
    cheap next to the backward pass, and it is what catches a NaN/inf gradient under a finite loss
    before the optimizer writes it into the weights (and a checkpoint).
    """
    if max_norm is None:
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return 0.0
        return float(fsdp.to_local_value(torch.nn.utils.get_total_norm(grads, foreach=True)))
    return float(fsdp.to_local_value(torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)))


def optimizer_update(optimizer: torch.optim.Optimizer, scheduler: CosineWarmup, model: nn.Module) -> float:
    """Apply this step's learning rate, step, free the gradients, advance the schedule, clamp the
    temperature. Returns the learning rate used."""
    lr = scheduler.apply()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()
    _clamp_logit_scale(model)
    return lr


def _clamp_logit_scale(model: nn.Module) -> None:
    """Keep the learned temperature within the model's cap after each update (the CLIP recipe)."""
    clamp = getattr(model, "clamp_logit_scale_", None)
    if callable(clamp):
        clamp()
