"""Segmentation checkpoints: ``weights.safetensors`` + ``config.yaml``, the same layout as CLIP checkpoints.

``config.yaml`` holds ``medvl_format``, ``kind: segmentation`` and ``segmentation`` (the
:class:`~medvl.models.seg_heads.SegModel` config: tower config, head, classes, task, input
size). Loading rebuilds the model from it and loads the weights strictly; nothing is unpickled.
Written through :func:`medvl.train.checkpoint.atomic_write`, so a crash never leaves half a file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import yaml

from medvl.errors import CheckpointError, MedvlError
from medvl.models.seg_heads import SegModel

WEIGHTS_NAME = "weights.safetensors"
CONFIG_NAME = "config.yaml"
FORMAT_VERSION = 1


def save_seg_model(model: SegModel, directory: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write the weights (all parameters and buffers that persist) and the config into ``directory``."""
    from medvl.train.checkpoint import atomic_write, atomic_write_text

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(directory / WEIGHTS_NAME, lambda f: f.write(_safetensors_bytes(tensors)))
    doc = {"medvl_format": FORMAT_VERSION, "kind": "segmentation", "segmentation": model.cfg, **(extra or {})}
    atomic_write_text(directory / CONFIG_NAME, yaml.safe_dump(doc, sort_keys=False, width=1_000_000))
    return directory


def _safetensors_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save

    return save(tensors, metadata={"format": "pt", "medvl_format": str(FORMAT_VERSION)})


def is_seg_checkpoint(directory: str | Path) -> bool:
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        return False
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        return False
    return isinstance(doc, dict) and doc.get("kind") == "segmentation"


def read_seg_config(directory: str | Path) -> dict[str, Any]:
    directory = Path(directory)
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"segmentation checkpoint not found: {path} is missing")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise CheckpointError(f"{path}: invalid YAML ({exc})") from exc
    if not isinstance(doc, dict) or doc.get("kind") != "segmentation":
        raise CheckpointError(f"{directory} is not a segmentation checkpoint (config.yaml has no 'kind: "
                              "segmentation'); train one with `medvl train-seg`")
    return doc


def load_seg_model(directory: str | Path, device: str | torch.device = "cpu") -> SegModel:
    """Rebuild and load a segmentation checkpoint (a run's ``last`` link or a step directory)."""
    from safetensors.torch import load_file

    directory = Path(directory)
    doc = read_seg_config(directory)
    try:
        model = SegModel(doc["segmentation"], load_pretrained=False)
    except (MedvlError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{directory / CONFIG_NAME}: cannot rebuild the segmentation model: {exc}") from exc
    weights = directory / WEIGHTS_NAME
    try:
        state = load_file(str(weights))
    except Exception as exc:  # safetensors raises SafetensorError / OSError / FileNotFoundError
        raise CheckpointError(f"{weights}: missing, corrupt or unreadable ({exc})") from exc
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{weights}: does not fit the model in {CONFIG_NAME}: {str(exc)[:300]}") from exc
    return model.to(device).eval()
