"""WebDataset tar shards: pack a manifest for streaming, read it back with random access.

``medvl data shards MANIFEST --out DIR`` writes ``shard-000000.tar``, ... with WebDataset's
``TarWriter`` (one sample = ``KEY.img0.<ext>`` original image bytes per view, ``KEY.txt`` the
report, ``KEY.json`` row/split/patient/labels) plus ``index.json`` listing, for every sample,
its shard and the byte offset/size of its first image inside the tar.

Why an index: the shards are plain WebDataset tars any streaming pipeline can read, yet the
trainer reads them as a *map-style* dataset (seek + read), so data order, resume and DDP slicing
are exactly those of a manifest run (a pure function of seed and epoch). The images keep their
original encoding (PNG/JPEG/DICOM/NIfTI...) and are decoded by the same reader as the manifest
path, so both give the same pixels.
"""

from __future__ import annotations

import json
import os
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from medvl.data.manifest import load_manifest, require_known_labels
from medvl.errors import ImageReadError, ManifestError

INDEX = "index.json"
FORMAT = "medvl-shards"
VERSION = 1


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for multi in (".nii.gz",):
        if name.endswith(multi):
            return multi[1:]
    return path.suffix[1:].lower() or "bin"


def write_shards(manifest: str | Path, out: str | Path, shard_size: int = 1000,
                 split: str | None = None) -> dict[str, Any]:
    """Write tar shards + ``index.json`` for every row (or one split) of ``manifest``; returns the index."""
    import webdataset as wds

    if shard_size < 1:
        raise ManifestError(f"--shard-size must be >= 1, got {shard_size}")
    man = load_manifest(manifest)
    samples = man.samples if split is None else [s for s in man.samples if s.split == split]
    if not samples:
        raise ManifestError(f"{man.path}: no rows{f' with split={split!r}' if split else ''} to pack")
    require_known_labels(man, samples)  # a typo would be packed as "negative for every class"
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    label_matrix = man.subset(samples).label_matrix()
    entries: list[dict[str, Any]] = []
    shards: list[dict[str, Any]] = []
    for start in range(0, len(samples), shard_size):
        name = f"shard-{len(shards):06d}.tar"
        chunk = samples[start:start + shard_size]
        tmp = out / f".{name}.tmp"
        with open(tmp, "wb") as stream:
            writer = wds.TarWriter(stream)
            for j, s in enumerate(chunk):
                key = f"{start + j:08d}"
                rec: dict[str, Any] = {"__key__": key, "txt": s.text}
                names = []
                for v, rel in enumerate(s.image):
                    path = man.resolve(rel)
                    if not path.is_file():
                        raise ImageReadError(path, f"not a file (manifest {man.path}, row {s.row}); shards "
                                                   f"hold single-file images only")
                    field = f"img{v}.{_suffix(path)}"
                    rec[field] = path.read_bytes()
                    names.append(field)
                labels = [None if np.isnan(x) else float(x) for x in label_matrix[start + j]]
                rec["json"] = json.dumps({"row": s.row, "split": s.split, "patient_id": s.patient_id,
                                          "labels": labels, "images": names}).encode()
                writer.write(rec)
                entries.append({"key": key, "shard": len(shards), "row": s.row, "split": s.split,
                                "patient_id": s.patient_id, "text": s.text, "labels": labels,
                                "image": names[0] if names else None})
            writer.close()
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp, out / name)
        shards.append({"name": name, "num_samples": len(chunk)})
    # Offsets are read back from the finished tars, so they are exactly what tarfile sees.
    by_key = {e["key"]: e for e in entries}
    for sh in shards:
        with tarfile.open(out / sh["name"]) as tf:
            for m in tf.getmembers():
                key, _, field = m.name.partition(".")
                e = by_key.get(key)
                if e is not None and field == e["image"]:
                    e["offset"], e["size"] = m.offset_data, m.size
    index = {"format": FORMAT, "version": VERSION, "manifest": str(man.path), "classes": list(man.classes),
             "num_samples": len(entries), "shards": shards, "samples": entries}
    tmp_index = out / f".{INDEX}.tmp"
    tmp_index.write_text(json.dumps(index))
    os.replace(tmp_index, out / INDEX)
    if man.card is not None:
        man.card.save(out / "card.yaml")
    return index


def read_index(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / INDEX
    try:
        index = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ManifestError(f"{path}: cannot read the shard index ({exc}); write shards with `medvl data shards`") \
            from exc
    if index.get("format") != FORMAT:
        raise ManifestError(f"{path}: not a medvl shard index (format {index.get('format')!r})")
    return index


class ShardDataset(Dataset):
    """Map-style dataset over shards written by :func:`write_shards`; same samples as ManifestDataset."""

    def __init__(self, directory: str | Path, split: str | None = "train", image_size: int = 64, channels: int = 1,
                 augment: bool = False, mean: tuple[float, ...] | None = (0.5,),
                 std: tuple[float, ...] | None = (0.5,), seed: int = 0, resize_mode: str = "pad"):
        from medvl.data.transforms import build_transforms

        self.directory = Path(directory)
        index = read_index(self.directory)
        self.classes = list(index["classes"])
        self.shards = [self.directory / s["name"] for s in index["shards"]]
        self.entries = [e for e in index["samples"] if split is None or e["split"] == split]
        if not self.entries:
            splits = sorted({e["split"] for e in index["samples"]})
            raise ManifestError(f"{self.directory}: no samples with split={split!r} (present: {', '.join(splits)})")
        self.image_size, self.channels, self.resize_mode = image_size, channels, resize_mode
        self.seed, self.epoch = seed, 0
        self.transform = build_transforms(image_size, channels, augment, mean, std, resize_mode=resize_mode,
                                          classes=self.classes)
        self._tmpdir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def texts(self) -> list[str]:
        return [e["text"] for e in self.entries]

    @property
    def rows(self) -> list[int]:
        return [e["row"] for e in self.entries]

    def __len__(self) -> int:
        return len(self.entries)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _image_bytes(self, e: dict[str, Any]) -> bytes:
        with open(self.shards[e["shard"]], "rb") as f:
            f.seek(e["offset"])
            data = f.read(e["size"])
        if len(data) != e["size"]:
            raise ImageReadError(self.shards[e["shard"]], f"truncated shard (sample {e['key']}, row {e['row']})")
        return data

    def _decode(self, e: dict[str, Any]) -> torch.Tensor:
        from medvl.data.cache import decode_uint8
        from medvl.data.transforms import prepare_uint8

        # The medvl readers take paths (DICOM/NIfTI libraries do), so the bytes go through a
        # per-process scratch file named with the original suffix.
        if self._tmpdir is None:
            self._tmpdir = tempfile.TemporaryDirectory(prefix="medvl-shard-")
        scratch = Path(self._tmpdir.name) / f"{os.getpid()}.{e['image'].split('.', 1)[1]}"
        scratch.write_bytes(self._image_bytes(e))
        try:
            arr, dims = decode_uint8(scratch)
        except ImageReadError as exc:
            raise ImageReadError(self.shards[e["shard"]], f"sample {e['key']} (row {e['row']}): {exc.reason}") from exc
        return prepare_uint8(arr, self.image_size, self.channels, self.resize_mode, dims)

    def __getitem__(self, index: int) -> dict[str, Any]:
        e = self.entries[index]
        labels = torch.tensor([0.0 if v is None else v for v in e["labels"]], dtype=torch.float32)
        mask = torch.tensor([0.0 if v is None else 1.0 for v in e["labels"]], dtype=torch.float32)
        sample = {"image": self._decode(e), "text": e["text"], "labels": labels, "label_mask": mask,
                  "index": index, "row": e["row"], "patient_id": e["patient_id"]}
        state = np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1)[0]
        return self.transform(sample, torch.Generator().manual_seed(int(state)))

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers: each makes its own scratch dir
        state = dict(self.__dict__)
        state["_tmpdir"] = None
        return state
