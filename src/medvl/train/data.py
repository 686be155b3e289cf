"""The training split as the loop needs it: a map-style dataset plus the indices it may draw.

This is where the trainer's data policies live (one place, testable without a model):

* ``data.empty_text``: a pair with an empty report has no positive partner for a contrastive
  loss. ``skip`` (default) leaves such pairs out of the index *before* training, so every batch
  on every rank keeps its size and the data order stays a function of (seed, epoch);
  ``error`` stops with the rows named.
* ``data.on_error``: image decode failures are handled by the dataset: ``raise``, or ``skip``,
  which substitutes the next readable sample (batches keep their size, which DDP's feature
  gather needs) and appends the row to ``out_dir/skipped_images.jsonl``; the trainer prints the
  count of distinct skipped rows at the end.
* Unknown labels (not in the card) stop training with the row, label and known labels, as
  ``medvl data check`` words it; with ``data.on_error=skip`` those rows are left out, written to
  the skip report (``"code": "unknown_label"``) and counted in ``TrainData.skipped_labels``.
* ``data.shards``: tar shards written by ``medvl data shards`` replace the manifest.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medvl.data.manifest import load_manifest
from medvl.errors import ManifestError
from medvl.train.config import DataConfig


@dataclass
class TrainData:
    dataset: Any
    indices: list[int]
    train_texts: list[str]
    collate: Callable[[list[Any]], dict[str, Any]]
    skipped_empty_text: int = 0
    skip_report: Path | None = None
    classes: list[str] = field(default_factory=list)
    task: str = "multilabel"
    card: Any | None = None  # the manifest's DatasetCard (description-enhanced objectives read it)
    skipped_labels: int = 0  # rows left out for labels the card does not know (data.on_error=skip)
    _skip_counter: Callable[[], int] = field(default=lambda: 0, repr=False)
    _record: dict[str, Any] | None = field(default=None, repr=False)

    def fingerprint(self) -> str:
        """Hash of the usable training pairs in index order: data order (and so exact resume)
        depends on exactly this list."""
        h = hashlib.sha256()
        for i, t in zip(self.indices, self.train_texts, strict=True):
            h.update(f"{i}\t{t}\0".encode("utf-8", "replace"))
        return h.hexdigest()[:16]

    def skipped_images(self) -> int:
        """Images the dataset could not read and skipped (``data.on_error=skip``)."""
        return self._skip_counter()

    def training_record(self) -> dict[str, Any] | None:
        """What this run trains on, for the pretraining-evaluation leakage check: the content hashes and
        patient ids of the rows the sampler may draw (:mod:`medvl.data.leakage`). Computed once (through
        the file-hash cache). Tar shards hold each image's file bytes, so their record hashes those (the
        first view of each row: shards index one image per row)."""
        manifest = getattr(self.dataset, "manifest", None)
        if manifest is None and self._record is None and hasattr(self.dataset, "entries") \
                and hasattr(self.dataset, "_image_bytes"):  # ShardDataset (map-style, indexed)
            from medvl.data.leakage import bytes_hash, make_record
            from medvl.train.shards import read_index

            used = [self.dataset.entries[i] for i in self.indices]
            hashes = {bytes_hash(self.dataset._image_bytes(e)) for e in used}
            source = {"path": str(read_index(self.dataset.directory).get("manifest", "")),
                      "shards": str(self.dataset.directory), "rows": len(used)}
            self._record = make_record(hashes, {str(e.get("patient_id") or "") for e in used}, [source])
            return self._record
        if manifest is None:
            return self._record
        if self._record is None:
            from medvl.data.leakage import build_train_record

            samples = [self.dataset.samples[i] for i in self.indices]
            self._record = build_train_record(manifest, samples, str(getattr(self.dataset, "split", "")))
        return self._record

    def report_label_skips(self) -> None:
        """(Re)write the unknown-label rows to the skip report: a fresh run deletes the old report
        after the dataset was built, and this puts them back (rows are never repeated)."""
        write = getattr(self.dataset, "write_label_skips", None)
        if write is not None:
            write()


def apply_empty_text_policy(texts: list[str], rows: list[int], policy: str, where: str) -> list[int]:
    """Positions of usable pairs; raises ManifestError naming the rows under ``policy="error"``."""
    empty = [i for i, t in enumerate(texts) if not str(t).strip()]
    if empty and policy == "error":
        shown = ", ".join(str(rows[i]) for i in empty[:20]) + (" ..." if len(empty) > 20 else "")
        raise ManifestError(f"{where}: {len(empty)} training pair(s) have an empty text (rows {shown}); "
                            f"fill them or set data.empty_text=skip to leave them out of training")
    bad = set(empty)
    return [i for i in range(len(texts)) if i not in bad]


def build_train_data(cfg: DataConfig, seed: int = 0, out_dir: str | Path | None = None) -> TrainData:
    """The training split per ``cfg``; a skip report (``on_error=skip``) goes to ``out_dir``."""
    if cfg.shards:
        return _from_shards(cfg, seed)
    return _from_manifest(cfg, seed, Path(out_dir) if out_dir is not None else None)


def count_skipped(report: Path | None) -> int:
    """Distinct manifest rows in a JSONL skip report whose image could not be read (every DataLoader
    worker appends to it); rows skipped for unknown labels are counted by ``TrainData.skipped_labels``."""
    from medvl.data.dataset import skip_report_rows

    return len(skip_report_rows(report) - skip_report_rows(report, code="unknown_label"))


# The model contract (medvl.models.clip) takes images in [0, 1] and applies its own mean/std, so
# the dataset's own normalisation is set to the identity here.
IDENTITY_MEAN, IDENTITY_STD = (0.0,), (1.0,)


def _from_manifest(cfg: DataConfig, seed: int, out_dir: Path | None) -> TrainData:
    from medvl.data.dataset import ManifestDataset, collate_samples

    manifest_path = Path(cfg.manifest)
    manifest = load_manifest(manifest_path)
    split = manifest.split(cfg.split)
    if not split.samples:
        raise ManifestError(f"{manifest_path}: no rows with split={cfg.split!r} (splits present: "
                            f"{', '.join(manifest.splits) or 'none'}); set data.split")
    skip_report = (out_dir or manifest_path.parent) / "skipped_images.jsonl" if cfg.on_error == "skip" else None
    dataset = ManifestDataset(manifest, split=cfg.split, image_size=cfg.image_size, channels=cfg.channels,
                              augment=cfg.augment, mean=IDENTITY_MEAN, std=IDENTITY_STD, on_error=cfg.on_error,
                              skip_report=skip_report, cache_dir=cfg.cache_dir, seed=seed,
                              volume_policy=cfg.volume)
    n_label_skips = len(dataset.label_skips)  # unknown labels: raised above unless on_error=skip
    if len(dataset) != len(split.samples) - n_label_skips:
        raise ManifestError(f"{manifest_path}: dataset has {len(dataset)} samples for split {cfg.split!r}, "
                            f"manifest has {len(split.samples)} ({n_label_skips} skipped for unknown labels)")
    texts = [s.text for s in dataset.samples]
    rows = [s.row for s in dataset.samples]
    usable = apply_empty_text_policy(texts, rows, cfg.empty_text, str(manifest_path))
    card = getattr(manifest, "card", None)
    classes = list(manifest.classes)
    task = str(getattr(card, "task", None) or "multilabel")
    return TrainData(dataset=dataset, indices=usable, train_texts=[texts[i] for i in usable],
                     collate=collate_samples, skipped_empty_text=len(texts) - len(usable),
                     skip_report=skip_report, classes=classes, task=task, card=card,
                     skipped_labels=n_label_skips, _skip_counter=lambda: count_skipped(skip_report))


def _from_shards(cfg: DataConfig, seed: int) -> TrainData:
    from medvl.train.shards import ShardDataset

    dataset = ShardDataset(cfg.shards, split=cfg.split, image_size=cfg.image_size, channels=cfg.channels,
                           augment=cfg.augment, mean=IDENTITY_MEAN, std=IDENTITY_STD, seed=seed)
    texts = dataset.texts
    usable = apply_empty_text_policy(texts, dataset.rows, cfg.empty_text, str(cfg.shards))
    from medvl.data.dataset import collate_samples

    return TrainData(dataset=dataset, indices=usable, train_texts=[texts[i] for i in usable],
                     collate=collate_samples, skipped_empty_text=len(texts) - len(usable))
