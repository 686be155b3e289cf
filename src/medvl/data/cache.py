"""Preprocess every manifest image once into a uint8 ``numpy.memmap`` so training never decodes.

Why: decoding PNG/DICOM/NIfTI and resizing dominates the input pipeline for small models; the
cache stores the result of :func:`medvl.data.transforms.prepare_uint8` (channels + resize, the
deterministic part of preprocessing), so reading a sample is one slice of a memory-mapped file and
gives exactly the pixels decoded loading gives.

Layout of a cache directory::

    images.u8     raw uint8, C-order, shape [N, S, S] (channels=1), [N, 3, S, S] (channels=3)
                  or [N, S, S, S] (volumes)
    index.json    manifest path + sha256 of its bytes, size, channels, resize mode, view, shape,
                  row -> offset and the per-row error list

Writing is atomic and resumable: data goes to ``images.u8.partial`` with ``progress.json`` updated
after every chunk; an interrupted build continues from the last chunk; the final rename and
``index.json`` (written last, via a temp file) mark the cache complete. A cache whose manifest
hash, size, channels or resize mode differ from what the dataset asks for is rejected as stale.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medvl.data.io import file_hash
from medvl.data.manifest import Manifest, Sample, load_manifest
from medvl.data.transforms import prepare_uint8
from medvl.data.volume_preprocess import VolumePolicy, as_volume_policy, policy_dict
from medvl.errors import ConfigError, ImageReadError, ManifestError, MedvlError

INDEX_NAME = "index.json"
DATA_NAME = "images.u8"
FORMAT_VERSION = 1


def manifest_sha256(path: str | Path) -> str:
    """Content hash of the manifest file: any edit (row, label, path) invalidates a cache."""
    return file_hash(Path(path))


def decode_uint8(path: Path, volume_policy: VolumePolicy | None = None,
                 warn: Callable[[str], None] | None = None) -> tuple[np.ndarray, int]:
    """Decode one file to the display-ready uint8 picture and its spatial dims (2 or 3).

    Uses :mod:`medvl.data.io` (every format medvl reads, DICOM windowing and MONOCHROME1 included);
    every failure is an :class:`ImageReadError` naming the file. The reader's photometric tag, not
    the array shape, tells colour (HxWx3) from a volume (DxHxW). With ``volume_policy`` a volume is
    mapped by :func:`~medvl.data.volume_preprocess.prepare_volume_uint8` (HU window / z-score /
    min-max, checks, resampling) from the reader's own units instead of :func:`to_uint8`; 2D
    pictures are unaffected. ``warn`` receives range warnings (see ``prepare_volume``).
    """
    from medvl.data.io import read_image, to_uint8

    data = read_image(path)
    is_rgb = data.array.ndim == 3 and data.meta.photometric.upper().startswith("RGB")
    if volume_policy is not None and data.array.ndim == 3 and not is_rgb:
        from medvl.data.volume_preprocess import prepare_volume_uint8

        return prepare_volume_uint8(data, volume_policy, warn), 3
    arr = to_uint8(data)
    is_rgb = arr.ndim == 3 and data.meta.photometric.upper().startswith("RGB")
    return arr, 2 if arr.ndim == 2 or is_rgb else 3


def load_prepared(manifest: Manifest, sample: Sample, size: int, channels: int = 1, resize_mode: str = "pad",
                  view: int = 0, volume_policy: VolumePolicy | None = None,
                  warn: Callable[[str], None] | None = None) -> torch.Tensor:
    """Decode view ``view`` of a sample and apply :func:`prepare_uint8`; errors name file and row.

    ``volume_policy`` (3D samples only) replaces the per-volume min-max of :func:`to_uint8` by the
    model's policy, see :func:`decode_uint8`."""
    if not sample.image:
        raise ImageReadError(manifest.path, f"row {sample.row}: empty 'image' column")
    rel = sample.image[min(view, len(sample.image) - 1)]
    path = manifest.resolve(rel)
    try:
        arr, spatial_dims = decode_uint8(path, volume_policy, warn)
        return prepare_uint8(arr, size, channels, resize_mode, spatial_dims)
    except ImageReadError as exc:
        raise ImageReadError(exc.path, f"{exc.reason} (manifest {manifest.path}, row {sample.row})") from exc
    except (ValueError, ConfigError, OSError) as exc:
        raise ImageReadError(path, f"{exc} (manifest {manifest.path}, row {sample.row})") from exc


@dataclass
class CacheIndex:
    """Contents of ``index.json``."""

    manifest: str
    manifest_sha256: str
    size: int
    channels: int
    resize_mode: str
    view: int
    shape: list[int]
    rows: dict[int, int]
    errors: list[dict[str, Any]] = field(default_factory=list)
    dtype: str = "uint8"
    version: int = FORMAT_VERSION
    volume: dict[str, Any] | None = None  # the VolumePolicy the volumes were mapped with (None: to_uint8)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["rows"] = {str(k): v for k, v in self.rows.items()}
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> CacheIndex:
        d = dict(d)
        d["rows"] = {int(k): int(v) for k, v in d["rows"].items()}
        return cls(**d)


def _atomic_json(data: dict[str, Any], path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def _item_shape(channels: int, ndim: int, size: int) -> list[int]:
    if ndim == 3:
        if channels != 1:
            raise ConfigError("volume caches hold one channel; use channels=1")
        return [size, size, size]
    return [size, size] if channels == 1 else [channels, size, size]


def default_cache_dir(manifest_path: str | Path, size: int, channels: int = 1) -> Path:
    p = Path(manifest_path)
    return p.parent / f".cache_{p.stem}_{size}px_{channels}ch"


def build_cache(manifest: str | Path | Manifest, size: int, out: str | Path | None = None, channels: int = 1,
                resize_mode: str = "pad", view: int = 0, workers: int = 1, chunk: int = 256, force: bool = False,
                progress: Callable[[int, int], None] | None = None,
                volume_policy: VolumePolicy | dict[str, Any] | None = None) -> CacheIndex:
    """Preprocess every row of ``manifest`` into ``out`` (see the module docstring for the layout).

    Unreadable rows do not stop the build: they are zero-filled and listed in ``errors`` with file
    and reason, and :class:`ManifestDataset` raises or skips them exactly as when decoding. An
    existing complete cache for the same manifest content and settings is reused unless ``force``.
    ``volume_policy`` maps volumes as a model trained with ``data.volume`` expects; it is part of the
    settings, so a cache built without it is never read by a dataset that has one (and vice versa).
    """
    m = manifest if isinstance(manifest, Manifest) else load_manifest(manifest)
    if size < 1:
        raise ConfigError(f"cache size must be >= 1, got {size}")
    if channels not in (1, 3):
        raise ConfigError(f"channels must be 1 or 3, got {channels}")
    out = Path(out) if out is not None else default_cache_dir(m.path, size, channels)
    out.mkdir(parents=True, exist_ok=True)
    digest = manifest_sha256(m.path)
    policy = as_volume_policy(volume_policy)
    settings = {"manifest_sha256": digest, "size": size, "channels": channels, "resize_mode": resize_mode,
                "view": view, "volume": policy_dict(policy)}
    warned: list[str] = []
    index_path, data_path = out / INDEX_NAME, out / DATA_NAME
    if index_path.is_file() and data_path.is_file() and not force:
        try:
            old = CacheIndex.from_json(json.loads(index_path.read_text()))
            if all(getattr(old, k) == v for k, v in settings.items()) and len(old.rows) == len(m.samples):
                return old
        except (ValueError, KeyError, TypeError):
            pass
    index_path.unlink(missing_ok=True)  # from here on the directory is not a valid cache

    samples = m.samples
    n = len(samples)
    errors: list[dict[str, Any]] = []
    prepared: dict[int, torch.Tensor] = {}

    def prep(i: int) -> torch.Tensor | ImageReadError:
        try:
            return load_prepared(m, samples[i], size, channels, resize_mode, view, policy, warned.append)
        except ImageReadError as exc:
            return exc

    # The first readable row fixes 2D vs 3D (and so the memmap shape).
    ndim = 2
    for i in range(n):
        got = prep(i)
        if isinstance(got, torch.Tensor):
            ndim = got.ndim - 1
            prepared[i] = got
            break
    item = _item_shape(channels, ndim, size)
    shape = [n, *item]

    partial, progress_path = out / (DATA_NAME + ".partial"), out / "progress.json"
    start = 0
    if partial.is_file() and progress_path.is_file():
        try:
            state = json.loads(progress_path.read_text())
            if state.get("settings") == settings and state.get("shape") == shape \
                    and partial.stat().st_size == int(np.prod(shape)):
                start, errors = int(state["done"]), list(state["errors"])
        except (ValueError, KeyError, TypeError):
            start = 0
    if start == 0:
        errors = []
    mm = np.memmap(partial, dtype=np.uint8, mode="r+" if start else "w+", shape=tuple(shape))
    pool = ThreadPoolExecutor(max(1, workers)) if workers > 1 else None
    try:
        for lo in range(start, n, chunk):
            idx = list(range(lo, min(n, lo + chunk)))
            todo = [i for i in idx if i not in prepared]
            results = dict(zip(todo, pool.map(prep, todo) if pool else map(prep, todo), strict=True))
            results.update({i: prepared.pop(i) for i in idx if i in prepared})
            for i in idx:
                got = results[i]
                if isinstance(got, ImageReadError):
                    errors.append({"row": samples[i].row, "file": str(got.path), "reason": got.reason})
                    mm[i] = 0
                elif list(got.shape[1:] if channels == 1 else got.shape) != item:
                    errors.append({"row": samples[i].row, "file": str(m.image_paths(samples[i])[0]),
                                   "reason": f"shape {list(got.shape)} does not fit the cache item shape {item} "
                                             f"(mixed 2D/3D or channels?)"})
                    mm[i] = 0
                else:
                    mm[i] = (got[0] if channels == 1 else got).numpy()
            mm.flush()
            _atomic_json({"settings": settings, "shape": shape, "done": idx[-1] + 1, "errors": errors},
                         progress_path)
            if progress:
                progress(idx[-1] + 1, n)
    finally:
        if pool:
            pool.shutdown()
        del mm
    partial.replace(data_path)
    if warned:  # once per build, not once per volume
        warnings.warn(f"{warned[0]} ({len(warned)} volume(s) of {m.path} look like this)", UserWarning,
                      stacklevel=2)
    index = CacheIndex(manifest=str(m.path), manifest_sha256=digest, size=size, channels=channels,
                       resize_mode=resize_mode, view=view, shape=shape,
                       rows={s.row: i for i, s in enumerate(samples)}, errors=errors, volume=settings["volume"])
    _atomic_json(index.to_json(), index_path)
    progress_path.unlink(missing_ok=True)
    return index


class CacheReader:
    """Read-only access to a cache, validated against the manifest and settings a dataset wants.

    The memmap is opened lazily and dropped when pickled, so DataLoader workers each map the
    file themselves instead of copying it.
    """

    def __init__(self, cache_dir: str | Path, manifest_path: str | Path, size: int, channels: int = 1,
                 resize_mode: str = "pad", view: int = 0, volume_policy: VolumePolicy | dict[str, Any] | None = None):
        self.dir = Path(cache_dir)
        index_path = self.dir / INDEX_NAME
        policy = policy_dict(as_volume_policy(volume_policy))
        with_volume = f" --volume '{json.dumps(policy)}'" if policy else ""
        rebuild = f"rebuild it with `medvl data cache {manifest_path} --size {size} --channels {channels} " \
                  f"--out {self.dir}{with_volume}`"
        if not index_path.is_file() or not (self.dir / DATA_NAME).is_file():
            raise ManifestError(f"no complete cache at {self.dir} (missing {INDEX_NAME} or {DATA_NAME}); {rebuild}")
        try:
            self.index = CacheIndex.from_json(json.loads(index_path.read_text()))
        except (ValueError, KeyError, TypeError) as exc:
            raise ManifestError(f"{index_path}: unreadable cache index ({exc}); {rebuild}") from exc
        idx = self.index
        digest = manifest_sha256(manifest_path)
        if idx.manifest_sha256 != digest:
            raise ManifestError(
                f"stale cache {self.dir}: built from a manifest with sha256 {idx.manifest_sha256[:12]}..., but "
                f"{manifest_path} now has {digest[:12]}... (it changed since); {rebuild}"
            )
        wanted = {"size": size, "channels": channels, "resize_mode": resize_mode, "view": view,
                  "volume": policy}
        for key, want in wanted.items():
            if getattr(idx, key) != want:
                raise ManifestError(f"cache {self.dir} has {key}={getattr(idx, key)!r} but {want!r} was asked; "
                                    f"{rebuild}")
        expected_bytes = int(np.prod(idx.shape))
        if (self.dir / DATA_NAME).stat().st_size != expected_bytes:
            raise ManifestError(f"cache {self.dir / DATA_NAME} has the wrong size for shape {idx.shape}; {rebuild}")
        self.errors = {int(e["row"]): e for e in idx.errors}
        self._mm: np.memmap | None = None

    @property
    def memmap(self) -> np.memmap:
        if self._mm is None:
            self._mm = np.memmap(self.dir / DATA_NAME, dtype=np.uint8, mode="r", shape=tuple(self.index.shape))
        return self._mm

    @property
    def is_volume(self) -> bool:
        return len(self.index.shape) == 4 and self.index.channels == 1

    def get(self, row: int) -> torch.Tensor:
        """uint8 tensor ``[C, ...]`` for a manifest row; rows that failed at build time raise again."""
        if row in self.errors:
            e = self.errors[row]
            raise ImageReadError(e["file"], f"{e['reason']} (recorded in cache {self.dir})")
        if row not in self.index.rows:
            raise MedvlError(f"cache {self.dir} has no manifest row {row}")
        arr = torch.from_numpy(np.array(self.memmap[self.index.rows[row]]))
        return arr[None] if self.index.channels == 1 else arr

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_mm"] = None
        return state
