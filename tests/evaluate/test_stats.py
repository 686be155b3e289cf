"""Bootstrap CIs (coverage, patient grouping), paired bootstrap, DeLong and McNemar."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binomtest, chi2, norm
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


def _coverage_bounds(sims: int, level: float = 0.95) -> tuple[float, float]:
    """Acceptable coverage range for ``sims`` simulated CIs: nominal +- 3 binomial sd, never including 100%.

    A percentile bootstrap with 150-200 replicates under-covers a little; a CI that is too wide (or
    [0, 1]) covers every time and must fail, so the upper bound stays below 1.
    """
    sd = float(np.sqrt(level * (1 - level) / sims))
    return level - 3 * sd - 0.02, min(level + 3 * sd, 1.0 - 1.0 / sims)


def test_bootstrap_ci_covers_truth() -> None:
    """Accuracy of predictions that are right with probability 0.8: ~95% of CIs contain 0.8, and they are
    about as wide as the normal-approximation interval (a vacuous [0, 1] CI fails both checks)."""
    rng = np.random.default_rng(0)
    covered, widths = 0, []
    sims, n = 150, 300
    for s in range(sims):
        y = rng.integers(0, 2, n)
        right = rng.random(n) < 0.8
        pred = np.where(right, y, 1 - y)
        ci = bootstrap_ci(pred.astype(float), y, "binary", metrics=["accuracy"], n_boot=200, seed=s)["accuracy"]
        assert ci.low <= ci.value <= ci.high
        covered += ci.low <= 0.8 <= ci.high
        widths.append(ci.high - ci.low)
    lo, hi = _coverage_bounds(sims)
    assert lo <= covered / sims <= hi, covered / sims
    wald = 2 * norm.ppf(0.975) * np.sqrt(0.8 * 0.2 / n)  # 0.0905
    assert 0.85 * wald <= float(np.mean(widths)) <= 1.15 * wald


def test_bootstrap_auroc_ci_covers_truth() -> None:
    """AUROC: scores sigmoid(s (2y - 1) + N(0, 1)) have true AUROC Phi(sqrt(2) s) (difference of two normals).

    ~95% of patient-free bootstrap CIs contain it, and their width matches DeLong's normal interval.
    """
    rng = np.random.default_rng(11)
    signal = 0.5
    truth = float(norm.cdf(np.sqrt(2) * signal))  # 0.760
    covered, ratios = 0, []
    sims, n = 120, 150
    for s in range(sims):
        p, y = _binary_task(rng, n, signal)
        ci = bootstrap_ci(p, y, "binary", metrics=["auroc"], n_boot=150, seed=s)["auroc"]
        covered += ci.low <= truth <= ci.high
        _, d_lo, d_hi = delong_ci(y, p)
        ratios.append((ci.high - ci.low) / (d_hi - d_lo))
    lo, hi = _coverage_bounds(sims)
    assert lo <= covered / sims <= hi, covered / sims
    assert 0.85 <= float(np.median(ratios)) <= 1.15


def test_coverage_bounds_reject_vacuous_intervals() -> None:
    """The checker itself: a CI that always covers (e.g. [0, 1]) is outside the accepted range."""
    lo, hi = _coverage_bounds(200)
    assert not lo <= 1.0 <= hi and lo <= 0.95 <= hi and 0.88 < lo


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
    stat = (abs(40 - 10) - 1) ** 2 / 50  # 16.82 by hand
    assert res.statistic == pytest.approx(stat, rel=1e-15)
    # chi-square with 1 df: P(X > x) = erfc(sqrt(x / 2)) exactly (X = Z^2), independent of scipy
    assert res.p_value == pytest.approx(math.erfc(math.sqrt(stat / 2)), rel=1e-12)
    assert res.p_value == pytest.approx(chi2.sf(stat, 1), rel=1e-12)
    assert res.p_value == pytest.approx(4.1e-5, rel=0.01)


def test_mcnemar_published_example_agresti() -> None:
    """Agresti (2007, An Introduction to Categorical Data Analysis, 2nd ed., sec. 8.1): presidential approval
    of 1600 people at two surveys, 794 approve/approve, 150 approve/disapprove, 86 disapprove/approve,
    570 disapprove/disapprove. Published: z = (150 - 86) / sqrt(150 + 86) = 4.17 (no continuity correction)."""
    first = np.array([True] * 794 + [True] * 150 + [False] * 86 + [False] * 570)
    second = np.array([True] * 794 + [False] * 150 + [True] * 86 + [False] * 570)
    assert round((150 - 86) / math.sqrt(150 + 86), 2) == 4.17  # the published statistic, from the table
    res = mcnemar_test(first, second)
    assert res.detail == "b=150, c=86" and res.value_a == pytest.approx(944 / 1600)
    stat = (64 - 1) ** 2 / 236  # medvl applies the continuity correction: 16.82
    assert res.statistic == pytest.approx(stat, rel=1e-15)
    assert res.p_value == pytest.approx(math.erfc(math.sqrt(stat / 2)), rel=1e-12)


def test_mcnemar_exact_p_value_by_hand() -> None:
    """b=2, c=7 (9 discordant pairs < 25): two-sided exact binomial p = 2 P(X <= 2), X ~ Bin(9, 1/2) = 92/512."""
    a = np.array([True] * 2 + [False] * 7 + [True] * 20)
    b = np.array([False] * 2 + [True] * 7 + [True] * 20)
    res = mcnemar_test(a, b)
    assert res.method == "McNemar exact" and res.statistic == 2
    by_hand = 2 * sum(math.comb(9, k) for k in range(3)) / 2**9
    assert by_hand == 92 / 512
    assert res.p_value == pytest.approx(by_hand, rel=1e-12)


# Hanley & McNeil (1982, Radiology 143:29-36, Table 1): one radiologist's 5-point ratings of 109 CT images,
# 58 normal and 51 abnormal. Published: area under the empirical ROC curve 0.893, standard error 0.032.
HM_NORMAL = (33, 6, 6, 11, 2)  # ratings 1 (definitely normal) .. 5 (definitely abnormal)
HM_ABNORMAL = (3, 2, 2, 11, 33)


def test_delong_on_the_hanley_mcneil_published_example() -> None:
    neg = np.repeat(np.arange(1, 6), HM_NORMAL).astype(float)
    pos = np.repeat(np.arange(1, 6), HM_ABNORMAL).astype(float)
    y = np.r_[np.zeros(neg.size), np.ones(pos.size)].astype(int)
    s = np.r_[neg, pos]
    auc, lo, hi = delong_ci(y, s)
    assert round(auc, 3) == 0.893  # the published area
    # placement values written out (DeLong et al. 1988, eq. 4-5): V10 per abnormal, V01 per normal
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    m, n = pos.size, neg.size
    var = psi.mean(1).var(ddof=1) / m + psi.mean(0).var(ddof=1) / n
    assert auc == pytest.approx(psi.mean(), abs=1e-15)
    half = norm.ppf(0.975) * math.sqrt(var)
    assert (lo, hi) == pytest.approx((auc - half, min(1.0, auc + half)), rel=1e-12)
    # Hanley & McNeil's own SE (their eq. 1 with Q1 = A/(2-A), Q2 = 2A^2/(1+A)) reproduces the published 0.032;
    # DeLong's nonparametric SE on the same data is close to it (0.0307)
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    se_hm = math.sqrt((auc * (1 - auc) + (m - 1) * (q1 - auc**2) + (n - 1) * (q2 - auc**2)) / (m * n))
    assert round(se_hm, 3) == 0.032
    assert abs(math.sqrt(var) - se_hm) < 0.003
    # the two-curve test of the same curve against itself and against a reversed reader
    same = delong_test(y, s, s)
    assert same.delta == 0 and same.p_value == 1.0
    rev = delong_test(y, s, -s)
    assert rev.value_b == pytest.approx(1 - auc, abs=1e-12) and rev.p_value < 1e-12
