"""Random-number-generator state: seed, capture, restore, and per-sample isolation.

Exact resume needs every random stream the loop draws from to be either restored from the
checkpoint (torch, CUDA, numpy, Python ``random``: :func:`capture_rng_state` /
:func:`restore_rng_state`) or be a pure function of (seed, epoch, index) (data order and
augmentation: :func:`sample_seed` + :func:`isolated_rng`). States are stored as tensors and
plain ints/tuples only, so ``torch.load(weights_only=True)`` can read them back.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy's legacy global RNG and Python's ``random``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def sample_seed(*parts: int) -> int:
    """A 63-bit seed that is a stable hash of integers, e.g. ``(seed, epoch, index)``.

    A hash (not ``seed + epoch``) so that neighbouring epochs/indices get unrelated streams.
    """
    data = b"".join(int(p).to_bytes(8, "little", signed=True) for p in parts)
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") >> 1


def capture_rng_state() -> dict[str, Any]:
    """Every global RNG state, as tensors and primitive containers."""
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(np_state[0]),
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {"version": int(py_version), "internal": list(py_internal), "gauss": py_gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextmanager
def isolated_rng(seed: int) -> Iterator[None]:
    """Run a block with all global CPU RNGs seeded to ``seed``, then put the old states back.

    Wrapping ``dataset[i]`` in this makes any augmentation that draws from the global RNGs a
    function of ``seed`` alone, whichever process (main or DataLoader worker) runs it, and
    leaves the training stream (dropout...) untouched by data loading.
    """
    torch_state = torch.get_rng_state()
    np_state = np.random.get_state()
    py_state = random.getstate()
    # The CPU generator only: torch.manual_seed would also reseed (and so perturb) CUDA streams.
    torch.random.default_generator.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
    try:
        yield
    finally:
        torch.set_rng_state(torch_state)
        np.random.set_state(np_state)
        random.setstate(py_state)
