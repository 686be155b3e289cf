"""Linear probe: medvl's batched torch logistic regression vs scikit-learn, same features, one run.

The comparison is the whole probe protocol: fit the C grid (:data:`C_GRID`, 7 values), choose C
on the validation split (``--select-metric``, the probe's AUROC by default; ties go to the
smaller C), report the chosen C and the test accuracy. scikit-learn is used the way a careful
user would: one ``LogisticRegression(solver="lbfgs", warm_start=True)`` refitted along the
increasing grid, same ``tol`` and ``max_iter``, float32 features (sklearn >= 1.8 keeps them in
float32). medvl is :func:`medvl.evaluate.linear_probe.fit_probe` (all C in one batched L-BFGS).
Both objectives are ``mean loss + ||W||^2 / (2 C N)`` with the stopping rule ``max|grad| <= tol``.
A single-C fit of each is timed as well.

Data:

* ``synthetic``: 20k x 512 features of a 10-class task made "real-ish" by a random non-linear
  projection of a 64-d Gaussian-mixture latent plus noise (accuracy ~0.6, not separable);
  15k train, the other 5k halved into validation and test;
* ``breastmnist``: the shared BreastMNIST pixels (784) through a fixed random projection to 512
  and a ReLU (a real binary task: 546 train / 78 val / 156 test images), if present.

Timing: ``--threads`` (default 1) for torch *and* sklearn's BLAS/OpenMP; one warm-up, then
``--repeats`` interleaved runs (sklearn, medvl, sklearn, ...); medians of wall time and of process
CPU time. On a shared machine the CPU-time ratio is the steadier one. Ends with a markdown table.

Usage: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/linear_probe.py [--repeats 5] [--device cpu]``
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from medvl.evaluate.linear_probe import C_GRID, TorchLogisticRegression, fit_probe
from medvl.evaluate.metrics import compute_metrics, oriented

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "medmnist" / "breastmnist.npz"
Splits = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # x/y train, val, test


def synthetic(n: int = 20000, d: int = 512, k: int = 10, seed: int = 0) -> tuple[np.ndarray, ...]:
    """(x_train, x_test, y_train, y_test): 75% / 25%, standardised with the train statistics."""
    rng = np.random.default_rng(seed)
    latent = 64
    centers = rng.normal(size=(k, latent)) * 0.25
    y = rng.integers(0, k, n)
    z = centers[y] + rng.normal(size=(n, latent))
    proj = rng.normal(size=(latent, d)) / np.sqrt(latent)
    x = np.tanh(z @ proj) + 0.5 * rng.normal(size=(n, d))
    cut = int(0.75 * n)
    return _standardise(x[:cut], x[cut:]) + (y[:cut], y[cut:])


def synthetic_splits() -> Splits:
    """:func:`synthetic` with its 5k held-out rows halved into validation and test."""
    xtr, xho, ytr, yho = synthetic()
    half = len(xho) // 2
    return xtr, ytr, xho[:half], yho[:half], xho[half:], yho[half:]


def breastmnist(d: int = 512, seed: int = 0) -> Splits | None:
    if not SHARED.is_file():
        return None
    with np.load(SHARED) as z:
        xs = [z[f"{s}_images"].reshape(len(z[f"{s}_images"]), -1) / 255.0 for s in ("train", "val", "test")]
        ys = [z[f"{s}_labels"].reshape(-1) for s in ("train", "val", "test")]
    proj = np.random.default_rng(seed).normal(size=(xs[0].shape[1], d)) / np.sqrt(xs[0].shape[1])
    xtr, xva, xte = _standardise(*(np.maximum(x @ proj, 0) for x in xs))
    return xtr, ys[0], xva, ys[1], xte, ys[2]


def _standardise(xtr: np.ndarray, *others: np.ndarray) -> tuple[np.ndarray, ...]:
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    return tuple(((x - mu) / sd).astype(np.float32) for x in (xtr, *others))


def _labels(y: np.ndarray, k: int) -> np.ndarray:
    """The probe's label matrix: [N, 1] for binary, one-hot [N, K] for multiclass."""
    return y[:, None].astype(np.float32) if k == 2 else np.eye(k, dtype=np.float32)[y]


def timed(fns: dict[str, Callable[[], tuple[float, float]]], repeats: int
          ) -> dict[str, tuple[float, float, tuple[float, float]]]:
    """name -> (median wall s, median CPU s, last result); one warm-up each, then interleaved repeats."""
    for fn in fns.values():
        fn()
    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    out: dict[str, tuple[float, float]] = {}
    for _ in range(repeats):
        for name, fn in fns.items():
            t, c = time.perf_counter(), time.process_time()
            out[name] = fn()
            cpu[name].append(time.process_time() - c)
            wall[name].append(time.perf_counter() - t)
    return {k: (statistics.median(wall[k]), statistics.median(cpu[k]), out[k]) for k in fns}


def run(name: str, data: Splits, repeats: int, device: str, c_one: float, metric: str, tol: float,
        rows: list[str]) -> None:
    xtr, ytr, xva, yva, xte, yte = data
    k = int(max(ytr.max(), yva.max(), yte.max())) + 1
    task = "binary" if k == 2 else "multiclass"
    lab_tr, lab_va = _labels(ytr, k), _labels(yva, k)

    def val_score(probs: np.ndarray) -> float:
        scores = probs[:, 1:] if task == "binary" else probs
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            v = compute_metrics(scores, lab_va, task, metrics=[metric], warn=False)[metric].value
        return oriented(metric, v)

    def sk_protocol() -> tuple[float, float]:
        clf = LogisticRegression(max_iter=1000, tol=tol, warm_start=True)
        best: tuple[float, float, float] | None = None  # (val, C, test acc)
        for c in sorted(C_GRID):
            clf.set_params(C=c).fit(xtr, ytr)
            v = val_score(clf.predict_proba(xva))
            if not np.isnan(v) and (best is None or v > best[0] + 1e-12):
                best = (v, c, float((clf.predict(xte) == yte).mean()))
        assert best is not None
        return best[1], best[2]

    def medvl_protocol() -> tuple[float, float]:
        fit = fit_probe(xtr, lab_tr, xva, lab_va, task, k, c_grid=C_GRID, select_metric=metric, device=device,
                        tol=tol)
        return fit.C, float((fit.model.predict(xte) == yte).mean())

    def sk_one() -> tuple[float, float]:
        clf = LogisticRegression(C=c_one, max_iter=1000, tol=tol).fit(xtr, ytr)
        return c_one, float((clf.predict(xte) == yte).mean())

    def medvl_one() -> tuple[float, float]:
        m = TorchLogisticRegression(C=c_one, task=task, tol=tol, device=device).fit(xtr, ytr)
        return c_one, float((m.predict(xte) == yte).mean())

    for label, sk, ours in ((f"one C={c_one:g}", sk_one, medvl_one),
                            (f"protocol: {len(C_GRID)} C + val {metric}", sk_protocol, medvl_protocol)):
        res = timed({"sklearn": sk, "medvl": ours}, repeats)
        (ws, cs, (c_s, acc_s)), (wt, ct, (c_t, acc_t)) = res["sklearn"], res["medvl"]
        print(f"{name:11s} {str(xtr.shape):12s} {label:27s} sklearn {ws:6.3f}s (cpu {cs:6.3f}s) C={c_s:<6g} "
              f"acc {acc_s:.4f} | medvl {wt:6.3f}s (cpu {ct:6.3f}s) C={c_t:<6g} acc {acc_t:.4f} | "
              f"speed-up x{ws / wt:4.1f} (cpu x{cs / ct:4.1f}) | acc diff {100 * (acc_t - acc_s):+.2f} pts",
              flush=True)
        rows.append(f"| {name} | {xtr.shape[0]}x{xtr.shape[1]}, {k} cl. | {label} | {ws:.3f} ({cs:.3f}) | "
                    f"{wt:.3f} ({ct:.3f}) | x{ws / wt:.1f} (x{cs / ct:.1f}) | {c_s:g} / {c_t:g} | "
                    f"{acc_s:.4f} / {acc_t:.4f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--C", type=float, default=1.0, help="C of the single-fit comparison")
    ap.add_argument("--select-metric", default="auroc")
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--only", choices=("synthetic", "breastmnist"), default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(args.threads)  # same core budget for sklearn's BLAS/OpenMP
    except ImportError:
        pass
    import sklearn
    print(f"torch {torch.__version__}, sklearn {sklearn.__version__}, threads={args.threads}, "
          f"device={args.device}, tol={args.tol}, C grid={C_GRID}")
    rows = ["| data | train | fit | sklearn s (cpu) | medvl s (cpu) | speed-up (cpu) | C sklearn / medvl | "
            "test acc sklearn / medvl |", "|---|---|---|---|---|---|---|---|"]
    if args.only in (None, "synthetic"):
        run("synthetic", synthetic_splits(), args.repeats, args.device, args.C, args.select_metric, args.tol, rows)
    if args.only in (None, "breastmnist"):
        bm = breastmnist()
        if bm is None:
            print(f"breastmnist: skipped ({SHARED} not found)")
        else:
            run("breastmnist", bm, args.repeats, args.device, args.C, args.select_metric, args.tol, rows)
    print("\n" + "\n".join(rows))


if __name__ == "__main__":
    main()
