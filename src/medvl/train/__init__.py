"""Training: config schema, loop, checkpoints with exact resume, DDP, shards.

Public API (imported lazily so ``import medvl.train`` stays cheap for the CLI)::

    load_train_config(path, overrides, out_dir) -> TrainConfig
    train(cfg, resume=False, batch_hook=None) -> TrainResult
    latest_checkpoint(out_dir) -> Path | None
    write_shards(manifest, out, shard_size=1000) / ShardDataset(dir, ...)
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "TrainConfig": "medvl.train.config",
    "load_train_config": "medvl.train.config",
    "build_train_config": "medvl.train.config",
    "train": "medvl.train.trainer",
    "TrainResult": "medvl.train.trainer",
    "latest_checkpoint": "medvl.train.checkpoint",
    "write_shards": "medvl.train.shards",
    "ShardDataset": "medvl.train.shards",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'medvl.train' has no attribute {name!r}")
