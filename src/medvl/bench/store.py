"""Content-addressed result cache: a result is reused only when nothing it depends on changed.

The key of a job hashes the model fingerprint (weights file hash, or training config + data),
the task spec, the dataset fingerprint (manifest + card bytes) and the seed. A changed config
therefore re-runs exactly the jobs it touches, and an interrupted bench resumes where it
stopped because every finished job is already on disk.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from medvl.bench.suite import FAMILY_SEP, ModelSpec
from medvl.data.io import file_hash as sha256_file

PROTOCOL_VERSION = 1  # bump when evaluation semantics change, so old cached results are not reused


def stable_hash(obj: Any) -> str:
    """Hash of a JSON-serialisable object, independent of dict key order."""
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def dataset_fingerprint(manifest: Path) -> str:
    """Manifest + card bytes. Images are referenced by path: editing pixels in place without
    touching the manifest is not detected (hashing every image would cost more than most jobs)."""
    parts = [sha256_file(manifest)]
    card = manifest.parent / "card.yaml"
    if card.is_file():
        parts.append(sha256_file(card))
    return stable_hash(parts)


def encoder_fingerprint(spec: str) -> str:
    """A checkpoint dir is identified by its weights and config; other specs by their text."""
    path = Path(spec)
    if path.is_dir():
        files = [path / "weights.safetensors", path / "config.yaml"]
        return stable_hash([sha256_file(f) for f in files if f.is_file()] or [str(path.resolve())])
    if "@" in spec and Path(spec.split("@", 1)[1]).is_file():
        return stable_hash([spec.split("@", 1)[0], sha256_file(Path(spec.split("@", 1)[1]))])
    return stable_hash([spec])


class ResultStore:
    """``DIR/results/<key>.json`` (+ predictions beside it) for done jobs, ``<key>.failed.json`` for failures."""

    def __init__(self, root: Path):
        self.root = Path(root) / "results"
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        return self.root / f"{key}.json"

    def failed_path(self, key: str) -> Path:
        return self.root / f"{key}.failed.json"

    def skipped_path(self, key: str) -> Path:
        return self.root / f"{key}.skipped.json"

    def has(self, key: str) -> bool:
        """Done: a result, or a recorded skip (e.g. zero-shot on an image-only encoder)."""
        return self.path(key).is_file() or self.skipped_path(key).is_file()

    def has_result(self, key: str) -> bool:
        return self.path(key).is_file()

    def mark_skipped(self, key: str, info: dict[str, Any]) -> None:
        tmp = self.skipped_path(key).with_suffix(".tmp")
        tmp.write_text(json.dumps(info, indent=2, default=str))
        tmp.replace(self.skipped_path(key))

    def mark_failed(self, key: str, info: dict[str, Any]) -> None:
        tmp = self.failed_path(key).with_suffix(".tmp")
        tmp.write_text(json.dumps(info, indent=2, default=str))
        tmp.replace(self.failed_path(key))

    def clear_failed(self, key: str) -> None:
        self.failed_path(key).unlink(missing_ok=True)


def _train_fingerprint(spec: ModelSpec, data_fps: dict[str, str]) -> tuple[str, dict[str, Any]]:
    from medvl.train.config import load_train_config

    cfg = load_train_config(spec.train, list(spec.overrides))
    cfg_dict = cfg.to_dict()
    manifest = Path(cfg.data.manifest)
    data_fp = dataset_fingerprint(manifest) if manifest.is_file() else str(manifest)
    cfg_dict["train"].pop("out_dir", None)
    cfg_dict["train"].pop("progress", None)
    cfg_dict["train"].pop("tensorboard", None)
    return stable_hash({"train": cfg_dict, "data": data_fp, "v": PROTOCOL_VERSION}), cfg_dict


def train_run_dir(name: str, spec: ModelSpec, out_dir: Path, data_fps: dict[str, str]) -> Path:
    """Where a ``train:`` model is trained: ``models/<name>-<config hash>``.

    A family member ``plain@1`` gets ``models/plain-seed1-<hash>``: the ``@`` is kept out of paths
    because encoder specs use it as a separator (``timm:name@weights``).
    """
    fp, _ = _train_fingerprint(spec, data_fps)
    return out_dir / "models" / f"{name.replace(FAMILY_SEP, '-seed')}-{fp[:12]}"
