"""A tiny report writer trained once per session on phantoms (a few seconds on one CPU thread)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tiny_lm, shared with benchmarks/generation_speed.py

from medvl.data.synthetic import generate_phantoms

TINY = {"embed_dim": 32, "image": {"kwargs": {"output_stride": 8}},
        "text": {"width": 32, "layers": 1, "heads": 2, "context_length": 64, "vocab_size": 300}}


@pytest.fixture(scope="session")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_phantoms(tmp_path_factory.mktemp("ph"), n=60, size=32, seed=0)


@pytest.fixture(scope="session")
def caption_run(phantoms: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from medvl.train.config import build_train_config
    from medvl.train.trainer import train

    out = tmp_path_factory.mktemp("run") / "cap"
    cfg = {
        "data": {"manifest": str(phantoms), "image_size": 32, "channels": 1},
        "model": {"name": "clip-tiny", "overrides": TINY},
        "objectives": [{"name": "infonce"}, {"name": "caption", "layers": 1}],
        "optim": {"lr": 1e-2, "warmup_steps": 1, "weight_decay": 0.0},
        "train": {"max_steps": 25, "batch_size": 16, "seed": 0, "device": "cpu", "ckpt_every": 25,
                  "log_every": 5, "out_dir": str(out), "threads": 1, "progress": False, "tensorboard": False},
    }
    train(build_train_config(cfg))
    return out
