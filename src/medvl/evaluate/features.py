"""Frozen image features of an :class:`~medvl.models.encoder.Encoder` over one manifest split, cached.

Why a cache: a linear probe sweeps C values, training fractions and seeds, and kNN sweeps k;
all of them reuse the same frozen features, and encoding is by far the slowest step. Features
are stored as ``<cache_dir>/<key>.npz`` where ``key`` hashes everything that changes them: the
encoder (its name plus a hash of every weight and buffer), the manifest (bytes of the manifest
and of its card), the split and the preprocessing (size, channels, mean, std). Editing any of
these gives a new key, so a stale cache is never read; writes are atomic.

Sample ids (used to pair two models' predictions later) are the manifest's image path(s),
falling back to ``row<N>`` when a split has duplicated paths.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medvl.data.manifest import Manifest, Sample, load_eval_manifest, load_manifest
from medvl.errors import ManifestError

log = logging.getLogger(__name__)
FORMAT_VERSION = 1


@dataclass
class Features:
    """Per-sample image embeddings of one split plus what evaluators need beside them."""

    x: np.ndarray  # [N, D] float32 (L2-normalised unless extracted with normalize=False)
    labels: np.ndarray  # [N, K] float32, 1/0/-1 and NaN unknown (manifest.label_matrix)
    ids: np.ndarray  # [N] str
    rows: np.ndarray  # [N] int, 1-based manifest rows
    patient_ids: np.ndarray  # [N] str ("" when absent)
    texts: list[str] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.x.shape[0])

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp.npz")
        np.savez(tmp, x=self.x, labels=self.labels, ids=self.ids.astype(str), rows=self.rows,
                 patient_ids=self.patient_ids.astype(str), texts=np.array(self.texts, dtype=str),
                 classes=np.array(self.classes, dtype=str), meta=np.array(json.dumps(self.meta)))
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> Features:
        with np.load(path, allow_pickle=False) as z:
            return cls(x=z["x"], labels=z["labels"], ids=z["ids"], rows=z["rows"], patient_ids=z["patient_ids"],
                       texts=z["texts"].tolist(), classes=z["classes"].tolist(), meta=json.loads(str(z["meta"])))


def sample_ids(samples: list[Sample]) -> np.ndarray:
    """Stable ids: the image path(s) as written in the manifest; ``row<N>`` if paths repeat."""
    ids = ["|".join(s.image) for s in samples]
    if len(set(ids)) != len(ids):
        ids = [f"row{s.row}" for s in samples]
    return np.array(ids, dtype=str)


def _modules(encoder: Any) -> list[torch.nn.Module]:
    if isinstance(encoder, torch.nn.Module):
        return [encoder]
    return [v for v in vars(encoder).values() if isinstance(v, torch.nn.Module)]


def encoder_fingerprint(encoder: Any) -> str:
    """Name + hash of all weights/buffers: two loads of the same checkpoint share it, a retrain does not."""
    h = hashlib.sha256(str(getattr(encoder, "name", type(encoder).__name__)).encode())
    mods = _modules(encoder)
    if not mods:  # an encoder without torch modules (test doubles): identity by object
        h.update(f"{type(encoder).__qualname__}:{id(encoder)}".encode())
    for m in mods:
        for k, t in m.state_dict().items():
            h.update(k.encode())
            h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
                     if t.numel() else b"")
    return h.hexdigest()[:20]


def manifest_fingerprint(manifest: Manifest) -> str:
    """Hash of the manifest file and its card (the card fixes class names and their order)."""
    h = hashlib.sha256()
    h.update(manifest.path.read_bytes() if manifest.path.is_file() else str(manifest.path).encode())
    card = manifest.path.parent / "card.yaml"
    if card.is_file():
        h.update(card.read_bytes())
    h.update(json.dumps(manifest.classes).encode())
    return h.hexdigest()[:20]


def preprocessing_of(encoder: Any) -> dict[str, Any]:
    """What the dataset must do before ``encode_image`` (size, channels, mean, std, and ``volume``: the
    checkpoint's volume policy as a dict, present only when the encoder has one)."""
    in_chans = int(getattr(encoder, "in_chans", 1))
    channels = in_chans if in_chans in (1, 3) else 1
    mean = list(getattr(encoder, "mean", (0.0,) * channels))
    std = list(getattr(encoder, "std", (1.0,) * channels))
    if len(mean) != channels:  # encoder adapts channels itself; normalise with averaged statistics
        mean, std = [float(np.mean(mean))] * channels, [float(np.mean(std))] * channels
    pre = {"image_size": int(getattr(encoder, "image_size", 64)), "channels": channels,
           "mean": [float(v) for v in mean], "std": [float(v) for v in std]}
    policy = getattr(encoder, "volume_policy", None)
    if policy is not None:  # only then: feature cache keys of encoders without a policy stay as they were
        from medvl.data.volume_preprocess import policy_dict

        pre["volume"] = policy_dict(policy)
    return pre


def cache_key(encoder: Any, manifest: Manifest, split: str, preprocess: dict[str, Any],
              normalize: bool = True) -> str:
    blob = json.dumps({"v": FORMAT_VERSION, "encoder": encoder_fingerprint(encoder),
                       "manifest": manifest_fingerprint(manifest), "split": split, "pre": preprocess,
                       "normalize": normalize}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def split_samples(manifest: Manifest, split: str) -> list[Sample]:
    samples = [s for s in manifest.samples if s.split == split]
    if not samples:
        raise ManifestError(f"{manifest.path}: no rows in split {split!r}; splits present: "
                            f"{', '.join(manifest.splits) or '(none)'}")
    return samples


def loader_workers(num_workers: int | None = None) -> int:
    """DataLoader workers for encoding: ``None`` -> one per spare core (at most 8), else as given.

    Decoding and resizing images is the bottleneck of feature extraction next to a small
    encoder; workers do it while the main process encodes the previous batch.
    ``MEDVL_LOADER_WORKERS`` overrides the automatic choice (e.g. 0 on a crowded machine).
    """
    if num_workers is not None:
        return max(0, int(num_workers))
    env = os.environ.get("MEDVL_LOADER_WORKERS")
    if env not in (None, ""):
        return max(0, int(env))
    return min(8, max(0, (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                          else (os.cpu_count() or 1)) - 1))


def on_cuda(encoder: Any) -> bool:
    """True when the encoder runs on a GPU (then batches are prepared in pinned memory)."""
    device = getattr(encoder, "device", None)
    return torch.device(device).type == "cuda" if device is not None else False


def extract_features(encoder: Any, manifest: Manifest | str | Path, split: str = "test", batch_size: int = 128,
                     cache_dir: str | Path | None = None, num_workers: int | None = None, normalize: bool = True,
                     refresh: bool = False) -> Features:
    """Encode every image of ``split`` once (or read the cached result).

    Images go through :class:`~medvl.data.dataset.ManifestDataset` with the encoder's own
    preprocessing and no augmentation; unreadable images raise (a benchmark must not silently
    lose test samples). ``num_workers=None`` decodes in :func:`loader_workers` processes, with
    pinned host memory when the encoder is on CUDA; the features do not depend on either.
    """
    from medvl.data.dataset import ManifestDataset, collate_samples

    manifest = manifest if isinstance(manifest, Manifest) else load_manifest(manifest)
    pre = preprocessing_of(encoder)
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"{cache_key(encoder, manifest, split, pre, normalize)}.npz"
        if path.is_file() and not refresh:
            try:
                feats = Features.load(path)
                log.info("features: cache hit %s", path)
                return feats
            except Exception as exc:  # a truncated file from a killed run: recompute
                log.warning("features: ignoring unreadable cache %s (%s)", path, exc)
    samples = split_samples(manifest, split)
    ds = ManifestDataset(manifest, split=split, image_size=pre["image_size"], channels=pre["channels"],
                         augment=False, mean=pre["mean"], std=pre["std"], volume_policy=pre.get("volume"))
    # One batch or less: worker start-up would cost more than it saves, unless asked for.
    workers = loader_workers(num_workers) if num_workers is not None or len(ds) > batch_size else 0
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers,
                                         collate_fn=collate_samples, pin_memory=on_cuda(encoder),
                                         prefetch_factor=2 if workers else None)
    t0 = time.perf_counter()
    xs, rows = [], []
    for batch in loader:
        xs.append(encoder.encode_image(batch["image"], batch_size=batch_size, normalize=normalize).float().numpy())
        rows.extend(int(r) for r in batch["row"])
    by_row = {s.row: i for i, s in enumerate(samples)}
    order = [by_row[r] for r in rows]
    ordered = [samples[i] for i in order]
    labels = manifest.subset(ordered).label_matrix()
    feats = Features(
        x=np.concatenate(xs).astype(np.float32), labels=labels, ids=sample_ids(ordered),
        rows=np.array([s.row for s in ordered], dtype=np.int64),
        patient_ids=np.array([s.patient_id for s in ordered], dtype=str),
        texts=[s.text for s in ordered], classes=list(manifest.classes),
        meta={"encoder": str(getattr(encoder, "name", "")), "split": split, "preprocess": pre,
              "manifest": str(manifest.path), "seconds": round(time.perf_counter() - t0, 3)},
    )
    log.info("features: encoded %d images of split %s in %.1fs", feats.n, split, feats.meta["seconds"])
    if path is not None:
        feats.save(path)
    return feats


def default_cache_dir() -> Path:
    """``$MEDVL_CACHE_DIR/features``, else ``~/.cache/medvl/features``."""
    root = os.environ.get("MEDVL_CACHE_DIR")
    return (Path(root) if root else Path.home() / ".cache" / "medvl") / "features"


def task_of(manifest_or_card: Any, classes: list[str]) -> str:
    """The label task from the dataset card; without a card, multilabel (the safe reading)."""
    card = getattr(manifest_or_card, "card", manifest_or_card)
    task = getattr(card, "task", None)
    if task:
        return str(task)
    log.warning("no dataset card: treating the %d classes as multilabel", len(classes))
    return "multilabel"


def classification_labels(feats: Features, task: str) -> np.ndarray:
    """Labels [N, K] checked for ``task``: binary/multiclass rows need exactly one positive class.

    A row that breaks this raises :class:`ManifestError` naming the manifest rows, rather than
    being dropped or guessed; multilabel keeps -1/NaN (ignored per class by the metrics).
    """
    y = np.asarray(feats.labels, dtype=np.float32)
    if task == "multilabel":
        return y
    if task == "binary" and y.shape[1] == 1:
        bad = np.flatnonzero(~np.isin(y[:, 0], (0.0, 1.0)))
    else:
        bad = np.flatnonzero((y == 1).sum(1) != 1)
    if bad.size:
        rows = feats.rows[bad[:10]].tolist()
        raise ManifestError(f"{task} task: {bad.size} of {feats.n} rows lack exactly one positive label "
                            f"(manifest rows {rows}{' ...' if bad.size > 10 else ''}); fix the labels or "
                            "set task: multilabel in the card")
    if task == "binary" and y.shape[1] == 1:
        return y
    return (y == 1).astype(np.float32)


@dataclass
class EvalInputs:
    """What every evaluator starts from: the encoder, the manifest and its label task."""

    encoder: Any
    manifest: Manifest
    task: str
    classes: list[str]
    dataset: str
    model_name: str
    _leakage: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)

    def leakage(self, split: str) -> dict[str, Any]:
        """Images/patients of ``split`` the model saw in pretraining (warns once when any), for the result
        JSON's ``config.leakage`` (see :mod:`medvl.data.leakage`)."""
        if split not in self._leakage:
            from medvl.data.leakage import model_leakage

            self._leakage[split] = model_leakage(self.model_name, self.manifest, split)
        return self._leakage[split]


def record_leakage(results: Any, leakage: dict[str, Any] | None) -> Any:
    """Write ``leakage`` into every record's config (and each run's prediction meta); returns ``results``.

    Why in the result: a score is only comparable with others when the reader can see whether the
    evaluated images were part of the model's pretraining data.
    """
    if leakage is None:
        return results
    runs = [results] if hasattr(results, "records") else list(results)
    for run in runs:
        for rec in run.records:
            rec.config["leakage"] = dict(leakage)
        if getattr(run, "predictions", None) is not None:
            run.predictions.meta["leakage"] = dict(leakage)
    return results


def load_eval_inputs(model: str, data: str | Path, device: str = "cpu",
                     encoder_kwargs: dict[str, Any] | None = None) -> EvalInputs:
    """Resolve ``--model`` and ``--data`` once, the same way for every evaluation command.

    ``device="auto"`` loads the encoder on the GPU when one is present.

    The manifest is refused (one line naming file and row) when a label is not in the card or a
    patient spans two splits, before any model is loaded: both would give a wrong score silently.
    """
    from medvl.models.encoder import load_encoder

    manifest = load_eval_manifest(data)
    if manifest.card is None:
        raise ManifestError(f"{manifest.path}: no card.yaml beside the manifest; evaluation needs the card's "
                            "task and classes (see `medvl data medmnist` for an example card)")
    if device == "auto":  # the GPU when present
        device = "cuda" if torch.cuda.is_available() else "cpu"
    encoder = load_encoder(model, device=device, **(encoder_kwargs or {}))
    classes = list(manifest.classes)
    return EvalInputs(encoder, manifest, task_of(manifest, classes), classes, manifest.card.name, str(model))


def split_features(inputs: EvalInputs, splits: list[str], cache_dir: str | Path | None, batch_size: int = 128,
                   num_workers: int | None = None) -> dict[str, Features | None]:
    """Features of each requested split; ``None`` for a split the manifest does not have."""
    present = set(inputs.manifest.splits)
    return {s: (extract_features(inputs.encoder, inputs.manifest, s, batch_size, cache_dir, num_workers)
                if s in present else None) for s in splits}
