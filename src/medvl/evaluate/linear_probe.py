"""Linear probe: a logistic regression on frozen features, at several training fractions.

Protocol (the CLIP / MedMNIST-probe convention): features are extracted once per split
(:mod:`medvl.evaluate.features`, cached); for each training fraction and seed a stratified
subset of the train split is drawn; features are standardised with that subset's statistics;
the L2 strength is chosen on the validation split from :data:`C_GRID` (warm-starting along the
grid); the chosen model is scored on the test split with bootstrap CIs.

The classifier, :class:`TorchLogisticRegression`, is hand-written in torch rather than taken
from scikit-learn because sklearn's ``LogisticRegression`` runs one C at a time in float64 on the
CPU; this one solves *the same objective* (``mean loss + ||W||^2 / (2 C N)``, unpenalised
intercept; softmax over K weight vectors for multiclass as sklearn's multinomial, one logistic
weight vector for binary as sklearn does, K independent sigmoids for multilabel one-vs-rest with
unknown labels masked) with full-batch L-BFGS on CPU or GPU, float32, and warm starts. Its
accuracy matches sklearn's (tests) and ``benchmarks/linear_probe.py`` measures the speed-up.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medvl.errors import ConfigError

log = logging.getLogger(__name__)

C_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0)


class TorchLogisticRegression:
    """Multinomial / binary / one-vs-rest logistic regression fitted by full-batch L-BFGS."""

    def __init__(self, C: float = 1.0, task: str = "multiclass", max_iter: int = 1000, tol: float = 1e-4,
                 fit_intercept: bool = True, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, history_size: int = 20, n_classes: int | None = None):
        if task not in ("binary", "multiclass", "multilabel"):
            raise ValueError(f"task must be binary, multiclass or multilabel, got {task!r}")
        self.C = float(C)
        self.task = task
        self.max_iter = max_iter
        self.tol = tol
        self.fit_intercept = fit_intercept
        self.device = torch.device(device)
        self.dtype = dtype
        self.history_size = history_size
        self.coef_: torch.Tensor | None = None  # [K', D]
        self.intercept_: torch.Tensor | None = None  # [K']
        self.n_iter_ = 0
        self.n_evals_ = 0
        self.n_classes_ = n_classes or 0  # give it when a training subset may miss a class

    # ------------------------------------------------------------------ helpers
    def _tensor(self, x: np.ndarray | torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(x).to(self.device, self.dtype)

    def _targets(self, y: np.ndarray | torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Class indices (binary/multiclass) or a [N, K] 0/1 matrix plus its validity mask."""
        y = torch.as_tensor(np.asarray(y))
        if self.task == "multilabel":
            y = y.to(self.device, self.dtype)
            mask = ((y == 0) | (y == 1)).to(self.dtype)
            return torch.where(mask > 0, y, torch.zeros_like(y)), mask
        if y.ndim == 2:
            y = y.argmax(1)
        return y.to(self.device, torch.long), None

    def _logits(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return x @ w.T + b

    # ------------------------------------------------------------------ API
    def fit(self, x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor,
            warm_start: tuple[torch.Tensor, torch.Tensor] | None = None) -> TorchLogisticRegression:
        """Fit on features ``x`` [N, D] and labels (indices, one-hot or multilabel [N, K])."""
        xt = self._tensor(x)
        n, d = xt.shape
        target, mask = self._targets(y, n)
        if self.task == "multilabel":
            k = target.shape[1]
            k_out = k
        else:
            k = int(target.max().item()) + 1 if self.n_classes_ == 0 else self.n_classes_
            k = max(k, 2)
            k_out = 1 if self.task == "binary" else k
        self.n_classes_ = k
        if warm_start is not None:
            w = warm_start[0].detach().clone().to(self.device, self.dtype).requires_grad_(True)
            b = warm_start[1].detach().clone().to(self.device, self.dtype).requires_grad_(True)
        else:
            w = torch.zeros(k_out, d, device=self.device, dtype=self.dtype, requires_grad=True)
            b = torch.zeros(k_out, device=self.device, dtype=self.dtype, requires_grad=True)
        params = [w, b] if self.fit_intercept else [w]
        reg = 1.0 / (2.0 * self.C * n)
        if self.task == "binary":
            yb = target.to(self.dtype)
        opt = torch.optim.LBFGS(params, lr=1.0, max_iter=self.max_iter, tolerance_grad=self.tol,
                                tolerance_change=1e-12, history_size=self.history_size,
                                line_search_fn="strong_wolfe")
        evals = 0

        def closure() -> torch.Tensor:
            nonlocal evals
            evals += 1
            opt.zero_grad(set_to_none=False)
            z = self._logits(xt, w, b if self.fit_intercept else torch.zeros_like(b))
            if self.task == "multiclass":
                loss = F.cross_entropy(z, target)
            elif self.task == "binary":
                loss = F.binary_cross_entropy_with_logits(z[:, 0], yb)
            else:
                per = F.binary_cross_entropy_with_logits(z, target, reduction="none") * mask
                loss = per.sum() / n
            loss = loss + reg * (w * w).sum()
            loss.backward()
            return loss

        opt.step(closure)
        state = opt.state[opt._params[0]]
        self.n_iter_ = int(state.get("n_iter", evals))
        self.n_evals_ = evals  # closure evaluations (line-search steps included)
        self.coef_ = w.detach()
        self.intercept_ = b.detach() if self.fit_intercept else torch.zeros_like(b).detach()
        return self

    @torch.no_grad()
    def decision_function(self, x: np.ndarray | torch.Tensor) -> torch.Tensor:
        if self.coef_ is None or self.intercept_ is None:
            raise RuntimeError("fit() first")
        return self._logits(self._tensor(x), self.coef_, self.intercept_)

    @torch.no_grad()
    def predict_proba(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        """[N, K] probabilities (binary: two columns, like sklearn)."""
        z = self.decision_function(x)
        if self.task == "multiclass":
            p = torch.softmax(z, dim=1)
        elif self.task == "binary":
            p1 = torch.sigmoid(z[:, 0])
            p = torch.stack([1 - p1, p1], dim=1)
        else:
            p = torch.sigmoid(z)
        return p.float().cpu().numpy()

    def predict(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        p = self.predict_proba(x)
        return (p > 0.5).astype(np.int64) if self.task == "multilabel" else p.argmax(1)

    @property
    def state(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(coef, intercept) to warm-start the next fit along a C grid."""
        if self.coef_ is None or self.intercept_ is None:
            raise RuntimeError("fit() first")
        return self.coef_, self.intercept_


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
    """Fit one probe per C (increasing, warm-started) and keep the best on validation.

    Ties (and NaN validation metrics) resolve to the stronger regularisation (smaller C).
    """
    from medvl.evaluate.metrics import compute_metrics

    curve: dict[float, float] = {}
    best: tuple[float, float, TorchLogisticRegression] | None = None
    state = None
    for c in sorted(c_grid):
        m = TorchLogisticRegression(C=c, task=task, max_iter=max_iter, tol=tol, device=device,
                                    n_classes=n_classes).fit(x_train, _targets(y_train, task), warm_start=state)
        state = m.state
        probs = m.predict_proba(x_val)
        scores = probs[:, 1:] if task == "binary" and y_val.shape[1] == 1 else probs
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            v = compute_metrics(scores, y_val, task, metrics=[select_metric], class_names=classes,
                                warn=False)[select_metric].value
        if select_metric == "ece":
            v = -v
        curve[c] = float(v)
        if not np.isnan(v) and (best is None or v > best[0] + 1e-12):
            best = (v, c, m)
    if best is None:  # metric undefined on validation for every C: fall back to the middle of the grid
        c = sorted(c_grid)[len(c_grid) // 2]
        warnings.warn(f"linear probe: validation {select_metric} undefined for every C; using C={c}",
                      RuntimeWarning, stacklevel=2)
        model = TorchLogisticRegression(C=c, task=task, max_iter=max_iter, tol=tol, device=device,
                                        n_classes=n_classes).fit(x_train, _targets(y_train, task))
        return ProbeFit(model, c, curve, select_metric)
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
                      "c_grid": list(c_grid), "solver": "torch-lbfgs", "n_iter": fit.model.n_iter_}
            results.append(make_result(preds, model_name, "linear-probe", dataset, split, config,
                                       n_boot=n_boot, seed=seed))
    return results
