"""Torch logistic regression vs sklearn, the batched C grid, probe protocol, and cosine kNN vs sklearn."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import expit, logsumexp
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier

from medvl.evaluate.features import Features
from medvl.evaluate.knn import knn_features, knn_scores
from medvl.evaluate.linear_probe import (
    TorchLogisticRegression,
    fit_logistic_grid,
    fit_probe,
    linear_probe_features,
    stratified_subset,
)
from medvl.evaluate.metrics import compute_metrics


def _mixture(n: int, d: int, k: int, seed: int, sep: float = 0.6) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d)) * sep
    y = rng.integers(0, k, n)
    x = centers[y] + rng.normal(size=(n, d))
    return x.astype(np.float32), y


@pytest.mark.parametrize("task,k,C", [("multiclass", 5, 1.0), ("multiclass", 3, 0.01), ("binary", 2, 0.1)])
def test_torch_logreg_matches_sklearn(task: str, k: int, C: float) -> None:
    x, y = _mixture(3000, 32, k, seed=k, sep=0.35)
    xtr, ytr, xte, yte = x[:2000], y[:2000], x[2000:], y[2000:]
    sk = LogisticRegression(C=C, max_iter=2000, tol=1e-6).fit(xtr, ytr)
    tm = TorchLogisticRegression(C=C, task=task, tol=1e-6).fit(xtr, ytr)
    acc_sk = (sk.predict(xte) == yte).mean()
    acc_tm = (tm.predict(xte) == yte).mean()
    assert 0.4 < acc_sk < 0.98  # a task where the classifier matters
    assert abs(acc_tm - acc_sk) <= 0.005
    # same objective -> nearly the same probabilities
    np.testing.assert_allclose(tm.predict_proba(xte), sk.predict_proba(xte), atol=2e-3)


def test_torch_logreg_multilabel_is_one_vs_rest() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1500, 16)).astype(np.float32)
    w = rng.normal(size=(16, 3))
    y = (x @ w + rng.normal(size=(1500, 3)) > 0.5).astype(np.float32)
    tm = TorchLogisticRegression(C=0.5, task="multilabel", tol=1e-6).fit(x, y)
    for c in range(3):
        sk = LogisticRegression(C=0.5, max_iter=2000, tol=1e-6).fit(x, y[:, c])
        np.testing.assert_allclose(tm.predict_proba(x)[:, c], sk.predict_proba(x)[:, 1], atol=2e-3)
    # unknown labels are masked: same fit as dropping those rows for that class
    y_masked = y.copy()
    y_masked[:300, 0] = np.nan
    tm2 = TorchLogisticRegression(C=0.5, task="multilabel", tol=1e-6).fit(x, y_masked)
    # per class, sum(loss)/N + |w|^2/(2CN) has the minimiser of sklearn's mean loss + |w|^2/(2C n_c)
    sk0 = LogisticRegression(C=0.5, max_iter=2000, tol=1e-6).fit(x[300:], y[300:, 0])
    np.testing.assert_allclose(tm2.predict_proba(x)[:, 0], sk0.predict_proba(x)[:, 1], atol=2e-3)


def _objective(x: np.ndarray, y: np.ndarray, coef: np.ndarray, intercept: np.ndarray, c: float,
               task: str) -> tuple[float, float]:
    """sklearn's objective ``mean loss + ||W||^2 / (2 C N)`` and its max |gradient|, in float64 numpy."""
    x, w, b = x.astype(np.float64), np.asarray(coef, np.float64), np.asarray(intercept, np.float64)
    n = len(x)
    z = x @ w.T + b
    if task == "multiclass":
        onehot = np.eye(w.shape[0])[y]
        loss = float(np.mean(logsumexp(z, 1) - (z * onehot).sum(1)))
        r = np.exp(z - logsumexp(z, 1, keepdims=True)) - onehot
    else:
        loss = float(np.mean(np.logaddexp(0, z[:, 0]) - y * z[:, 0]))
        r = expit(z) - y[:, None]
    gw, gb = r.T @ x / n + w / (c * n), r.mean(0)
    return loss + float((w * w).sum()) / (2 * c * n), max(float(np.abs(gw).max()), float(np.abs(gb).max()))


GRID = (0.01, 0.1, 1.0, 10.0, 100.0)


@pytest.mark.parametrize("task,k", [("multiclass", 4), ("binary", 2)])
def test_grid_solves_each_c_like_separate_fits_and_sklearn(task: str, k: int) -> None:
    """The batched grid reaches each C's optimum: the same objective value and weights as solving that C
    alone (and as sklearn, whose objective this is), with sklearn's stopping rule met."""
    x, y = _mixture(1500, 24, k, seed=10 + k, sep=0.35)
    x = x.astype(np.float64)  # tol=1e-6 is below what float32 weights resolve (|step| < ulp): test in float64
    grid = fit_logistic_grid(x, y, GRID, task=task, tol=1e-6, dtype=torch.float64)
    alone = fit_logistic_grid(x, y, GRID, task=task, tol=1e-6, dtype=torch.float64, lump=False)
    for c, m, a in zip(GRID, grid, alone, strict=True):
        single = TorchLogisticRegression(C=c, task=task, tol=1e-6, dtype=torch.float64).fit(x, y)
        sk = LogisticRegression(C=c, max_iter=5000, tol=1e-8).fit(x, y)
        f_sk, _ = _objective(x, y, sk.coef_, sk.intercept_, c, task)
        for other in (m, a, single):
            f, gmax = _objective(x, y, other.coef_.numpy(), other.intercept_.numpy(), c, task)
            assert other.converged_ and gmax <= 1.05e-6  # sklearn's rule, re-checked in float64
            assert abs(f - other.loss_) <= 1e-6 * max(1.0, f)  # the reported objective is sklearn's
            assert abs(f - f_sk) <= 1e-6  # the same optimum as sklearn
            np.testing.assert_allclose(other.coef_.numpy(), single.coef_.numpy(), atol=2e-3, rtol=1e-3)
            np.testing.assert_allclose(other.predict_proba(x), sk.predict_proba(x), atol=1e-3)


def test_grid_lumps_coinciding_c_values_exactly() -> None:
    """Weakly regularised C values whose optima coincide within tol are iterated once (they *follow* a
    neighbour), yet each returned model satisfies its own stopping rule exactly (checked in float64)."""
    x, y = _mixture(3000, 32, 5, seed=3, sep=0.3)
    cs = (0.01, 1.0, 10.0, 100.0, 1000.0, 1e4)
    lumped = fit_logistic_grid(x, y, cs, tol=1e-4)
    separate = fit_logistic_grid(x, y, cs, tol=1e-4, lump=False)
    assert lumped[0].n_problem_evals_ < 0.8 * separate[0].n_problem_evals_
    for c, m, s in zip(cs, lumped, separate, strict=True):
        f, gmax = _objective(x, y, m.coef_.numpy(), m.intercept_.numpy(), c, "multiclass")
        f_s, _ = _objective(x, y, s.coef_.numpy(), s.intercept_.numpy(), c, "multiclass")
        assert m.converged_ and gmax <= 1.02e-4
        assert abs(f - f_s) <= 1e-6
        assert (m.predict(x) != s.predict(x)).mean() <= 0.005


def test_grid_multilabel_matches_sklearn_one_vs_rest() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(1200, 12)).astype(np.float32)
    y = (x @ rng.normal(size=(12, 3)) + rng.normal(size=(1200, 3)) > 0.3).astype(np.float32)
    y[:200, 1] = np.nan  # unknown labels are masked out of that class's loss
    cs = (0.01, 1.0, 100.0)
    models = fit_logistic_grid(x, y, cs, task="multilabel", tol=1e-6)
    for c, m in zip(cs, models, strict=True):
        assert m.converged_
        probs = m.predict_proba(x)
        for j in range(3):
            known = ~np.isnan(y[:, j])
            sk = LogisticRegression(C=c, max_iter=5000, tol=1e-8).fit(x[known].astype(np.float64), y[known, j])
            np.testing.assert_allclose(probs[:, j], sk.predict_proba(x.astype(np.float64))[:, 1], atol=2e-3)


def test_uncentred_features_and_no_intercept_match_sklearn() -> None:
    x, y = _mixture(1500, 16, 3, seed=8, sep=0.4)
    x = x * 3 + 5  # far from standardised: the solver centres a copy internally
    x64 = x.astype(np.float64)  # (sklearn's float32 lbfgs stops at max|grad| ~2e-4 on these, whatever its tol)
    m = TorchLogisticRegression(C=0.3, tol=1e-6).fit(x, y)
    sk = LogisticRegression(C=0.3, max_iter=5000, tol=1e-8).fit(x64, y)
    np.testing.assert_allclose(m.predict_proba(x), sk.predict_proba(x64), atol=2e-3)
    assert _objective(x, y, m.coef_.numpy(), m.intercept_.numpy(), 0.3, "multiclass")[1] <= 1.05e-6
    m0 = TorchLogisticRegression(C=0.3, tol=1e-6, fit_intercept=False).fit(x - 5, y)
    sk0 = LogisticRegression(C=0.3, max_iter=5000, tol=1e-8, fit_intercept=False).fit(x64 - 5, y)
    assert float(m0.intercept_.abs().max()) == 0.0
    np.testing.assert_allclose(m0.predict_proba(x - 5), sk0.predict_proba(x64 - 5), atol=2e-3)
    warm = TorchLogisticRegression(C=3.0, tol=1e-6).fit(x, y, warm_start=m.state)  # warm start: same optimum
    cold = TorchLogisticRegression(C=3.0, tol=1e-6).fit(x, y)
    np.testing.assert_allclose(warm.predict_proba(x), cold.predict_proba(x), atol=1e-3)


def test_probe_protocol_selects_like_sklearn() -> None:
    """fit_probe (batched grid, C chosen on validation AUROC) vs sklearn fitting the same grid with warm
    starts and the same selection: same validation curve, same C, test accuracy within 0.5 points."""
    x, y = _mixture(4000, 48, 6, seed=21, sep=0.3)
    xtr, ytr, xva, yva, xte, yte = x[:2500], y[:2500], x[2500:3200], y[2500:3200], x[3200:], y[3200:]
    lab = np.eye(6, dtype=np.float32)
    fit = fit_probe(xtr, lab[ytr], xva, lab[yva], "multiclass", 6)
    clf = LogisticRegression(max_iter=1000, tol=1e-4, warm_start=True)
    curve = {}
    for c in sorted(fit.val_curve):
        clf.set_params(C=c).fit(xtr, ytr)
        curve[c] = compute_metrics(clf.predict_proba(xva), lab[yva], "multiclass", metrics=["auroc"],
                                   warn=False)["auroc"].value
        assert abs(curve[c] - fit.val_curve[c]) <= 2e-3
    best = max(curve, key=lambda c: (curve[c], -c))
    clf.set_params(C=best, warm_start=False).fit(xtr, ytr)
    acc_sk = float((clf.predict(xte) == yte).mean())
    acc = float((fit.model.predict(xte) == yte).mean())
    assert 0.4 < acc_sk < 0.95
    assert abs(acc - acc_sk) <= 0.005
    assert fit.C == best or abs(curve[fit.C] - curve[best]) <= 2e-3


def test_stratified_subset_keeps_every_class() -> None:
    y = np.eye(3)[np.array([0] * 90 + [1] * 9 + [2] * 1)]
    idx = stratified_subset(y, "multiclass", 0.1, seed=0)
    counts = np.bincount(y[idx].argmax(1), minlength=3)
    assert counts.tolist() == [9, 1, 1]
    assert np.array_equal(idx, stratified_subset(y, "multiclass", 0.1, seed=0))
    assert not np.array_equal(idx, stratified_subset(y, "multiclass", 0.1, seed=1))
    assert len(stratified_subset(y, "multiclass", 1.0, seed=0)) == 100


def _features(x: np.ndarray, y: np.ndarray, k: int, prefix: str) -> Features:
    n = len(x)
    return Features(x=x, labels=np.eye(k)[y].astype(np.float32), ids=np.array([f"{prefix}{i}" for i in range(n)]),
                    rows=np.arange(1, n + 1), patient_ids=np.array([f"{prefix}p{i}" for i in range(n)]),
                    classes=[f"c{i}" for i in range(k)])


def test_linear_probe_protocol_fractions() -> None:
    x, y = _mixture(1200, 16, 3, seed=4, sep=0.8)
    tr, va, te = _features(x[:600], y[:600], 3, "tr"), _features(x[600:800], y[600:800], 3, "va"), \
        _features(x[800:], y[800:], 3, "te")
    res = linear_probe_features(tr, va, te, "multiclass", ["c0", "c1", "c2"], fractions=(0.05, 1.0),
                                c_grid=(0.01, 1.0), n_boot=50)
    assert [r.records[0].config["fraction"] for r in res] == [0.05, 1.0]
    assert res[0].records[0].config["n_train"] < res[1].records[0].config["n_train"] == 600
    acc_small, acc_full = res[0].value("accuracy"), res[1].value("accuracy")
    assert acc_full > 0.8 and acc_full >= acc_small - 0.02
    assert res[1].predictions is not None and res[1].predictions.scores.shape == (400, 3)


@pytest.mark.parametrize("weights", ["distance", "uniform"])
def test_knn_matches_sklearn(weights: str) -> None:
    x, y = _mixture(700, 12, 4, seed=5, sep=0.7)
    xtr, ytr, xte = x[:500], y[:500], x[500:]
    ours = knn_scores(xtr, np.eye(4)[ytr], xte, "multiclass", k=15, weights=weights)
    sk = KNeighborsClassifier(n_neighbors=15, metric="cosine", weights=weights, algorithm="brute").fit(xtr, ytr)
    np.testing.assert_allclose(ours, sk.predict_proba(xte), atol=1e-6)


def test_knn_duplicates_and_multilabel() -> None:
    x, y = _mixture(200, 8, 2, seed=6)
    dup = x[:10].copy()  # exact copies of training points: sklearn gives them all the weight
    ours = knn_scores(x, np.eye(2)[y], dup, "binary", k=5, weights="distance")
    sk = KNeighborsClassifier(n_neighbors=5, metric="cosine", weights="distance", algorithm="brute").fit(x, y)
    np.testing.assert_allclose(ours, sk.predict_proba(dup), atol=1e-6)
    yl = np.stack([y, 1 - y], 1).astype(float)
    yl[:50, 1] = np.nan  # unknown labels do not vote
    s = knn_scores(x, yl, x[150:], "multilabel", k=7, weights="uniform")
    assert s.shape == (50, 2) and np.all((s >= 0) & (s <= 1))


def test_knn_protocol_chooses_k_on_validation() -> None:
    x, y = _mixture(900, 10, 3, seed=7, sep=0.5)
    tr, va, te = _features(x[:500], y[:500], 3, "tr"), _features(x[500:700], y[500:700], 3, "va"), \
        _features(x[700:], y[700:], 3, "te")
    res = knn_features(tr, va, te, "multiclass", ["c0", "c1", "c2"], ks=(1, 25), n_boot=20)
    cfg = res.records[0].config
    assert cfg["k"] == 25 and set(cfg["val_curve"]) == {"1", "25"}
    assert res.value("accuracy") > 0.5


def test_label_shapes_give_the_same_binary_model() -> None:
    """Class indices, a [N, 1] 0/1 column and one-hot rows are the same binary problem (a [N, 1] column
    was once argmax-ed to all zeros); non-integer or negative targets are refused."""
    x, y = _mixture(400, 8, 2, seed=5, sep=0.5)
    ref = TorchLogisticRegression(C=1.0, task="binary").fit(x, y)
    for labels in (y[:, None].astype(np.float32), np.eye(2, dtype=np.float32)[y]):
        m = TorchLogisticRegression(C=1.0, task="binary").fit(x, labels)
        np.testing.assert_allclose(m.predict_proba(x), ref.predict_proba(x), atol=1e-5)
    assert 0.3 < ref.predict(x).mean() < 0.7
    for bad in (np.full(400, 0.5, np.float32), np.where(y == 0, -1, 1)):
        with pytest.raises(ValueError, match="class indices"):
            TorchLogisticRegression(C=1.0, task="binary").fit(x, bad)
