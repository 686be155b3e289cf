"""``medvl train-seg``: train a dense head (and optionally the encoder) on a manifest's masks.

The guarantees of :mod:`medvl.train.trainer`, reused where they are generic:

* **checkpoints** are :func:`medvl.train.checkpoint.save_checkpoint` directories
  (``weights.safetensors`` + ``config.yaml`` via :func:`medvl.segment.model.save_seg_model`,
  ``train_state.pt`` read back with ``weights_only=True``, ``train_config.yaml``, ``complete``
  marker, ``last`` link), written atomically;
* **exact resume**: the batch of step ``t`` is a pure function of ``(seed, t)`` (cases drawn and
  3D patches cropped by ``numpy.random.default_rng([seed, t])``), and the optimizer, the global
  RNG states and the step are restored, so ``max_steps=N`` in one go and ``N/2`` + ``--resume``
  give the same weights bit for bit (test);
* **NaN guard**: a non-finite loss or gradient norm stops the run with
  :class:`~medvl.errors.TrainingDivergedError` naming the step, the manifest rows of the batch
  and the last good checkpoint.

2D images are resized to ``data.image_size`` (masks with nearest neighbour); volumes are cropped
to ``data.patch_size`` patches, two thirds centred on a random foreground voxel (nnU-Net's
oversampling: small structures are otherwise rarely seen). ``data.label_fraction`` trains on a
random subset of the training *patients* (label-efficiency curves: 0.01 / 0.1 / 1.0).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medvl.config import apply_overrides, from_dict, load_yaml, to_dict
from medvl.errors import CheckpointError, ConfigError, TrainingDivergedError
from medvl.models.seg_heads import FREEZE, HEADS, SegModel, build_seg_model
from medvl.segment.data import (
    CaseCache,
    SegCase,
    is_volume_path,
    label_fraction_subset,
    open_dataset,
    seg_cases,
    seg_layout,
)
from medvl.segment.losses import dice_ce_loss


@dataclass
class SegModelSection:
    """``encoder``: medvl checkpoint dir, preset name (random init) or ``timm:<name>``."""

    encoder: str = "clip-tiny"
    head: str = "fpn"  # linear | fpn
    freeze: str = "finetune"  # frozen | finetune | last
    unlocked_layers: int = 1
    width: int = 64
    in_chans: int | None = None  # timm: specs only
    prompt: str = "none"  # none | box (MedSAM-style box map) | text (FiLM by the CLIP text embedding)
    init: str | None = None  # a segmentation checkpoint to start from (weights only)


@dataclass
class SegDataSection:
    manifest: str = ""
    train_split: str = "train"
    mask_column: str = "mask"  # e.g. anatomy_mask (phantoms made with --anatomy); labels in <column>_labels
    classes: list[str] | None = None
    image_size: int = 64  # 2D input size
    patch_size: list[int] = field(default_factory=lambda: [32, 32, 32])  # 3D training patch
    label_fraction: float = 1.0
    foreground_oversample: float = 0.67
    box_jitter: float = 0.05  # box prompts: each side moved by up to this fraction of the image size
    positive_oversample: float = 0.0  # 2D: share of batch slots drawn from images with a non-empty mask


@dataclass
class SegOptimSection:
    lr: float = 1e-3
    encoder_lr: float | None = None  # default: lr / 10 for a pretrained encoder being fine-tuned
    weight_decay: float = 1e-4
    batch_size: int = 8
    max_steps: int = 200
    warmup_steps: int = 10
    clip_grad_norm: float | None = 1.0


@dataclass
class SegLossSection:
    dice: float = 1.0
    ce: float = 1.0


@dataclass
class SegTrainConfig:
    out_dir: str = "runs/seg"
    seed: int = 0
    device: str = "cpu"
    checkpoint_every: int = 100
    log_every: int = 10
    keep_last: int = 2
    model: SegModelSection = field(default_factory=SegModelSection)
    data: SegDataSection = field(default_factory=SegDataSection)
    optim: SegOptimSection = field(default_factory=SegOptimSection)
    loss: SegLossSection = field(default_factory=SegLossSection)


def load_seg_config(path: str | Path | None, overrides: list[str] | None = None,
                    out_dir: str | Path | None = None) -> SegTrainConfig:
    """YAML recipe + dotted overrides -> validated :class:`SegTrainConfig` (unknown keys fail)."""
    data = load_yaml(path) if path else {}
    data = apply_overrides(data, list(overrides or []))
    if out_dir is not None:
        data["out_dir"] = str(out_dir)
    cfg = from_dict(SegTrainConfig, data)
    if not cfg.data.manifest:
        raise ConfigError("data.manifest is required (a manifest with 'mask' and 'mask_labels' columns)")
    if cfg.model.head not in HEADS:
        raise ConfigError(f"model.head: {cfg.model.head!r}; valid: {', '.join(HEADS)}")
    if cfg.model.freeze not in FREEZE:
        raise ConfigError(f"model.freeze: {cfg.model.freeze!r}; valid: {', '.join(FREEZE)}")
    if cfg.optim.max_steps < 1 or cfg.optim.batch_size < 1:
        raise ConfigError("optim.max_steps and optim.batch_size must be >= 1")
    return cfg


@dataclass
class SegTrainResult:
    out_dir: Path
    last_checkpoint: Path | None
    step: int
    losses: list[float]
    seconds: float
    n_train_cases: int

    @property
    def final_loss(self) -> float:
        return self.losses[-1] if self.losses else float("nan")


class BatchMaker:
    """The batch of a step, as a pure function of ``(seed, step)`` (what makes resume exact)."""

    def __init__(self, cache: CaseCache, dims: int, image_size: int, patch: list[int], oversample: float,
                 batch_size: int, seed: int, positive_oversample: float = 0.0):
        self.cache, self.dims, self.image_size = cache, dims, image_size
        self.patch, self.oversample = [int(p) for p in patch], oversample
        self.batch_size, self.seed = batch_size, seed
        self.positive_oversample = positive_oversample
        self._positive: list[int] | None = None
        self._resized: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def positives(self) -> list[int]:
        """Cases with any non-empty mask (read once; 2D sets are small)."""
        if self._positive is None:
            self._positive = [i for i in range(len(self.cache)) if self.cache[i].target.any()]
        return self._positive

    def _item2d(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if i not in self._resized:
            case = self.cache[i]
            img = torch.from_numpy(case.image)[None]
            tgt = torch.from_numpy(case.target.astype(np.float32))[None]
            s = self.image_size
            if tuple(img.shape[-2:]) != (s, s):
                img = F.interpolate(img, size=(s, s), mode="bilinear", align_corners=False)
                tgt = F.interpolate(tgt, size=(s, s), mode="nearest")
            self._resized[i] = (img[0], tgt[0] > 0.5)
        return self._resized[i]

    def _crop3d(self, i: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        case = self.cache[i]
        img, tgt = case.image, case.target
        pad = [(0, 0)] + [(max(p - s, 0) // 2, max(p - s, 0) - max(p - s, 0) // 2)
                          for s, p in zip(img.shape[1:], self.patch, strict=True)]
        if any(a or b for a, b in pad):
            img, tgt = np.pad(img, pad), np.pad(tgt, pad)
        shape = img.shape[1:]
        fg = np.argwhere(tgt.any(0)) if rng.random() < self.oversample else np.zeros((0, 3))
        if len(fg):
            centre = fg[rng.integers(len(fg))]
            start = [int(np.clip(c - p // 2, 0, s - p)) for c, p, s in zip(centre, self.patch, shape, strict=True)]
        else:
            start = [int(rng.integers(0, s - p + 1)) for p, s in zip(self.patch, shape, strict=True)]
        sl = tuple(slice(a, a + p) for a, p in zip(start, self.patch, strict=True))
        return torch.from_numpy(np.ascontiguousarray(img[(slice(None), *sl)])), \
            torch.from_numpy(np.ascontiguousarray(tgt[(slice(None), *sl)]))

    def __call__(self, step: int) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        rng = np.random.default_rng([self.seed, step])
        idx = rng.integers(0, len(self.cache), self.batch_size).tolist()
        if self.positive_oversample > 0 and self.dims == 2 and self.positives():
            # Rare findings: without this most 2D batches hold no positive pixel and the head learns "empty".
            pos = self.positives()
            idx = [pos[int(rng.integers(len(pos)))] if rng.random() < self.positive_oversample else i for i in idx]
        items = [self._item2d(i) if self.dims == 2 else self._crop3d(i, rng) for i in idx]
        rows = [self.cache.cases[i].row for i in idx]
        return torch.stack([a for a, _ in items]), torch.stack([b for _, b in items]), rows


def bbox_map(mask: np.ndarray, rng: np.random.Generator | None = None, jitter: float = 0.0) -> np.ndarray:
    """0/1 map of the bounding box of a non-empty mask ``[*S]``, each side moved by up to ``jitter * size``.

    The jitter (MedSAM perturbs boxes by 0-20 px) teaches the model that a user's box is loose.
    """
    idx = np.nonzero(mask)
    out = np.zeros(mask.shape, dtype=np.float32)
    sl = []
    for axis, size in enumerate(mask.shape):
        lo, hi = int(idx[axis].min()), int(idx[axis].max()) + 1
        if rng is not None and jitter > 0:
            d = int(round(jitter * size))
            lo = int(np.clip(lo + rng.integers(-d, d + 1), 0, size - 1))
            hi = int(np.clip(hi + rng.integers(-d, d + 1), lo + 1, size))
        sl.append(slice(lo, hi))
    out[tuple(sl)] = 1
    return out


def prompt_batch(model: SegModel, target: torch.Tensor, rng: np.random.Generator, jitter: float,
                 class_emb: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(prompt, one-channel target) for a prompted model; a pure function of the step's RNG.

    Box: a present class per image, its jittered bounding box (an image without any structure gets a
    random box and an empty target: "nothing of interest in here"). Text: a present class half the
    time, else any class; its text embedding; the target is that class's mask, possibly empty.
    """
    t = target.numpy()
    prompts, targets = [], []
    for b in range(t.shape[0]):
        present = [c for c in range(t.shape[1]) if t[b, c].any()]
        if model.prompt == "box":
            if present:
                c = int(rng.choice(present))
                prompts.append(torch.from_numpy(bbox_map(t[b, c], rng, jitter))[None])
                targets.append(torch.from_numpy(t[b, c:c + 1]))
            else:
                fake = np.zeros(t.shape[2:], bool)
                fake[tuple(slice(int(rng.integers(0, s // 2)), int(rng.integers(s // 2 + 1, s + 1)))
                           for s in fake.shape)] = True
                prompts.append(torch.from_numpy(fake.astype(np.float32))[None])
                targets.append(torch.zeros((1, *t.shape[2:]), dtype=torch.bool))
        else:
            assert class_emb is not None
            # Half the time a class that is present (findings are rare: uniform picks would be mostly empty
            # targets and the decoder learns to answer "nothing"), else any class (it must also say "absent").
            c = int(rng.choice(present)) if present and rng.random() < 0.5 else int(rng.integers(t.shape[1]))
            prompts.append(class_emb[c].cpu())
            targets.append(torch.from_numpy(t[b, c:c + 1]))
    return torch.stack(prompts), torch.stack(targets)


def _lr_factor(step: int, cfg: SegOptimSection) -> float:
    from medvl.train.schedule import lr_at

    return lr_at(step, 1.0, cfg.warmup_steps, cfg.max_steps)


def _param_groups(model: SegModel, cfg: SegTrainConfig) -> list[dict[str, Any]]:
    enc = [p for p in model.backbone.parameters() if p.requires_grad]
    head = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("backbone.")]
    pretrained = cfg.model.encoder not in ("clip-tiny", "clip3d-tiny", "clip-small", "siglip-tiny") \
        and not (cfg.model.encoder.startswith("timm:") and "@" not in cfg.model.encoder)
    enc_lr = cfg.optim.encoder_lr if cfg.optim.encoder_lr is not None else \
        (cfg.optim.lr / 10 if pretrained else cfg.optim.lr)
    groups = [{"params": head, "lr": cfg.optim.lr, "base_lr": cfg.optim.lr}]
    if enc:
        groups.append({"params": enc, "lr": enc_lr, "base_lr": enc_lr})
    return groups


def build_model_for(cfg: SegTrainConfig, classes: list[str], task: str, dims: int) -> SegModel:
    model = build_seg_model(cfg.model.encoder, classes, task, head=cfg.model.head, freeze=cfg.model.freeze,
                            unlocked_layers=cfg.model.unlocked_layers, width=cfg.model.width,
                            in_chans=cfg.model.in_chans, prompt=cfg.model.prompt,
                            image_size=cfg.data.image_size if cfg.model.encoder.startswith("timm:") else None)
    if model.dims != dims:
        raise ConfigError(f"model.encoder {cfg.model.encoder!r} is a {model.dims}D tower but the data "
                          f"({cfg.data.manifest}) is {dims}D; use clip3d-tiny (or a 3D checkpoint) for volumes")
    model.cfg["image_size"] = int(cfg.data.image_size)
    model.cfg["patch_size"] = [int(p) for p in cfg.data.patch_size]
    model.cfg["mask_column"] = cfg.data.mask_column
    if cfg.model.init:
        from medvl.segment.model import load_seg_model

        init = load_seg_model(cfg.model.init)
        try:
            model.load_state_dict(init.state_dict())
        except RuntimeError as exc:
            raise CheckpointError(f"model.init {cfg.model.init}: does not fit this model: {str(exc)[:200]}") from exc
    return model


def training_cases(cfg: SegTrainConfig) -> tuple[Any, Any, list[SegCase]]:
    manifest = open_dataset(cfg.data.manifest)
    layout = seg_layout(manifest, cfg.data.classes, cfg.data.mask_column)
    cases = seg_cases(manifest, cfg.data.train_split, layout)
    cases = label_fraction_subset(cases, cfg.data.label_fraction, cfg.seed)
    return manifest, layout, cases


def train_segmentation(cfg: SegTrainConfig, resume: bool = False) -> SegTrainResult:
    """Train (or resume) a segmentation run into ``cfg.out_dir``; see the module doc for guarantees."""
    from medvl.segment.model import load_seg_model, save_seg_model
    from medvl.train.checkpoint import latest_checkpoint, load_train_state, remove_partial, save_checkpoint
    from medvl.train.rng import capture_rng_state, restore_rng_state, seed_everything

    t0 = time.perf_counter()
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)
    manifest, layout, cases = training_cases(cfg)
    dims = 3 if is_volume_path(cases[0].image) else 2
    device = torch.device(cfg.device)
    model = build_model_for(cfg, layout.classes, layout.task, dims).to(device)
    optimizer = torch.optim.AdamW(_param_groups(model, cfg), weight_decay=cfg.optim.weight_decay)
    start = 0
    last: Path | None = None
    if resume:
        remove_partial(out)
        last = latest_checkpoint(out)
        if last is not None:
            state = load_train_state(last)
            loaded = load_seg_model(last, device=device)
            model.load_state_dict(loaded.state_dict())
            optimizer.load_state_dict(state["optimizer"])
            restore_rng_state(state["rng"])
            start = int(state["step"])
    config_dict = to_dict(cfg)
    (out / "config.yaml").write_text(_yaml(config_dict))
    cache = CaseCache(manifest, cases, layout)
    maker = BatchMaker(cache, dims, cfg.data.image_size, cfg.data.patch_size, cfg.data.foreground_oversample,
                       cfg.optim.batch_size, cfg.seed, cfg.data.positive_oversample)
    log_path = out / "log.jsonl"
    if start == 0 and log_path.exists():
        log_path.unlink()
    losses: list[float] = []

    def checkpoint(step: int) -> Path:
        state = {"step": step, "optimizer": optimizer.state_dict(), "rng": capture_rng_state()}
        return save_checkpoint(out, step, lambda d: save_seg_model(model, d, {"layout": {
            "classes": layout.classes, "task": layout.task, "values": layout.values}}),
            state, config_dict, keep_last=cfg.keep_last)

    class_emb = model.embed_text(layout.classes) if model.prompt == "text" else None
    model.train()
    for step in range(start, cfg.optim.max_steps):
        images, target, rows = maker(step)
        prompt = None
        if model.prompt != "none":
            prompt, target = prompt_batch(model, target, np.random.default_rng([cfg.seed, step, 1]),
                                          cfg.data.box_jitter, class_emb)
            prompt = prompt.to(device)
        images, target = images.to(device), target.to(device)
        factor = _lr_factor(step, cfg.optim)
        for g in optimizer.param_groups:
            g["lr"] = g["base_lr"] * factor
        logits = model(images, prompt) if prompt is not None else model(images)
        task = "multilabel" if model.prompt != "none" else layout.task
        parts = dice_ce_loss(logits, target, task, cfg.loss.dice, cfg.loss.ce)
        loss = parts["loss"]
        value = float(loss.detach())
        if not math.isfinite(value):
            raise _diverged("the loss", value, step + 1, rows, last)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for g in optimizer.param_groups for p in g["params"]]
        max_norm = cfg.optim.clip_grad_norm if cfg.optim.clip_grad_norm is not None else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        if not math.isfinite(grad_norm):
            raise _diverged("the gradient norm", grad_norm, step + 1, rows, last)
        optimizer.step()
        losses.append(value)
        done = step + 1
        if done % cfg.log_every == 0 or done == cfg.optim.max_steps:
            with log_path.open("a") as f:
                f.write(json.dumps({"step": done, "loss": value, "dice_loss": float(parts["dice"]),
                                    "ce": float(parts["ce"]), "lr": optimizer.param_groups[0]["lr"],
                                    "seconds": round(time.perf_counter() - t0, 3)}) + "\n")
        if done % cfg.checkpoint_every == 0 or done == cfg.optim.max_steps:
            last = checkpoint(done)
    if last is None and start >= cfg.optim.max_steps:
        last = latest_checkpoint(out)
    return SegTrainResult(out, last, max(start, cfg.optim.max_steps), losses, time.perf_counter() - t0, len(cases))


def _yaml(data: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False)


def _diverged(what: str, value: float, step: int, rows: list[int], last: Path | None) -> TrainingDivergedError:
    where = f"last good checkpoint: {last} (resume from it with a lower optim.lr)" if last \
        else "no checkpoint was written before this step"
    return TrainingDivergedError(f"segmentation training diverged at step {step}: {what} is {value} "
                                 f"(manifest rows {', '.join(map(str, rows))}); {where}")
