"""Full fine-tuning of an encoder's image tower with a linear head (``medvl eval finetune``).

Every encoder (medvl checkpoint or ``timm:<name>``) goes through the same protocol: the image
tower from :func:`~medvl.models.encoder.load_encoder` plus ``nn.Linear(features, K)``, AdamW,
the encoder's own preprocessing, model selection on validation AUROC (the epoch with the best
validation AUROC is the one scored on test), seeds as an option. Protocols:

* ``default``: 30 epochs, lr 1e-3 with cosine decay, weight decay 1e-4, batch 128, early
  stopping after 8 epochs without validation improvement;
* ``medmnist``: the MedMNIST v2 paper's ResNet protocol (Yang et al. 2023): 100 epochs, lr 1e-3
  decayed x0.1 at epochs 50 and 75, batch 128, no weight decay (AdamW then equals their Adam),
  no augmentation, no early stopping (the best-validation-AUROC epoch is still the one tested);
* ``medmnist3d``: the paper's 3D recipe (MedMNIST/experiments ``MedMNIST3D/train_and_eval_pytorch.py``):
  the same schedule with batch 32. :func:`resolve_protocol` picks it for ``medmnist`` when the
  manifest holds volumes. ``shape_transform=True`` is that script's ``--shape_transform`` (voxels
  times U(0, 1) per training sample, times 0.5 at evaluation), meant for [0, 1] inputs (mean 0,
  std 1, the ``resnet3d:`` default). Note: the paper's script keeps a reference to the *live*
  model as "best", so it effectively tests the last epoch; medvl tests the best-validation epoch.

``amp=True`` runs forward passes under bf16 autocast on CUDA (ignored on CPU). Each epoch's wall
time is in the history (``seconds``) and logged, so a user can plan a full run.

``torch_init=True`` re-initialises every layer of the backbone with PyTorch's default
initialisation (``reset_parameters``), which is what the MedMNIST paper's own ResNet gets; timm's
ResNet init differs (Kaiming fan-out convs, zero-initialised last BatchNorm of each block). It
discards pretrained weights, so it is only for from-scratch baselines. ``normalise=(mean, std)``
replaces the encoder's input statistics for every channel (the paper uses 0.5, 0.5).

``small_stem=True`` swaps a ResNet's 7x7/2 stem and max-pool for a 3x3/1 conv (the CIFAR-style
stem of the ResNet-18 (28) the MedMNIST paper trains at 28 px); without it a stock ResNet reduces
a 28-px image to 1x1 before its last stage.

Losses: cross-entropy (binary with two classes, multiclass), BCE with logits (single-class
binary; multilabel, unknown labels masked). The trained weights are not saved (this is an
evaluator); the per-epoch history is stored in the result's config.
"""

from __future__ import annotations

import copy
import logging
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medvl.data.manifest import Manifest
from medvl.errors import ConfigError, MedvlError

log = logging.getLogger(__name__)


@dataclass
class FinetuneConfig:
    """Hyper-parameters of one fine-tuning protocol (identical for every encoder)."""

    epochs: int = 30
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 128
    schedule: str = "cosine"  # cosine | step | constant
    milestones: tuple[int, ...] = ()  # epochs where the step schedule multiplies the lr by gamma
    gamma: float = 0.1
    patience: int | None = 8  # epochs without validation improvement before stopping; None = never
    select_metric: str = "auroc"
    augment: bool = False
    small_stem: bool = False
    torch_init: bool = False  # reset every backbone layer to PyTorch's default init (from-scratch baselines)
    normalise: tuple[float, float] | None = None  # (mean, std) for every channel instead of the encoder's own
    eval_every: int = 1
    shape_transform: bool = False  # MedMNIST 3D shape datasets: train x U(0,1) per sample, evaluate x 0.5
    amp: bool = False  # bf16 autocast on CUDA


PROTOCOLS: dict[str, FinetuneConfig] = {
    "default": FinetuneConfig(),
    "medmnist": FinetuneConfig(epochs=100, lr=1e-3, weight_decay=0.0, batch_size=128, schedule="step",
                               milestones=(50, 75), gamma=0.1, patience=None),
    "medmnist3d": FinetuneConfig(epochs=100, lr=1e-3, weight_decay=0.0, batch_size=32, schedule="step",
                                 milestones=(50, 75), gamma=0.1, patience=None),
}


def manifest_is_volumetric(manifest: Manifest) -> bool:
    """True when the manifest's card says 3D (MedMNIST 3D) or its first image reads as a volume."""
    extra = manifest.card.extra if manifest.card else {}
    flag = (extra.get("medmnist") or {}).get("is_3d") if isinstance(extra.get("medmnist"), dict) else None
    if flag is None:
        flag = extra.get("is_3d")
    if flag is not None:
        return bool(flag)
    first = next((s for s in manifest.samples if s.image), None)
    if first is None:
        return False
    from medvl.data.cache import decode_uint8

    return decode_uint8(manifest.resolve(first.image[0]))[1] == 3


def resolve_protocol(name: str, manifest: Manifest) -> str:
    """``medmnist`` on volumes means the paper's 3D recipe (``medmnist3d``, batch 32); others unchanged."""
    return "medmnist3d" if name == "medmnist" and manifest_is_volumetric(manifest) else name


def protocol_config(name: str, **overrides: Any) -> FinetuneConfig:
    """A named protocol with explicit overrides (``None`` values are ignored).

    Overriding ``epochs`` of the step protocol scales its milestones (50/75 of 100 -> 50%/75%).
    """
    if name not in PROTOCOLS:
        raise ConfigError(f"unknown fine-tuning protocol {name!r}; choose from {', '.join(PROTOCOLS)}")
    base = PROTOCOLS[name]
    given = {k: v for k, v in overrides.items() if v is not None}
    unknown = sorted(set(given) - set(asdict(base)))
    if unknown:
        raise ConfigError(f"unknown fine-tuning option(s) {unknown}; valid: {', '.join(asdict(base))}")
    cfg = replace(base, **given)
    if "epochs" in given and "milestones" not in given and base.milestones:
        cfg = replace(cfg, milestones=tuple(max(1, round(m * cfg.epochs / base.epochs)) for m in base.milestones))
    if cfg.epochs < 1:
        raise ConfigError(f"epochs must be >= 1, got {cfg.epochs}")
    if cfg.normalise is not None:
        try:
            mean, std = (float(v) for v in cfg.normalise)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"normalise must be two numbers (mean, std), got {cfg.normalise!r}") from exc
        if not std > 0:
            raise ConfigError(f"normalise: std must be > 0, got {std}")
        cfg = replace(cfg, normalise=(mean, std))
    return cfg


# ---------------------------------------------------------------------- model
def image_backbone(encoder: Any) -> nn.Module:
    """The trainable image module of any :class:`~medvl.models.encoder.Encoder`: ``encoder.image_model()``.

    Why only through the interface: each adapter knows what its image path is (a timm tower, a
    CLIP model's projected branch, an ``hf:`` ViT/DINOv2 with its pooling, an ``openclip:`` model
    *with its own preprocessing in front*). Reaching into attributes instead skipped the adapters'
    normalisation and refused ``hf:`` models outright.
    """
    make = getattr(encoder, "image_model", None)
    if not callable(make):
        raise MedvlError(f"encoder {getattr(encoder, 'name', encoder)!r} has no image_model(); fine-tuning "
                         "needs the Encoder interface's trainable image module")
    module = make()
    if not isinstance(module, nn.Module):
        raise MedvlError(f"encoder {getattr(encoder, 'name', encoder)!r}: image_model() returned "
                         f"{type(module).__name__}, not a torch nn.Module")
    return module


def use_small_stem(backbone: nn.Module) -> None:
    """Replace a ResNet's 7x7/2 conv + max-pool by a 3x3/1 conv (the 28-px MedMNIST ResNet stem)."""
    if getattr(backbone, "stem", None) == "small":  # volume towers (resnet3d:) are built with it already
        return
    for m in backbone.modules():
        conv, pool = getattr(m, "conv1", None), getattr(m, "maxpool", None)
        if isinstance(conv, nn.Conv2d) and pool is not None:
            m.conv1 = nn.Conv2d(conv.in_channels, conv.out_channels, 3, 1, 1, bias=False)
            m.maxpool = nn.Identity()
            for owner in backbone.modules():  # towers that upsample inputs below their total stride
                if hasattr(owner, "min_size"):
                    owner.min_size = 1
            return
    raise ConfigError("small_stem applies to ResNet-style backbones (conv1 + maxpool); this encoder has none")


def reset_to_torch_init(backbone: nn.Module) -> int:
    """Re-initialise every layer that has ``reset_parameters`` with PyTorch's defaults; returns how many.

    Why: a from-scratch baseline reproduced from a paper should start where the paper's model did;
    timm's own init schemes (e.g. zero-initialised residual branches) change early training.
    """
    n = 0
    for m in backbone.modules():
        reset = getattr(m, "reset_parameters", None)
        if callable(reset) and m is not backbone:
            reset()
            n += 1
    if n == 0:
        raise ConfigError("torch_init: the backbone has no layers with reset_parameters")
    return n


class Classifier(nn.Module):
    """Backbone features -> linear head."""

    def __init__(self, backbone: nn.Module, in_features: int, n_out: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(in_features, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


# ---------------------------------------------------------------------- data
@dataclass
class SplitTensors:
    """A whole split in memory (MedMNIST-sized data; avoids re-decoding every epoch)."""

    x: torch.Tensor
    labels: np.ndarray  # [N, K] 1/0/-1/NaN
    ids: np.ndarray
    rows: np.ndarray
    patient_ids: np.ndarray


def load_split(manifest: Manifest, split: str, pre: dict[str, Any], batch_size: int = 256) -> SplitTensors:
    """Decode and preprocess a split once (no augmentation) into one tensor."""
    from medvl.data.dataset import ManifestDataset, collate_samples
    from medvl.evaluate.features import sample_ids, split_samples

    samples = split_samples(manifest, split)
    ds = ManifestDataset(manifest, split=split, image_size=pre["image_size"], channels=pre["channels"],
                         augment=False, mean=pre["mean"], std=pre["std"], volume_policy=pre.get("volume"))
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False, collate_fn=collate_samples)
    xs, rows = [], []
    for b in loader:
        xs.append(b["image"])
        rows.extend(int(r) for r in b["row"])
    pos = {s.row: s for s in samples}
    ordered = [pos[r] for r in rows]
    return SplitTensors(torch.cat(xs), manifest.subset(ordered).label_matrix(), sample_ids(ordered),
                        np.array(rows, dtype=np.int64), np.array([s.patient_id for s in ordered], dtype=str))


def _loss_fn(task: str, n_out: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if task == "multilabel" or n_out == 1:
        def bce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            mask = ((y == 0) | (y == 1)).float()
            per = F.binary_cross_entropy_with_logits(logits, torch.where(mask > 0, y, torch.zeros_like(y)),
                                                     reduction="none")
            return (per * mask).sum() / mask.sum().clamp_min(1)
        return bce

    def ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, y.argmax(1))
    return ce


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, task: str, device: torch.device, batch_size: int = 256) -> np.ndarray:
    """Probabilities [N, K] (softmax for single-label heads, sigmoid otherwise)."""
    model.eval()
    outs = []
    for i in range(0, x.shape[0], batch_size):
        z = model(x[i:i + batch_size].to(device)).float()
        outs.append((torch.sigmoid(z) if task == "multilabel" or z.shape[1] == 1 else torch.softmax(z, 1)).cpu())
    return torch.cat(outs).numpy()


def _lr_at(cfg: FinetuneConfig, epoch: int) -> float:
    """Learning rate for 0-based ``epoch``."""
    if cfg.schedule == "cosine":
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * epoch / cfg.epochs))
    if cfg.schedule == "step":
        return cfg.lr * cfg.gamma ** sum(epoch >= m for m in cfg.milestones)
    if cfg.schedule == "constant":
        return cfg.lr
    raise ConfigError(f"unknown schedule {cfg.schedule!r}; choose cosine, step or constant")


@dataclass
class FinetuneRun:
    """One seed: test probabilities of the best-validation epoch and the training history."""

    seed: int
    scores: np.ndarray
    best_epoch: int
    best_val: float
    epochs_run: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)


def train_one(make_encoder: Callable[[], Any], train: SplitTensors, val: SplitTensors, test: SplitTensors,
              task: str, classes: Sequence[str], cfg: FinetuneConfig, seed: int,
              device: str | torch.device = "cpu", augment_fn: Callable[[torch.Tensor, torch.Generator],
                                                                    torch.Tensor] | None = None) -> FinetuneRun:
    """Fine-tune one freshly built encoder with ``seed`` (initialisation, batch order, head)."""
    from medvl.evaluate.features import classification_labels
    from medvl.evaluate.metrics import compute_metrics, oriented

    dev = torch.device(device)
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))
    encoder = make_encoder()
    backbone = image_backbone(encoder)
    if cfg.small_stem:
        use_small_stem(backbone)
    if cfg.torch_init:
        reset_to_torch_init(backbone)
    backbone = backbone.to(dev).train()
    amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=bool(cfg.amp and dev.type == "cuda"))
    with torch.no_grad():
        was = backbone.training
        backbone.eval()
        feat_dim = int(backbone(train.x[:2].to(dev)).shape[-1])
        backbone.train(was)
    y_train = classification_labels(_as_feats(train), task)
    y_val = classification_labels(_as_feats(val), task)
    n_out = y_train.shape[1]
    model = Classifier(backbone, feat_dim, n_out).to(dev)
    loss_fn = _loss_fn(task, n_out)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(seed)
    yt = torch.as_tensor(np.nan_to_num(y_train, nan=-1.0), dtype=torch.float32)
    best_val, best_epoch, best_state, stale = -math.inf, -1, None, 0
    history: list[dict[str, float]] = []
    t0 = time.perf_counter()
    epoch = 0
    for epoch in range(cfg.epochs):
        t_epoch = time.perf_counter()
        lr = _lr_at(cfg, epoch)
        for g in opt.param_groups:
            g["lr"] = lr
        model.train()
        perm = torch.randperm(train.x.shape[0], generator=gen)
        total, seen = 0.0, 0
        for i in range(0, len(perm), cfg.batch_size):
            idx = perm[i:i + cfg.batch_size]
            if idx.numel() < 2 and len(perm) > 1:
                continue  # BatchNorm cannot train on a batch of one
            xb = train.x[idx]
            if augment_fn is not None:
                xb = augment_fn(xb, gen)
            if cfg.shape_transform:
                xb = xb * torch.rand(xb.shape[0], *([1] * (xb.ndim - 1)), generator=gen)
            with amp:
                logits = model(xb.to(dev))
            loss = loss_fn(logits.float(), yt[idx].to(dev))
            if not torch.isfinite(loss):
                from medvl.errors import TrainingDivergedError

                raise TrainingDivergedError(f"fine-tuning diverged (loss {loss.item()}) at epoch {epoch + 1}, "
                                            f"batch {i // cfg.batch_size + 1}, seed {seed}; lower --lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * idx.numel()
            seen += idx.numel()
        entry = {"epoch": epoch + 1, "lr": lr, "train_loss": total / max(seen, 1)}
        if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
            with amp:
                val_scores = predict(model, val.x, task, dev)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                v = compute_metrics(val_scores, y_val, task, [cfg.select_metric], classes,
                                    warn=False)[cfg.select_metric].value
            v = oriented(cfg.select_metric, v)
            entry[f"val_{cfg.select_metric}"] = float(v)
            if not np.isnan(v) and v > best_val:
                best_val, best_epoch, stale = float(v), epoch + 1, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                stale += 1
        entry["seconds"] = round(time.perf_counter() - t_epoch, 2)
        history.append(entry)
        log.info("finetune seed %d epoch %d/%d loss %.4f %s %.1fs/epoch", seed, epoch + 1, cfg.epochs,
                 entry["train_loss"], {k: round(v, 4) for k, v in entry.items() if k.startswith("val_")},
                 entry["seconds"])
        if cfg.patience is not None and stale >= cfg.patience:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    with amp:
        scores = predict(model, test.x, task, dev)
    return FinetuneRun(seed, scores, best_epoch, best_val, epoch + 1, time.perf_counter() - t0, history)


def _as_feats(s: SplitTensors) -> Any:
    from medvl.evaluate.features import Features

    return Features(x=np.zeros((len(s.ids), 0), np.float32), labels=s.labels, ids=s.ids, rows=s.rows,
                    patient_ids=s.patient_ids)


def finetune(encoder_spec: str | Callable[[], Any], manifest: Manifest, cfg: FinetuneConfig,
             seeds: Sequence[int] = (0,), device: str = "cpu", model_name: str | None = None,
             split: str = "test", n_boot: int = 1000, encoder_kwargs: dict[str, Any] | None = None) -> list[Any]:
    """Fine-tune once per seed; one :class:`~medvl.evaluate.results.EvalResult` per seed."""
    from medvl.evaluate.features import classification_labels, preprocessing_of, task_of
    from medvl.evaluate.results import Predictions, make_result
    from medvl.models.encoder import load_encoder

    if callable(encoder_spec):
        make_encoder = encoder_spec
        name = model_name or getattr(encoder_spec, "__name__", "encoder")
    else:
        spec = str(encoder_spec)

        def make_encoder() -> Any:
            return load_encoder(spec, device="cpu", **(encoder_kwargs or {}))
        name = model_name or spec
    classes = list(manifest.classes)
    task = task_of(manifest, classes)
    probe = make_encoder()
    pre = preprocessing_of(probe)
    if cfg.normalise is not None and getattr(probe, "normalises_inside", False):
        raise ConfigError(f"normalise: {name} applies its own input statistics inside the model; "
                          "fixed statistics would normalise twice (use it for timm: encoders)")
    del probe
    if cfg.normalise is not None:  # validated by protocol_config
        mean, std = cfg.normalise
        pre = {**pre, "mean": [mean] * len(pre["mean"]), "std": [std] * len(pre["std"])}
    train = load_split(manifest, "train", pre)
    val = load_split(manifest, "val", pre)
    test = load_split(manifest, split, pre)
    if cfg.shape_transform:  # MedMNIST 3D: evaluation volumes x 0.5 (training ones x U(0, 1) in train_one)
        val, test = replace(val, x=val.x * 0.5), replace(test, x=test.x * 0.5)
    augment_fn = _augmenter() if cfg.augment else None
    y_test = classification_labels(_as_feats(test), task)
    dataset = manifest.card.name if manifest.card else manifest.path.parent.name
    results = []
    for seed in seeds:
        run = train_one(make_encoder, train, val, test, task, classes, cfg, seed, device, augment_fn)
        log.info("finetune seed %d: best val %s %.4f at epoch %d/%d (%.0fs)", seed, cfg.select_metric,
                 run.best_val, run.best_epoch, run.epochs_run, run.seconds)
        preds = Predictions(ids=test.ids, scores=run.scores, labels=y_test, label_task=task, classes=classes,
                            patient_ids=test.patient_ids, rows=test.rows)
        config = {**asdict(cfg), "seed": seed, "best_epoch": run.best_epoch, "best_val": run.best_val,
                  "epochs_run": run.epochs_run, "seconds": round(run.seconds, 1), "preprocess": pre,
                  "seconds_per_epoch": round(run.seconds / max(run.epochs_run, 1), 2),
                  "encoder_kwargs": encoder_kwargs or {}, "history": run.history}
        results.append(make_result(preds, name, "finetune", dataset, split, config, n_boot=n_boot, seed=seed))
    return results


def _augmenter() -> Callable[[torch.Tensor, torch.Generator], torch.Tensor]:
    """Light, laterality-preserving augmentation on normalised batches: small shifts and contrast."""
    def aug(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        b = x.shape[0]
        pad = max(1, x.shape[-1] // 16)
        xp = F.pad(x, (pad, pad, pad, pad), mode="replicate")
        dx, dy = (int(v) for v in torch.randint(0, 2 * pad + 1, (2,), generator=gen))
        x = xp[..., dy:dy + x.shape[-2], dx:dx + x.shape[-1]]
        scale = 1 + 0.1 * (torch.rand(b, *([1] * (x.ndim - 1)), generator=gen) * 2 - 1)
        return x * scale
    return aug


def summarise_seeds(results: Sequence[Any],
                    metrics: Sequence[str] = ("auroc", "accuracy")) -> dict[str, tuple[float, float]]:
    """Mean and sample standard deviation of each metric over seeds."""
    out = {}
    for m in metrics:
        vals = np.array([r.value(m) for r in results], dtype=float)
        out[m] = (float(vals.mean()), float(vals.std(ddof=1)) if len(vals) > 1 else 0.0)
    return out
