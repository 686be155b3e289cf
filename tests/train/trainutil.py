"""Helpers for trainer tests: a tiny PNG manifest whose captions describe the pictures, and a
tiny-model config, so a run takes a second or two on a shared CPU."""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image

SHAPES = {
    "upper left": (0.3, 0.3),
    "upper right": (0.3, 0.7),
    "lower left": (0.7, 0.3),
    "lower right": (0.7, 0.7),
}
SIZES = {"small": 0.12, "large": 0.25}


def make_manifest(root: Path, n: int = 64, size: int = 28, seed: int = 0, empty_text_rows: int = 0,
                  n_val: int = 0) -> Path:
    """PNG images with one bright blob; the caption names its position and size."""
    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(n + n_val):
        pos = list(SHAPES)[i % len(SHAPES)]
        big = list(SIZES)[(i // len(SHAPES)) % len(SIZES)]
        cy, cx = SHAPES[pos]
        r = SIZES[big]
        blob = ((yy - cy) ** 2 + (xx - cx) ** 2 < r**2).astype(np.float32)
        img = np.clip(0.2 * rng.random((size, size)) + 0.7 * blob, 0, 1)
        name = f"img/{i:04d}.png"
        Image.fromarray((img * 255).astype(np.uint8)).save(root / name)
        text = f"a {big} opacity in the {pos} zone"
        if i < empty_text_rows:
            text = ""
        rows.append({"image": name, "text": text, "labels": f"{pos.replace(' ', '_')}",
                     "split": "train" if i < n else "val", "patient_id": f"p{i}"})
    path = root / "manifest.csv"
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


TINY_MODEL = {
    "embed_dim": 32,
    "text": {"width": 32, "layers": 1, "heads": 2, "context_length": 16, "vocab_size": 200},
}


def tiny_config(manifest: Path, out_dir: Path, **sections: dict[str, Any]) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "data": {"manifest": str(manifest), "image_size": 28, "channels": 1},
        "model": {"name": "clip-tiny", "overrides": TINY_MODEL},
        "objectives": [{"name": "infonce", "weight": 1.0}],
        "optim": {"lr": 2e-3, "warmup_steps": 2, "weight_decay": 0.05},
        "train": {"max_steps": 12, "batch_size": 16, "seed": 0, "device": "cpu", "ckpt_every": 3,
                  "log_every": 1, "out_dir": str(out_dir), "threads": 1, "progress": False,
                  "tensorboard": False},
    }
    for name, values in sections.items():
        if isinstance(values, dict) and isinstance(cfg.get(name), dict):
            cfg[name] = {**cfg[name], **values}
        else:
            cfg[name] = values
    return cfg


def write_config(path: Path, cfg: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def medvl_cmd(*args: str) -> list[str]:
    """``medvl ...`` through the interpreter running the tests (no reliance on PATH)."""
    return [sys.executable, "-m", "medvl.cli", *args]


