"""Every metric against scikit-learn on random inputs, plus the absent-class edge case."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, roc_auc_score

from medvl.evaluate.metrics import AbsentClassWarning, binary_auroc, compute_metrics


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _ece_reference(conf: np.ndarray, correct: np.ndarray, n_bins: int = 15) -> float:
    """ECE from sklearn's calibration_curve (same uniform bins) weighted by bin counts."""
    prob_true, prob_pred = calibration_curve(correct.astype(int), conf, n_bins=n_bins, strategy="uniform")
    edges = np.linspace(0, 1, n_bins + 1)
    counts = np.bincount(np.searchsorted(edges[1:-1], conf), minlength=n_bins)
    counts = counts[counts > 0]
    return float(np.sum(counts / conf.size * np.abs(prob_true - prob_pred)))


def _ece_loop(conf: np.ndarray, correct: np.ndarray, n_bins: int = 15) -> float:
    """Plain-loop ECE with (lo, hi] bins (0 goes to the first bin)."""
    edges = np.linspace(0, 1, n_bins + 1)
    total = 0.0
    for i in range(n_bins):
        lo, hi = edges[i], edges[i + 1]
        m = (conf > lo) & (conf <= hi) if i else (conf <= hi)
        if m.any():
            total += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return total


@pytest.mark.parametrize("seed", range(5))
def test_binary_matches_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 200
    y = rng.integers(0, 2, n)
    p1 = np.clip(0.5 * y + rng.random(n) * 0.6 - 0.05, 0, 1)
    p1[:10] = 0.5  # ties and the exact threshold
    scores = np.stack([1 - p1, p1], 1)
    onehot = np.eye(2)[y]
    m = compute_metrics(scores, onehot, "binary", class_names=["benign", "malignant"])
    pred = (p1 > 0.5).astype(int)
    assert m["auroc"].value == pytest.approx(roc_auc_score(y, p1), abs=1e-12)
    assert m["accuracy"].value == pytest.approx(accuracy_score(y, pred), abs=1e-12)
    assert m["balanced_accuracy"].value == pytest.approx(balanced_accuracy_score(y, pred), abs=1e-12)
    assert m["f1"].value == pytest.approx(f1_score(y, pred, average="macro"), abs=1e-12)
    assert m["f1"].per_class["malignant"] == pytest.approx(f1_score(y, pred), abs=1e-12)
    conf = np.maximum(p1, 1 - p1)
    assert m["ece"].value == pytest.approx(_ece_reference(conf, pred == y), abs=1e-12)
    assert m["ece"].value == pytest.approx(_ece_loop(conf, pred == y), abs=1e-12)
    # [N] positive-probability scores and [N] int labels give the same numbers
    m1 = compute_metrics(p1, y, "binary")
    for k in m:
        assert m1[k].value == pytest.approx(m[k].value, abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_multiclass_matches_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, k = 300, 5
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[y]
    scores = _softmax(logits)
    m = compute_metrics(scores, y, "multiclass")
    pred = scores.argmax(1)
    assert m["auroc"].value == pytest.approx(roc_auc_score(y, scores, multi_class="ovr", average="macro"), abs=1e-12)
    for c in range(k):
        assert m["auroc"].per_class[str(c)] == pytest.approx(roc_auc_score(y == c, scores[:, c]), abs=1e-12)
    assert m["accuracy"].value == pytest.approx(accuracy_score(y, pred), abs=1e-12)
    assert m["balanced_accuracy"].value == pytest.approx(balanced_accuracy_score(y, pred), abs=1e-12)
    assert m["f1"].value == pytest.approx(f1_score(y, pred, average="macro"), abs=1e-12)
    conf = scores.max(1)
    assert m["ece"].value == pytest.approx(_ece_reference(conf, pred == y), abs=1e-12)
    # one-hot labels are equivalent to indices
    m2 = compute_metrics(scores, np.eye(k)[y], "multiclass")
    assert m2["f1"].value == m["f1"].value


@pytest.mark.parametrize("seed", range(5))
def test_multilabel_matches_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, k = 250, 4
    y = (rng.random((n, k)) < 0.3).astype(float)
    scores = np.clip(0.4 * y + rng.random((n, k)) * 0.7, 0, 1)
    m = compute_metrics(scores, y, "multilabel")
    pred = (scores > 0.5).astype(int)
    assert m["auroc"].value == pytest.approx(roc_auc_score(y, scores, average="macro"), abs=1e-12)
    assert m["f1"].value == pytest.approx(f1_score(y, pred, average="macro"), abs=1e-12)
    acc = np.mean([accuracy_score(y[:, c], pred[:, c]) for c in range(k)])
    assert m["accuracy"].value == pytest.approx(acc, abs=1e-12)
    ba = np.mean([balanced_accuracy_score(y[:, c], pred[:, c]) for c in range(k)])
    assert m["balanced_accuracy"].value == pytest.approx(ba, abs=1e-12)
    ece = np.mean([_ece_reference(np.maximum(scores[:, c], 1 - scores[:, c]), pred[:, c] == y[:, c])
                   for c in range(k)])
    assert m["ece"].value == pytest.approx(ece, abs=1e-12)


def test_multilabel_ignores_uncertain_and_unknown() -> None:
    rng = np.random.default_rng(0)
    n, k = 200, 3
    y = (rng.random((n, k)) < 0.4).astype(float)
    scores = np.clip(0.3 * y + rng.random((n, k)) * 0.7, 0, 1)
    masked = y.copy()
    masked[:20, 0] = -1
    masked[20:40, 1] = np.nan
    m = compute_metrics(scores, masked, "multilabel")
    keep0 = np.arange(n) >= 20
    keep1 = (np.arange(n) < 20) | (np.arange(n) >= 40)
    assert m["auroc"].per_class["0"] == pytest.approx(roc_auc_score(y[keep0, 0], scores[keep0, 0]))
    assert m["auroc"].per_class["1"] == pytest.approx(roc_auc_score(y[keep1, 1], scores[keep1, 1]))
    assert m["accuracy"].per_class["0"] == pytest.approx(accuracy_score(y[keep0, 0], scores[keep0, 0] > 0.5))


def test_binary_auroc_ties_match_sklearn() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 500)
    s = rng.integers(0, 4, 500).astype(float)  # heavy ties
    assert binary_auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_absent_class_multiclass_warns_and_averages_present() -> None:
    rng = np.random.default_rng(1)
    n, k = 120, 4
    y = rng.integers(0, 3, n)  # class 3 ("effusion") never occurs
    scores = _softmax(rng.normal(size=(n, k)) + np.eye(k)[y])
    names = ["normal", "nodule", "mass", "effusion"]
    with pytest.warns(AbsentClassWarning, match="effusion"):
        m = compute_metrics(scores, y, "multiclass", class_names=names)
    assert np.isnan(m["auroc"].per_class["effusion"])
    assert m["auroc"].undefined == ["effusion"]
    present = np.mean([roc_auc_score(y == c, scores[:, c]) for c in range(3)])
    assert m["auroc"].value == pytest.approx(present, abs=1e-12)
    pred = scores.argmax(1)
    assert m["f1"].value == pytest.approx(f1_score(y, pred, labels=[0, 1, 2], average="macro"), abs=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns about the predicted-but-absent class
        assert m["balanced_accuracy"].value == pytest.approx(balanced_accuracy_score(y, pred), abs=1e-12)
    for r in m.values():
        assert not np.isnan(r.value)


def test_absent_class_multilabel_and_all_positive() -> None:
    rng = np.random.default_rng(2)
    n = 80
    y = (rng.random((n, 3)) < 0.5).astype(float)
    y[:, 1] = 0  # no positive
    y[:, 2] = 1  # no negative
    scores = rng.random((n, 3))
    with pytest.warns(AbsentClassWarning) as rec:
        m = compute_metrics(scores, y, "multilabel", class_names=["a", "b", "c"])
    msg = " ".join(str(w.message) for w in rec)
    assert "'b'" in msg and "'c'" in msg
    assert m["auroc"].value == pytest.approx(roc_auc_score(y[:, 0], scores[:, 0]))
    assert np.isnan(m["auroc"].per_class["b"]) and np.isnan(m["auroc"].per_class["c"])


def test_nothing_defined_is_a_warned_nan_not_a_crash() -> None:
    y = np.zeros(10, dtype=int)
    with pytest.warns(AbsentClassWarning, match="undefined"):
        m = compute_metrics(np.linspace(0, 1, 10), y, "binary")
    assert np.isnan(m["auroc"].value)
    assert m["accuracy"].value == pytest.approx(0.5)  # 5 of 10 scores <= 0.5


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="exactly one positive"):
        compute_metrics(np.ones((2, 3)) / 3, np.array([[1, 1, 0], [0, 0, 1]]), "multiclass")
    with pytest.raises(ValueError, match="task"):
        compute_metrics(np.ones((2, 2)), np.array([0, 1]), "regression")


def test_ece_bin_edges_follow_sklearn_convention() -> None:
    """Confidences exactly on bin edges go to the lower bin, (lo, hi], like calibration_curve."""
    edges = np.linspace(0, 1, 16)
    rng = np.random.default_rng(9)
    mids = (edges[:-1] + edges[1:]) / 2
    values = np.concatenate([edges[8:], mids[8:]])  # edges and bin centres, all > 0.5
    p1 = rng.choice(values, 300)  # top-label confidence = p1
    y = (rng.random(300) < p1).astype(int)
    m = compute_metrics(p1, y, "binary", metrics=["ece"])
    correct = (p1 > 0.5) == y
    assert m["ece"].value == pytest.approx(_ece_loop(p1, correct), abs=1e-12)
    assert m["ece"].value == pytest.approx(_ece_reference(p1, correct), abs=1e-12)
