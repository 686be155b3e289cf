"""Checkpoint directories written so that a crash at any instant leaves the previous one valid.

Layout of a run directory::

    out_dir/
      config.yaml                  resolved training config of the run
      checkpoints/step_000300/     weights.safetensors + config.yaml (models.save_model),
                                   train_state.pt, train_config.yaml, complete
      last -> checkpoints/step_000300   (symlink, replaced atomically)
      latest                       text file naming the newest checkpoint (written atomically)

A checkpoint is assembled in a hidden temporary directory, every file is fsynced, a
``complete`` marker (JSON listing each file's size) is written last, and only then is the
directory renamed into place. A directory without a valid marker is never loaded, so a process
killed mid-write (or a full disk) can only lose the checkpoint being written.

``train_state.pt`` holds tensors and primitive containers only and is read with
``torch.load(weights_only=True)``: loading a checkpoint never unpickles arbitrary objects.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml

from medvl.errors import CheckpointError

CHECKPOINTS = "checkpoints"
MARKER = "complete"
TRAIN_STATE = "train_state.pt"
TRAIN_CONFIG = "train_config.yaml"
_STEP_RE = re.compile(r"^step_(\d+)$")


def step_dir_name(step: int) -> str:
    return f"step_{step:06d}"


def fsync_dir(path: Path) -> None:
    """Make a rename/creation inside ``path`` durable (no-op where directories can't be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, writer: Callable[[Any], None], mode: str = "wb") -> None:
    """Write via ``writer(file)`` to a temp name beside ``path``, fsync, then rename over it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, mode) as f:
            writer(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text), mode="w")


def atomic_torch_save(obj: Any, path: Path) -> None:
    atomic_write(path, lambda f: torch.save(obj, f))


def _marker_content(ckpt: Path, step: int) -> str:
    files = {p.name: p.stat().st_size for p in sorted(ckpt.iterdir()) if p.is_file() and p.name != MARKER}
    return json.dumps({"step": step, "time": time.time(), "files": files}, indent=1)


def is_complete(ckpt: Path) -> bool:
    """True when the marker exists and every file it lists is present with the recorded size."""
    marker = Path(ckpt) / MARKER
    try:
        info = json.loads(marker.read_text())
        return all((Path(ckpt) / name).stat().st_size == size for name, size in info["files"].items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def list_checkpoints(out_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(out_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_RE.match(p.name)
        if m and p.is_dir() and is_complete(p):
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The newest *complete* checkpoint (scans the folder; never trusts a pointer alone)."""
    ckpts = list_checkpoints(out_dir)
    return ckpts[-1][1] if ckpts else None


def remove_partial(out_dir: str | Path) -> list[Path]:
    """Delete temporary/incomplete checkpoint dirs left by a crash; returns what was removed."""
    root = Path(out_dir) / CHECKPOINTS
    removed = []
    if root.is_dir():
        for p in root.iterdir():
            if p.is_dir() and (p.name.startswith(".") or not is_complete(p)):
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
    return removed


def _point_last(out_dir: Path, ckpt: Path) -> None:
    rel = ckpt.relative_to(out_dir)
    atomic_write_text(out_dir / "latest", f"{rel.as_posix()}\n")
    link, tmp = out_dir / "last", out_dir / f".last.tmp-{os.getpid()}"
    try:
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        os.symlink(rel, tmp, target_is_directory=True)
        os.replace(tmp, link)
    except OSError:  # no symlinks here (some filesystems): the `latest` file still points at it
        if tmp.is_symlink():
            tmp.unlink()


def save_checkpoint(out_dir: str | Path, step: int, write_model: Callable[[Path], None],
                    train_state: dict[str, Any], config: dict[str, Any], keep_last: int = 0) -> Path:
    """Write checkpoint ``step`` atomically and point ``last``/``latest`` at it.

    ``write_model(dir)`` writes the weights and model config (``medvl.models.save_model``).
    With ``keep_last > 0`` older complete checkpoints beyond the newest ``keep_last`` are deleted
    *after* the new one is in place.
    """
    out_dir = Path(out_dir)
    root = out_dir / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / step_dir_name(step)
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        write_model(tmp)
        atomic_torch_save(train_state, tmp / TRAIN_STATE)
        atomic_write_text(tmp / TRAIN_CONFIG, yaml.safe_dump(config, sort_keys=False))
        atomic_write_text(tmp / MARKER, _marker_content(tmp, step))
        fsync_dir(tmp)
        if final.exists():  # re-saving a step (e.g. the end of a resumed run): swap, then drop
            old = root / f".old-{final.name}-{os.getpid()}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _point_last(out_dir, final)
    if keep_last > 0:
        for _, old_ckpt in list_checkpoints(out_dir)[:-keep_last]:
            shutil.rmtree(old_ckpt, ignore_errors=True)
    return final


def load_train_state(ckpt: str | Path) -> dict[str, Any]:
    """Read ``train_state.pt`` with ``weights_only=True``; CheckpointError when absent/corrupt."""
    ckpt = Path(ckpt)
    if not is_complete(ckpt):
        raise CheckpointError(f"{ckpt} is not a complete checkpoint (no valid '{MARKER}' marker)")
    try:
        return torch.load(ckpt / TRAIN_STATE, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises pickle/runtime/unpickling errors of many types
        raise CheckpointError(f"cannot read {ckpt / TRAIN_STATE}: {exc}") from exc


def load_train_config_dict(ckpt: str | Path) -> dict[str, Any]:
    path = Path(ckpt) / TRAIN_CONFIG
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} is not a mapping")
    return data
