"""Linear probe: a logistic regression on frozen features, at several training fractions.

Protocol (the CLIP / MedMNIST-probe convention): features are extracted once per split
(:mod:`medvl.evaluate.features`, cached); for each training fraction and seed a stratified
subset of the train split is drawn; features are standardised with that subset's statistics;
the L2 strength is chosen on the validation split from :data:`C_GRID`; the chosen model is
scored on the test split with bootstrap CIs.

The classifier is :class:`~medvl.evaluate.lbfgs.TorchLogisticRegression`: sklearn's objective and
stopping rule, the whole C grid solved as one batched L-BFGS problem (:mod:`medvl.evaluate.lbfgs`
says how and why it is faster). Its names are re-exported here, where callers have always found them.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from medvl.errors import ConfigError
from medvl.evaluate.lbfgs import BatchedLBFGS, GridSolution, TorchLogisticRegression, fit_logistic_grid

__all__ = ["C_GRID", "BatchedLBFGS", "GridSolution", "ProbeFit", "TorchLogisticRegression", "fit_logistic_grid",
           "fit_probe", "linear_probe_features", "stratified_subset"]

log = logging.getLogger(__name__)

C_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0)


# ---------------------------------------------------------------------- protocol
def stratified_subset(labels: np.ndarray, task: str, fraction: float, seed: int) -> np.ndarray:
    """Seeded subset of ``fraction`` of the rows, keeping class proportions and >= 1 sample per class.

    binary/multiclass: per class ``max(1, round(fraction * n_c))`` rows. multilabel: a uniform
    subset of ``round(fraction * N)`` rows, topped up with one positive of every class it missed.
    Returned indices are sorted.
    """
    if not 0 < fraction <= 1:
        raise ConfigError(f"training fraction must be in (0, 1], got {fraction}")
    n = labels.shape[0]
    if fraction >= 1:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    if task == "multilabel":
        idx = set(rng.permutation(n)[: max(1, round(fraction * n))].tolist())
        for c in range(labels.shape[1]):
            pos = np.flatnonzero(labels[:, c] == 1)
            if pos.size and not any(i in idx for i in pos.tolist()):
                idx.add(int(rng.choice(pos)))
        return np.array(sorted(idx), dtype=np.int64)
    y = labels.argmax(1) if labels.ndim == 2 and labels.shape[1] > 1 else labels.reshape(-1).astype(np.int64)
    picks = []
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        k = max(1, int(round(fraction * members.size)))
        picks.append(rng.permutation(members)[:k])
    return np.sort(np.concatenate(picks))


def _targets(labels: np.ndarray, task: str) -> np.ndarray:
    """Model targets: class indices (binary/multiclass) or the [N, K] matrix (multilabel)."""
    if task == "multilabel":
        return labels
    if labels.shape[1] == 1:
        return labels[:, 0].astype(np.int64)
    return labels.argmax(1)


def _standardise(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    mu = train.mean(0, keepdims=True)
    sd = train.std(0, keepdims=True) + 1e-6
    return [((a - mu) / sd).astype(np.float32) for a in (train, *others)]


@dataclass
class ProbeFit:
    """A fitted probe with the C chosen on validation and the whole validation curve."""

    model: TorchLogisticRegression
    C: float
    val_curve: dict[float, float]
    select_metric: str


def fit_probe(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, task: str,
              n_classes: int, classes: Sequence[str] | None = None, c_grid: Sequence[float] = C_GRID,
              select_metric: str = "auroc", device: str = "cpu", max_iter: int = 1000,
              tol: float = 1e-4) -> ProbeFit:
    """Fit one probe per C (the whole grid solved as one batched problem) and keep the best on validation.

    Ties (and NaN validation metrics) resolve to the stronger regularisation (smaller C).
    """
    from medvl.evaluate.metrics import compute_metrics, oriented

    grid = sorted(float(c) for c in c_grid)
    models = fit_logistic_grid(x_train, _targets(y_train, task), grid, task=task, n_classes=n_classes,
                               max_iter=max_iter, tol=tol, device=device)
    x_val_t = torch.as_tensor(x_val).to(models[0].device, models[0].dtype)
    curve: dict[float, float] = {}
    best: tuple[float, float, TorchLogisticRegression] | None = None
    for c, m in zip(grid, models, strict=True):
        probs = m.predict_proba(x_val_t)
        scores = probs[:, 1:] if task == "binary" and y_val.shape[1] == 1 else probs
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            v = compute_metrics(scores, y_val, task, metrics=[select_metric], class_names=classes,
                                warn=False)[select_metric].value
        v = oriented(select_metric, v)
        curve[c] = float(v)
        if not np.isnan(v) and (best is None or v > best[0] + 1e-12):
            best = (v, c, m)
    if best is None:  # metric undefined on validation for every C: fall back to the middle of the grid
        c = grid[len(grid) // 2]
        warnings.warn(f"linear probe: validation {select_metric} undefined for every C; using C={c}",
                      RuntimeWarning, stacklevel=2)
        return ProbeFit(models[len(grid) // 2], c, curve, select_metric)
    return ProbeFit(best[2], best[1], curve, select_metric)


def linear_probe_features(train: Any, val: Any | None, test: Any, task: str, classes: Sequence[str],
                          fractions: Sequence[float] = (1.0,), seeds: Sequence[int] = (0,),
                          c_grid: Sequence[float] = C_GRID, select_metric: str = "auroc", device: str = "cpu",
                          model_name: str = "", dataset: str = "", split: str = "test", n_boot: int = 1000,
                          max_iter: int = 1000) -> list[Any]:
    """The probe protocol on extracted :class:`~medvl.evaluate.features.Features`: one result per (fraction, seed)."""
    from medvl.evaluate.features import classification_labels
    from medvl.evaluate.results import Predictions, make_result

    y_tr_all = classification_labels(train, task)
    y_te = classification_labels(test, task)
    x_tr_all = train.x
    if val is None:
        warnings.warn("linear probe: no validation split; holding out 10% of train (stratified, seed 0) "
                      "to choose C", RuntimeWarning, stacklevel=2)
        held = stratified_subset(y_tr_all, task, 0.1, seed=0)
        keep = np.setdiff1d(np.arange(len(y_tr_all)), held)
        x_val, y_val = x_tr_all[held], y_tr_all[held]
        x_tr_all, y_tr_all = x_tr_all[keep], y_tr_all[keep]
    else:
        x_val, y_val = val.x, classification_labels(val, task)
    n_classes = max(2, y_te.shape[1])
    results = []
    for fraction in fractions:
        for seed in seeds:
            idx = stratified_subset(y_tr_all, task, fraction, seed)
            xtr, xv, xte = _standardise(x_tr_all[idx], x_val, test.x)
            fit = fit_probe(xtr, y_tr_all[idx], xv, y_val, task, n_classes, classes, c_grid, select_metric,
                            device, max_iter)
            probs = fit.model.predict_proba(xte)
            scores = probs[:, 1:] if task == "binary" and y_te.shape[1] == 1 else probs
            log.info("linear probe: fraction %g seed %d n_train %d -> C=%g (val %s %.4f)", fraction, seed,
                     idx.size, fit.C, select_metric, fit.val_curve.get(fit.C, float("nan")))
            preds = Predictions(ids=test.ids, scores=scores, labels=y_te, label_task=task, classes=list(classes),
                                patient_ids=test.patient_ids, rows=test.rows)
            config = {"fraction": fraction, "seed": seed, "n_train": int(idx.size), "C": fit.C,
                      "select_metric": select_metric, "val_curve": {str(k): v for k, v in fit.val_curve.items()},
                      "c_grid": list(c_grid), "solver": "torch-lbfgs-grid", "n_iter": fit.model.n_iter_,
                      "converged": fit.model.converged_}
            results.append(make_result(preds, model_name, "linear-probe", dataset, split, config,
                                       n_boot=n_boot, seed=seed))
    return results
