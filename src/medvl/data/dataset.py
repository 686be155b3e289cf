"""``ManifestDataset``: manifest rows -> training samples (image tensor, caption, label vector).

Sample contract (see docs/ARCHITECTURE.md)::

    {"image": FloatTensor[C,H,W] or [C,D,H,W], "text": str,
     "labels": FloatTensor[K] (1 positive / 0 negative / -1 uncertain; unknown -> 0),
     "label_mask": FloatTensor[K] (0 where the label is unknown, else 1),
     "index": int (position in this dataset), "row": int (1-based manifest row), "patient_id": str}

Decisions worth knowing:

* Multi-view rows (``a.png|b.png``) use the first view (``view=0``); pass ``view=k`` for another.
  Views beyond the last fall back to the last one.
* Unreadable images raise :class:`ImageReadError` naming the file and the manifest row. With
  ``on_error="skip"`` the sample is replaced by the next readable one (deterministic: index
  ``i+1, i+2, ...`` wrapping around), the row is appended once to the JSONL ``skip_report`` as
  ``{"row", "file", "reason"}`` and counted in ``ds.skipped``; nothing disappears silently. With
  DataLoader workers each worker counts its own skips, so the report file is the total.
* Labels the card does not know (a typo such as ``nodul``) raise the same one-line error as
  ``medvl data check`` (row, label, known labels): such a row would otherwise read as negative for
  every class. With ``on_error="skip"`` those rows are left out of the dataset, appended to
  ``skip_report`` with ``"code": "unknown_label"`` and the reason, and listed in ``label_skips``.
* Decoded and cached loading share :func:`medvl.data.transforms.prepare_uint8`, so a cache gives
  exactly the pixels decoding gives; augmentation and normalisation come after it.
* ``volume_policy`` (a :class:`~medvl.data.volume_preprocess.VolumePolicy`, the training config's
  ``data.volume``, recorded in the checkpoint) maps 3D samples from the reader's units (HU for CT)
  instead of per-volume min-max; 2D samples are unaffected. A memmap cache must have been built
  with the same policy. A range warning (an HU window on [0, 1] data) is issued once per dataset.
* Augmentation draws from a generator seeded by ``(seed, epoch, index)``: call ``set_epoch`` each
  epoch for fresh augmentations that are still reproducible whatever the worker count.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from medvl.data.cache import CacheReader, load_prepared
from medvl.data.manifest import Manifest, load_manifest, unknown_label_error, unknown_label_message, unknown_labels
from medvl.data.transforms import Compose, Transform, build_transforms
from medvl.data.volume_preprocess import VolumePolicy, as_volume_policy
from medvl.errors import ConfigError, ImageReadError, ManifestError

ON_ERROR = ("raise", "skip")


class ManifestDataset(Dataset):
    """A map-style dataset over one split of a manifest (``split=None``: every row)."""

    def __init__(
        self,
        manifest: Manifest | str | Path,
        split: str | None = "train",
        image_size: int = 64,
        channels: int = 1,
        augment: bool = False,
        mean: Sequence[float] | None = (0.5,),
        std: Sequence[float] | None = (0.5,),
        on_error: str = "raise",
        skip_report: str | Path | None = None,
        cache_dir: str | Path | None = None,
        seed: int = 0,
        *,
        resize_mode: str = "pad",
        hflip: bool = False,
        view: int = 0,
        transform: Transform | Compose | None = None,
        volume_policy: VolumePolicy | dict[str, Any] | None = None,
    ):
        if on_error not in ON_ERROR:
            raise ConfigError(f"on_error must be one of {', '.join(ON_ERROR)}, got {on_error!r}")
        if channels not in (1, 3):
            raise ConfigError(f"channels must be 1 or 3, got {channels}")
        self.manifest = manifest if isinstance(manifest, Manifest) else load_manifest(manifest)
        self.split = split
        samples = self.manifest.samples if split is None else [s for s in self.manifest.samples if s.split == split]
        if not samples:
            raise ManifestError(
                f"{self.manifest.path}: no rows in split {split!r}; splits present: "
                f"{', '.join(self.manifest.splits) or '(none)'}"
            )
        self.skip_report = Path(skip_report) if skip_report is not None else None
        self.label_skips: list[dict[str, Any]] = []
        bad = unknown_labels(self.manifest, samples)
        if bad and on_error == "raise":
            raise unknown_label_error(self.manifest, bad)
        if bad:  # on_error="skip": leave the rows out, and say so in the report
            dropped = {s.row for s, _ in bad}
            samples = [s for s in samples if s.row not in dropped]
            known = self.manifest.card.class_names if self.manifest.card else []
            self.label_skips = [{"row": s.row, "file": "|".join(s.image), "code": "unknown_label",
                                 "reason": unknown_label_message(names, known), "manifest": str(self.manifest.path)}
                                for s, names in bad]
            self.write_label_skips()
            if not samples:
                raise unknown_label_error(self.manifest, bad)
        self.samples = samples
        self.classes = list(self.manifest.classes)
        mat = self.manifest.subset(samples).label_matrix()
        self._mask = torch.from_numpy((~np.isnan(mat)).astype(np.float32))
        self._labels = torch.from_numpy(np.nan_to_num(mat, nan=0.0).astype(np.float32))
        self.image_size, self.channels, self.resize_mode, self.view = image_size, channels, resize_mode, view
        self.on_error, self.seed, self.epoch = on_error, seed, 0
        self._bad: dict[int, str] = {}
        self.volume_policy = as_volume_policy(volume_policy)
        self._range_warned = False
        self.cache = (CacheReader(cache_dir, self.manifest.path, image_size, channels, resize_mode, view,
                                  self.volume_policy) if cache_dir is not None else None)
        self.transform = transform if transform is not None else build_transforms(
            image_size, channels, augment, mean, std, resize_mode=resize_mode, hflip=hflip, classes=self.classes)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def skipped(self) -> int:
        """Number of distinct rows this process skipped (and reported)."""
        return len(self._bad)

    def write_label_skips(self) -> None:
        """Append the rows left out for unknown labels to ``skip_report`` (rows already there are not repeated,
        so a trainer that starts a fresh report can call this again)."""
        if self.skip_report is None or not self.label_skips:
            return
        present = skip_report_rows(self.skip_report, code="unknown_label")
        todo = [e for e in self.label_skips if e["row"] not in present]
        if todo:
            self.skip_report.parent.mkdir(parents=True, exist_ok=True)
            with self.skip_report.open("a", encoding="utf-8") as f:
                f.writelines(json.dumps(e) + "\n" for e in todo)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _generator(self, index: int) -> torch.Generator:
        state = np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1)[0]
        return torch.Generator().manual_seed(int(state))

    def load_uint8(self, index: int) -> torch.Tensor:
        """The prepared (channels + resize) uint8 tensor of sample ``index``, from cache or by decoding."""
        s = self.samples[index]
        if self.cache is not None:
            return self.cache.get(s.row)
        return load_prepared(self.manifest, s, self.image_size, self.channels, self.resize_mode, self.view,
                             self.volume_policy, self._warn_once)

    def _warn_once(self, message: str) -> None:
        """Range warnings of the volume policy, once per dataset (per DataLoader worker), not per volume."""
        if not self._range_warned:
            self._range_warned = True
            warnings.warn(f"{message} (reported once for split {self.split!r} of {self.manifest.path})",
                          UserWarning, stacklevel=3)

    def _build(self, index: int, image: torch.Tensor) -> dict[str, Any]:
        s = self.samples[index]
        sample: dict[str, Any] = {
            "image": image,
            "text": s.text,
            "labels": self._labels[index].clone(),
            "label_mask": self._mask[index].clone(),
            "index": index,
            "row": s.row,
            "patient_id": s.patient_id,
        }
        generator = self._generator(index) if getattr(self.transform, "random", True) else None
        return self.transform(sample, generator)

    def _record_skip(self, index: int, exc: ImageReadError) -> None:
        s = self.samples[index]
        if index in self._bad:
            return
        self._bad[index] = exc.reason
        if self.skip_report is not None:
            self.skip_report.parent.mkdir(parents=True, exist_ok=True)
            entry = {"row": s.row, "file": str(exc.path), "reason": exc.reason, "manifest": str(self.manifest.path)}
            with self.skip_report.open("a", encoding="utf-8") as f:
                f.write(json.dumps(entry) + "\n")

    def __getitem__(self, index: int) -> dict[str, Any]:
        n = len(self.samples)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for a dataset of {n} samples")
        index %= n
        if self.on_error == "raise":
            return self._build(index, self.load_uint8(index))
        for k in range(n):
            j = (index + k) % n
            if j in self._bad:
                continue
            try:
                image = self.load_uint8(j)
            except ImageReadError as exc:
                self._record_skip(j, exc)
                continue
            return self._build(j, image)
        raise ImageReadError(self.manifest.path, f"every one of the {n} images in split {self.split!r} is unreadable")


def skip_report_rows(report: Path | None, code: str | None = None) -> set[int]:
    """Distinct manifest rows in a JSONL skip report, optionally only those with ``code``
    (``"unknown_label"``; image read failures carry no code)."""
    if report is None or not report.is_file():
        return set()
    rows = set()
    for line in report.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if code is None or entry.get("code") == code:
            rows.add(entry.get("row"))
    return rows


def collate_samples(batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors (and ints/floats into tensors); keep strings and anything else as lists.

    Keys missing from some samples give lists with ``None`` so a batch never silently loses data.
    """
    if not batch:
        raise ValueError("collate_samples got an empty batch")
    keys: list[str] = []
    for b in batch:
        keys += [k for k in b if k not in keys]
    out: dict[str, Any] = {}
    for key in keys:
        vals = [b.get(key) for b in batch]
        if all(isinstance(v, torch.Tensor) for v in vals):
            shapes = {tuple(v.shape) for v in vals}
            if len(shapes) > 1:
                raise ValueError(f"collate_samples: '{key}' has different shapes in one batch: {sorted(shapes)}")
            out[key] = torch.stack(vals)
        elif all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in vals):
            out[key] = torch.tensor(vals, dtype=torch.long)
        elif all(isinstance(v, (float, np.floating)) for v in vals):
            out[key] = torch.tensor(vals, dtype=torch.float32)
        else:
            out[key] = vals
    return out
