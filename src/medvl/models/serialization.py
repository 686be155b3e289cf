"""Save/load a :class:`CLIPModel` as ``weights.safetensors`` + ``config.yaml``.

Why this format: safetensors never executes code on load (unlike pickle) and ``config.yaml``
holds everything needed to rebuild the model, tokenizer JSON included, so a checkpoint dir is
self-contained. Both files are written atomically (temp file, fsync, rename) so a crash never
leaves a half-written checkpoint behind.

``config.yaml`` layout: ``{"medvl_format": 1, "model": <ModelConfig dict>, ...extra}``; the
trainer may add its own sections through ``extra`` (e.g. ``train:``); :func:`load_model` reads
only ``model``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml

from medvl.config import from_dict
from medvl.errors import CheckpointError, MedvlError
from medvl.models.clip import CLIPModel
from medvl.models.config import ModelConfig

WEIGHTS_NAME = "weights.safetensors"
CONFIG_NAME = "config.yaml"
FORMAT_VERSION = 1


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic_write(path: Path, write: Any) -> None:
    """Write via ``write(tmp_path)`` into a temp file beside ``path``, fsync, then rename over it."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; checkpoints are shared
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def _tensors_for_saving(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """State dict on CPU with shared storages un-shared (safetensors refuses aliases)."""
    out: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, int]] = set()
    for key, value in model.state_dict().items():
        t = value.detach().to("cpu").contiguous()
        ident = (t.untyped_storage().data_ptr(), t.storage_offset())
        if ident in seen or t.untyped_storage().nbytes() != t.numel() * t.element_size():
            t = t.clone()
        seen.add((t.untyped_storage().data_ptr(), t.storage_offset()))
        out[key] = t
    return out


def save_model(model: CLIPModel, directory: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``weights.safetensors`` and ``config.yaml`` into ``directory`` (created if needed)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = _tensors_for_saving(model)
    _atomic_write(directory / WEIGHTS_NAME,
                  lambda tmp: save_file(tensors, tmp, metadata={"format": "pt", "medvl_format": str(FORMAT_VERSION)}))
    doc: dict[str, Any] = {"medvl_format": FORMAT_VERSION, "model": model.config}
    for key, value in (extra or {}).items():
        if key in doc:
            raise MedvlError(f"save_model: extra section {key!r} would overwrite a reserved key")
        doc[key] = value
    text = yaml.safe_dump(doc, sort_keys=False, width=1_000_000)
    _atomic_write(directory / CONFIG_NAME, lambda tmp: Path(tmp).write_text(text))
    return directory


def read_checkpoint_config(directory: str | Path) -> ModelConfig:
    """The :class:`ModelConfig` stored in a checkpoint dir (raises :class:`CheckpointError`)."""
    directory = Path(directory)
    cfg_path = directory / CONFIG_NAME
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint directory not found: {directory}")
    if not cfg_path.is_file():
        raise CheckpointError(f"{directory}: missing {CONFIG_NAME} (not a medvl checkpoint)")
    try:
        doc = yaml.safe_load(cfg_path.read_text())
    except yaml.YAMLError as exc:
        raise CheckpointError(f"{cfg_path}: invalid YAML: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("model"), dict):
        raise CheckpointError(f"{cfg_path}: no 'model' section (not a medvl model checkpoint)")
    try:
        return from_dict(ModelConfig, doc["model"], "model")
    except MedvlError as exc:
        raise CheckpointError(f"{cfg_path}: {exc}") from exc


def load_model(directory: str | Path, device: str | torch.device = "cpu") -> CLIPModel:
    """Rebuild the model from ``config.yaml`` and load ``weights.safetensors`` strictly.

    Raises :class:`CheckpointError` naming the file and the reason: missing files, unreadable or
    truncated safetensors, missing/unexpected keys or shape mismatches. Never unpickles.
    """
    from safetensors.torch import load_file

    directory = Path(directory)
    cfg = read_checkpoint_config(directory)
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointError(f"{directory}: missing {WEIGHTS_NAME}")
    try:
        state = load_file(str(weights))
    except Exception as exc:  # safetensors raises SafetensorError / OSError on corrupt files
        raise CheckpointError(f"{weights}: corrupt or unreadable safetensors file: {exc}") from exc
    try:
        model = CLIPModel(cfg, load_pretrained=False)
    except MedvlError as exc:
        raise CheckpointError(f"{directory / CONFIG_NAME}: cannot rebuild the model: {exc}") from exc
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing keys: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected keys: {', '.join(unexpected[:5])}{' ...' if len(unexpected) > 5 else ''}")
        if mismatched:
            k = mismatched[0]
            parts.append(f"shape mismatch for {len(mismatched)} tensors, e.g. {k}: file "
                         f"{tuple(state[k].shape)} vs config {tuple(own[k].shape)}")
        raise CheckpointError(f"{weights} does not match {directory / CONFIG_NAME}: {'; '.join(parts)}")
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()
