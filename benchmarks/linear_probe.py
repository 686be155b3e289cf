"""Linear-probe classifier: medvl's torch L-BFGS logistic regression vs scikit-learn, same features.

Both fit the same L2-regularised objective (``mean loss + ||W||^2 / (2 C N)``) on the same
float32 features with the same tolerance; we report wall time (median of ``--repeats`` after a
warm-up fit), the time ratio and both test accuracies, for

* ``synthetic``: 20k x 512 features of a 10-class task made "real-ish" by a random non-linear
  projection of a 64-d Gaussian-mixture latent plus noise (accuracy ~0.6, not separable);
* ``breastmnist``: the shared BreastMNIST pixels (784) through a fixed random projection to 512
  (a real binary task, 546 training images), if ``../shared/data`` is present;

each once with a single C and once with the C grid a probe sweeps (7 values). medvl warm-starts
along the grid; sklearn is timed both the way probe code usually calls it (a fresh
``LogisticRegression`` per C) and with ``warm_start=True`` (the fair algorithmic comparison).

Usage: ``.venv/bin/python benchmarks/linear_probe.py [--threads 2] [--repeats 3] [--device cpu]``
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from medvl.evaluate.linear_probe import C_GRID, TorchLogisticRegression

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "medmnist" / "breastmnist.npz"


def synthetic(n: int = 20000, d: int = 512, k: int = 10, seed: int = 0) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    latent = 64
    centers = rng.normal(size=(k, latent)) * 0.25
    y = rng.integers(0, k, n)
    z = centers[y] + rng.normal(size=(n, latent))
    proj = rng.normal(size=(latent, d)) / np.sqrt(latent)
    x = np.tanh(z @ proj) + 0.5 * rng.normal(size=(n, d))
    cut = int(0.75 * n)
    return _standardise(x[:cut], x[cut:]) + (y[:cut], y[cut:])


def breastmnist(d: int = 512, seed: int = 0) -> tuple[np.ndarray, ...] | None:
    if not SHARED.is_file():
        return None
    with np.load(SHARED) as z:
        xtr = z["train_images"].reshape(len(z["train_images"]), -1) / 255.0
        xte = z["test_images"].reshape(len(z["test_images"]), -1) / 255.0
        ytr, yte = z["train_labels"].reshape(-1), z["test_labels"].reshape(-1)
    proj = np.random.default_rng(seed).normal(size=(xtr.shape[1], d)) / np.sqrt(xtr.shape[1])
    return _standardise(np.maximum(xtr @ proj, 0), np.maximum(xte @ proj, 0)) + (ytr, yte)


def _standardise(xtr: np.ndarray, xte: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    return ((xtr - mu) / sd).astype(np.float32), ((xte - mu) / sd).astype(np.float32)


def timed(fn: Callable[[], float], repeats: int) -> tuple[float, float]:
    fn()  # warm-up (thread pools, allocator)
    times, acc = [], 0.0
    for _ in range(repeats):
        t = time.perf_counter()
        acc = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), acc


def run(name: str, data: tuple[np.ndarray, ...], repeats: int, device: str, c: float) -> None:
    xtr, xte, ytr, yte = data
    task = "binary" if len(np.unique(ytr)) == 2 else "multiclass"

    def sk_one() -> float:
        return float((LogisticRegression(C=c, max_iter=1000, tol=1e-4).fit(xtr, ytr).predict(xte) == yte).mean())

    def tc_one() -> float:
        m = TorchLogisticRegression(C=c, task=task, tol=1e-4, device=device).fit(xtr, ytr)
        return float((m.predict(xte) == yte).mean())

    def sk_grid() -> float:
        best = 0.0
        for cc in C_GRID:
            best = max(best, float((LogisticRegression(C=cc, max_iter=1000, tol=1e-4).fit(xtr, ytr)
                                    .predict(xte) == yte).mean()))
        return best

    def sk_grid_warm() -> float:
        best, clf = 0.0, LogisticRegression(max_iter=1000, tol=1e-4, warm_start=True)
        for cc in C_GRID:
            clf.set_params(C=cc).fit(xtr, ytr)
            best = max(best, float((clf.predict(xte) == yte).mean()))
        return best

    def tc_grid() -> float:
        best, state = 0.0, None
        for cc in C_GRID:
            m = TorchLogisticRegression(C=cc, task=task, tol=1e-4, device=device).fit(xtr, ytr, warm_start=state)
            state = m.state
            best = max(best, float((m.predict(xte) == yte).mean()))
        return best

    cases = ((f"one C={c:g}", sk_one, tc_one), (f"grid {len(C_GRID)} C", sk_grid, tc_grid),
             (f"grid {len(C_GRID)} C, sklearn warm", sk_grid_warm, tc_grid))
    for label, sk, tc in cases:
        ts, acc_s = timed(sk, repeats)
        tt, acc_t = timed(tc, repeats)
        print(f"{name:12s} {str(xtr.shape):14s} {label:26s} sklearn {ts:7.3f}s acc {acc_s:.4f} | "
              f"medvl torch {tt:7.3f}s acc {acc_t:.4f} | speed-up x{ts / tt:5.1f} | "
              f"acc diff {100 * (acc_t - acc_s):+.2f} pts", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--C", type=float, default=1.0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(args.threads)  # same core budget for sklearn's BLAS/OpenMP
    except ImportError:
        pass
    print(f"torch {torch.__version__}, threads={args.threads}, device={args.device}")
    run("synthetic", synthetic(), args.repeats, args.device, args.C)
    bm = breastmnist()
    if bm is None:
        print(f"breastmnist: skipped ({SHARED} not found)")
    else:
        run("breastmnist", bm, args.repeats, args.device, args.C)


if __name__ == "__main__":
    main()
