"""Torch logistic regression vs sklearn, probe protocol, and cosine kNN vs sklearn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier

from medvl.evaluate.features import Features
from medvl.evaluate.knn import knn_features, knn_scores
from medvl.evaluate.linear_probe import TorchLogisticRegression, linear_probe_features, stratified_subset


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
