"""Pretraining-evaluation leakage: which evaluated images (by content) or patients a model saw.

Why: a foundation model evaluated on images it was pretrained on scores too well, and benchmark
users ask for this check (DESIGN.md, "Lessons from the peers"). Three pieces:

* **The training record** (``train_data.json`` in every training checkpoint directory): the
  manifest(s) trained on (path, sha256, split, rows) and the *sorted* lists of image content
  hashes (SHA-256 of the file bytes, truncated to 128 bits: 32 hex characters) and patient ids
  of the rows the trainer may draw. Content hashes, not paths: a copy or renamed file is the same
  image; a re-encoded one is not (that needs perceptual hashing, out of scope).
* **Overlap** of a manifest split with a record (``medvl eval`` warns and writes it to the result
  JSON ``config.leakage``), or of two manifests (``medvl data check A.csv --against B.csv``).
* **A file-hash cache** (``$MEDVL_CACHE_DIR/file_hashes/<manifest dir hash>.json``; size and
  mtime must match) so the second look at a dataset reads no image bytes.

Patient ids are compared as strings: ids local to a dataset can coincide across datasets (two
synthetic sets both have ``p00001``), so ``patients_seen`` is an upper bound; image overlap is exact.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medvl.data.io import file_hash
from medvl.data.manifest import Manifest, Sample

RECORD_NAME = "train_data.json"
RECORD_FORMAT = 1
HASH_CHARS = 32  # 128 bits of SHA-256: collisions are not a practical concern, the record stays small


def cache_root() -> Path:
    """``$MEDVL_CACHE_DIR``, else ``~/.cache/medvl`` (the features cache uses the same root)."""
    root = os.environ.get("MEDVL_CACHE_DIR")
    return Path(root) if root else Path.home() / ".cache" / "medvl"


class HashCache:
    """Content hashes of the files under one directory, reused while size and mtime are unchanged."""

    def __init__(self, root: Path, cache_file: Path | None = None):
        self.root = root.resolve()
        key = hashlib.sha256(str(self.root).encode()).hexdigest()[:16]
        self.file = cache_file or cache_root() / "file_hashes" / f"{key}.json"
        self.entries: dict[str, list[Any]] = {}
        self.dirty = False
        try:
            data = json.loads(self.file.read_text())
            if data.get("root") == str(self.root):
                self.entries = dict(data.get("files", {}))
        except (OSError, ValueError, AttributeError):
            self.entries = {}

    def hash(self, path: Path) -> str:
        st = path.stat()
        key = str(path.resolve())
        hit = self.entries.get(key)
        if hit and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
            return str(hit[2])
        digest = file_hash(path)
        self.entries[key] = [st.st_size, st.st_mtime_ns, digest]
        self.dirty = True
        return digest

    def save(self) -> None:
        """Write atomically; a cache that cannot be written only costs speed, so errors are ignored."""
        if not self.dirty:
            return
        try:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.file.with_name(f"{self.file.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"root": str(self.root), "files": self.entries}))
            tmp.replace(self.file)
            self.dirty = False
        except OSError:
            pass


@dataclass
class SampleHashes:
    """Per-row content hashes (truncated; one per readable view file) of some manifest rows."""

    by_row: dict[int, list[str]] = field(default_factory=dict)
    missing: list[int] = field(default_factory=list)  # rows with no hashable file (missing / a folder)

    def all(self) -> set[str]:
        return {h for hs in self.by_row.values() for h in hs}


def hash_samples(manifest: Manifest, samples: Sequence[Sample] | None = None) -> SampleHashes:
    """Content hashes of every view of ``samples`` (default: every row), through the hash cache."""
    cache = HashCache(manifest.root)
    out = SampleHashes()
    for s in manifest.samples if samples is None else samples:
        hs = []
        for p in manifest.image_paths(s):
            if p.is_file():
                hs.append(cache.hash(p)[:HASH_CHARS])
        if hs:
            out.by_row[s.row] = hs
        else:
            out.missing.append(s.row)
    cache.save()
    return out


def make_record(image_hashes: set[str], patient_ids: set[str], sources: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``train_data.json`` document: sorted (so it is deterministic and diffable) truncated hashes."""
    hashes = {h[:HASH_CHARS] for h in image_hashes}
    return {"format": RECORD_FORMAT, "hash": f"sha256/{HASH_CHARS * 4}", "manifests": sources,
            "n_images": len(hashes), "image_sha256": sorted(hashes), "patient_ids": sorted(p for p in patient_ids if p)}


def build_train_record(manifest: Manifest, samples: Sequence[Sample], split: str) -> dict[str, Any]:
    """The training record of ``samples`` (the rows the trainer may draw) of ``manifest``."""
    hashes = hash_samples(manifest, samples)
    source = {"path": str(manifest.path.resolve()), "sha256": file_hash(manifest.path), "split": split,
              "rows": len(samples), "dataset": manifest.card.name if manifest.card else ""}
    return make_record(hashes.all(), {s.patient_id for s in samples}, [source])


def bytes_hash(data: bytes) -> str:
    """The content hash of bytes already in memory (tar shards hold each image file's exact bytes)."""
    return hashlib.sha256(data).hexdigest()


def write_train_record(directory: str | Path, record: dict[str, Any] | None) -> Path | None:
    """Write ``train_data.json`` into a checkpoint directory (nothing when there is no record)."""
    if record is None:
        return None
    path = Path(directory) / RECORD_NAME
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, separators=(",", ":")))
    tmp.replace(path)
    return path


def find_train_record(model: str | Path) -> Path | None:
    """``train_data.json`` of a medvl checkpoint directory (also accepts ``medvl:<dir>``); None otherwise."""
    text = str(model)
    if text.startswith("medvl:"):
        text = text[len("medvl:"):]
    p = Path(text)
    if not p.is_dir():
        return None
    rec = p / RECORD_NAME
    return rec if rec.is_file() else None


def load_train_record(path: str | Path) -> dict[str, Any]:
    from medvl.errors import CheckpointError

    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable training-data record ({exc})") from exc
    if not isinstance(data, dict) or "image_sha256" not in data:
        raise CheckpointError(f"{path}: not a medvl training-data record (no 'image_sha256')")
    return data


def leakage_against_record(record: dict[str, Any], manifest: Manifest, split: str) -> dict[str, Any]:
    """How many images (by content) and patients of ``split`` the recorded training data holds."""
    samples = [s for s in manifest.samples if s.split == split]
    hashes = hash_samples(manifest, samples)
    seen_hashes = set(record.get("image_sha256", []))
    seen_patients = set(record.get("patient_ids", []))
    images_seen = sum(1 for s in samples if any(h in seen_hashes for h in hashes.by_row.get(s.row, [])))
    patients = {s.patient_id for s in samples if s.patient_id}
    return {"checked": True, "images_seen": images_seen, "of": len(samples),
            "patients_seen": len(patients & seen_patients), "patients_of": len(patients),
            "trained_on": [m.get("path") for m in record.get("manifests", [])]}


def model_leakage(model: str | Path, manifest: Manifest | None, split: str, *, warn: bool = True) -> dict[str, Any]:
    """Leakage of ``split`` for ``model``: a medvl checkpoint with a record is checked; otherwise the
    result says why not (``checked: false``; ``manifest`` is not read then and may be None). Warns when
    any evaluated image or patient was seen."""
    rec_path = find_train_record(model)
    if rec_path is None:
        reason = ("the checkpoint has no training-data record (trained before medvl wrote one)"
                  if Path(str(model).removeprefix("medvl:")).is_dir()
                  else "not a medvl checkpoint: its pretraining data is unknown to medvl")
        return {"checked": False, "reason": reason}
    if manifest is None:
        raise ValueError("model_leakage: a manifest is needed to check a model that has a training record")
    info = leakage_against_record(load_train_record(rec_path), manifest, split)
    if warn and (info["images_seen"] or info["patients_seen"]):
        warnings.warn(f"leakage: {info['images_seen']} of {info['of']} evaluated images and "
                      f"{info['patients_seen']} of {info['patients_of']} patients of {manifest.path} "
                      f"(split {split!r}) were in the pretraining data of {model}", stacklevel=2)
    return info


@dataclass
class Overlap:
    """Overlap of two manifests: rows with identical image content, patients present in both."""

    images: list[tuple[list[tuple[int, str]], list[tuple[int, str]]]]  # per shared hash: (A rows, B rows)
    patients: dict[str, tuple[list[str], list[str]]]  # patient -> (A splits, B splits)


def manifest_overlap(a: Manifest, b: Manifest) -> Overlap:
    """Identical image content (any view) and shared patient ids between two manifests."""
    ha, hb = hash_samples(a), hash_samples(b)
    split_a = {s.row: s.split for s in a.samples}
    split_b = {s.row: s.split for s in b.samples}
    rows_a: dict[str, list[tuple[int, str]]] = {}
    for row, hs in ha.by_row.items():
        for h in set(hs):
            rows_a.setdefault(h, []).append((row, split_a[row]))
    rows_b: dict[str, list[tuple[int, str]]] = {}
    for row, hs in hb.by_row.items():
        for h in set(hs):
            rows_b.setdefault(h, []).append((row, split_b[row]))
    images = [(rows_a[h], rows_b[h]) for h in sorted(set(rows_a) & set(rows_b), key=lambda h: rows_a[h][0][0])]
    pa: dict[str, set[str]] = {}
    for s in a.samples:
        if s.patient_id:
            pa.setdefault(s.patient_id, set()).add(s.split)
    pb: dict[str, set[str]] = {}
    for s in b.samples:
        if s.patient_id:
            pb.setdefault(s.patient_id, set()).add(s.split)
    patients = {p: (sorted(pa[p]), sorted(pb[p])) for p in sorted(set(pa) & set(pb))}
    return Overlap(images=images, patients=patients)


def crosses_splits(splits_a: Sequence[str], splits_b: Sequence[str]) -> bool:
    """True when data is in one split on one side and another split on the other (train vs test...):
    that is leakage; the same split on both sides (e.g. two copies of a test set) is only a duplicate."""
    return any(x != y for x in splits_a for y in splits_b)
