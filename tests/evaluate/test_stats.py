"""Bootstrap CIs (coverage, patient grouping), paired bootstrap, DeLong and McNemar."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest, norm
from sklearn.metrics import roc_auc_score

from medvl.evaluate.stats import (
    GroupResampler,
    bootstrap_ci,
    bootstrap_statistic,
    delong_ci,
    delong_test,
    mcnemar_test,
    paired_bootstrap,
)


def _binary_task(rng: np.random.Generator, n: int, signal: float) -> tuple[np.ndarray, np.ndarray]:
    y = rng.integers(0, 2, n)
    p = 1 / (1 + np.exp(-(signal * (2 * y - 1) + rng.normal(size=n))))
    return p, y


def test_bootstrap_ci_covers_truth() -> None:
    """Accuracy of predictions that are right with probability 0.8: ~95% of CIs contain 0.8."""
    rng = np.random.default_rng(0)
    covered = 0
    sims = 100
    for s in range(sims):
        y = rng.integers(0, 2, 300)
        right = rng.random(300) < 0.8
        pred = np.where(right, y, 1 - y)
        ci = bootstrap_ci(pred.astype(float), y, "binary", metrics=["accuracy"], n_boot=200, seed=s)["accuracy"]
        assert ci.low <= ci.value <= ci.high
        covered += ci.low <= 0.8 <= ci.high
    assert 0.88 <= covered / sims <= 1.0


def test_bootstrap_is_seeded_and_reports_counts() -> None:
    rng = np.random.default_rng(1)
    p, y = _binary_task(rng, 150, 1.0)
    groups = np.repeat(np.arange(50), 3)
    a = bootstrap_ci(p, y, "binary", groups=groups, n_boot=300, seed=7)
    b = bootstrap_ci(p, y, "binary", groups=groups, n_boot=300, seed=7)
    assert a == b
    assert a["auroc"].n == 150 and a["auroc"].n_groups == 50
    assert a["auroc"].value == pytest.approx(roc_auc_score(y, p))


def test_resampler_draws_whole_patients() -> None:
    sizes = np.array([1, 2, 3, 4, 5, 6])
    groups = np.repeat([f"p{i}" for i in range(6)], sizes)
    rng = np.random.default_rng(0)
    res = GroupResampler(len(groups), groups)
    assert res.n_groups == 6
    for _ in range(50):
        idx = res.draw(rng)
        drawn = groups[idx]
        for g, size in zip([f"p{i}" for i in range(6)], sizes, strict=True):
            assert (drawn == g).sum() % size == 0  # a patient comes with all of its images
        # exactly n_groups patients are drawn (with multiplicity)
        assert sum((drawn == f"p{i}").sum() // sizes[i] for i in range(6)) == 6


def test_patient_bootstrap_is_wider_for_clustered_images() -> None:
    """10 identical images per patient: grouped CI ~ sqrt(10) wider than the naive image CI."""
    rng = np.random.default_rng(2)
    hits = (rng.random(60) < 0.7).astype(float)
    values = np.repeat(hits, 10)
    groups = np.repeat(np.arange(60), 10)
    naive = bootstrap_statistic(values, n_boot=2000, seed=0)
    grouped = bootstrap_statistic(values, groups=groups, n_boot=2000, seed=0)
    ratio = (grouped.high - grouped.low) / (naive.high - naive.low)
    assert 2.3 < ratio < 4.2
    assert grouped.n_groups == 60 and naive.n_groups == 600


def test_paired_bootstrap_detects_difference_not_null() -> None:
    rng = np.random.default_rng(3)
    n = 300
    y = rng.integers(0, 2, n)
    strong = 1 / (1 + np.exp(-(2.0 * (2 * y - 1) + rng.normal(size=n))))
    weak = 1 / (1 + np.exp(-(0.3 * (2 * y - 1) + rng.normal(size=n))))
    real = paired_bootstrap(strong, weak, y, "binary", metric="auroc", n_boot=500, seed=0)
    assert real.delta > 0.2 and real.p_value < 0.01 and real.ci_low > 0
    # two equally good models with independent noise: no significant difference
    twin_a = 1 / (1 + np.exp(-(1.0 * (2 * y - 1) + rng.normal(size=n))))
    twin_b = 1 / (1 + np.exp(-(1.0 * (2 * y - 1) + rng.normal(size=n))))
    null = paired_bootstrap(twin_a, twin_b, y, "binary", metric="auroc", n_boot=500, seed=0)
    assert null.p_value > 0.05 and null.ci_low < 0 < null.ci_high
    same = paired_bootstrap(twin_a, twin_a, y, "binary", metric="accuracy", n_boot=200, seed=0)
    assert same.delta == 0 and same.p_value == 1.0


def _slow_delong(y: np.ndarray, s_a: np.ndarray, s_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong et al. (1988) written out with the O(m*n) kernel psi(x, y) = 1, 1/2, 0."""
    y = y.astype(bool)
    aucs, v10s, v01s = [], [], []
    for s in (s_a, s_b):
        x, z = s[y], s[~y]
        psi = (x[:, None] > z[None, :]) + 0.5 * (x[:, None] == z[None, :])
        aucs.append(psi.mean())
        v10s.append(psi.mean(1))
        v01s.append(psi.mean(0))
    m, n = y.sum(), (~y).sum()
    s10 = np.cov(np.vstack(v10s))
    s01 = np.cov(np.vstack(v01s))
    return np.array(aucs), s10 / m + s01 / n


@pytest.mark.parametrize("seed", range(4))
def test_delong_matches_slow_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 120
    y = rng.integers(0, 2, n)
    s_a = np.round(y + rng.normal(size=n), 1)  # rounding creates ties
    s_b = np.round(0.5 * y + rng.normal(size=n), 1)
    aucs, cov = _slow_delong(y, s_a, s_b)
    res = delong_test(y, s_a, s_b)
    assert res.value_a == pytest.approx(roc_auc_score(y, s_a), abs=1e-12)
    assert res.value_b == pytest.approx(aucs[1], abs=1e-12)
    z = (aucs[0] - aucs[1]) / np.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    assert res.statistic == pytest.approx(z, rel=1e-9)
    assert res.p_value == pytest.approx(2 * norm.sf(abs(z)), rel=1e-9)
    auc, lo, hi = delong_ci(y, s_a)
    half = norm.ppf(0.975) * np.sqrt(cov[0, 0])
    assert (lo, hi) == pytest.approx((aucs[0] - half, min(1.0, aucs[0] + half)), rel=1e-9)


def test_delong_is_calibrated_under_the_null() -> None:
    """Two equally informative scores: about 5% of DeLong p-values fall below 0.05."""
    rng = np.random.default_rng(5)
    small = 0
    sims = 300
    for _ in range(sims):
        y = rng.integers(0, 2, 100)
        a = y + rng.normal(size=100)
        b = y + rng.normal(size=100)
        small += delong_test(y, a, b).p_value < 0.05
    assert 0.015 < small / sims < 0.10


def test_mcnemar_exact_matches_scipy_binomtest() -> None:
    rng = np.random.default_rng(4)
    a = rng.random(60) < 0.8
    b = a.copy()
    flip = rng.choice(60, 9, replace=False)
    b[flip] = ~b[flip]
    res = mcnemar_test(a, b)
    n_b, n_c = int(np.sum(a & ~b)), int(np.sum(~a & b))
    assert res.method == "McNemar exact"
    assert res.p_value == pytest.approx(binomtest(n_b, n_b + n_c, 0.5).pvalue, rel=1e-12)
    assert mcnemar_test(a, a).p_value == 1.0


def test_mcnemar_large_counts_use_chi2() -> None:
    a = np.array([True] * 40 + [False] * 10 + [True] * 50)
    b = np.array([False] * 40 + [True] * 10 + [True] * 50)
    res = mcnemar_test(a, b)  # b=40, c=10
    assert res.method.startswith("McNemar chi2")
    assert res.statistic == pytest.approx((abs(40 - 10) - 1) ** 2 / 50)
    assert res.p_value < 1e-4
