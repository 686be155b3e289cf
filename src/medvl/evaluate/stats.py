"""Uncertainty and paired comparisons: bootstrap CIs, paired bootstrap, DeLong, McNemar.

Why patients, not images: images of one patient are correlated, so resampling images pretends
there is more independent evidence than there is and gives CIs that are too narrow. When patient
ids are given, every bootstrap replicate draws *patients* with replacement and keeps all their
images (cluster bootstrap); otherwise each sample is its own group.

Scipy supplies the distributions (normal, chi-square, exact binomial); the fast DeLong algorithm
(Sun & Xu, 2014) is written here because neither scipy nor scikit-learn ships it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps
from scipy.stats import rankdata

from medvl.evaluate.metrics import METRICS, Prepared, metric_value, prepare

DEFAULT_N_BOOT = 1000


@dataclass
class ConfidenceInterval:
    """A point estimate with its percentile bootstrap interval."""

    metric: str
    value: float
    low: float
    high: float
    n: int
    n_groups: int
    n_boot: int
    n_undefined: int = 0  # replicates where the metric was undefined (e.g. one class drawn)


@dataclass
class PairedTest:
    """Result of comparing model A and model B on the same samples (delta = A - B)."""

    metric: str
    method: str
    value_a: float
    value_b: float
    delta: float
    p_value: float
    ci_low: float = float("nan")
    ci_high: float = float("nan")
    statistic: float = float("nan")
    n: int = 0
    n_groups: int = 0
    detail: str = ""


# ------------------------------------------------------------------ resampling
class GroupResampler:
    """Draws bootstrap index sets by group (patient) with replacement, vectorised.

    Samples are sorted by group once; a replicate draws ``G`` group codes and expands each into
    the contiguous block of its members, so a replicate costs O(N) numpy work, not a Python loop
    over groups.
    """

    def __init__(self, n: int, groups: Sequence | np.ndarray | None = None):
        if groups is None or len(groups) == 0:
            codes = np.arange(n)
        else:
            g = np.asarray(groups)
            if g.shape[0] != n:
                raise ValueError(f"{g.shape[0]} group ids for {n} samples")
            # empty / missing patient ids fall back to one group per sample
            g = np.array([str(x) if str(x) not in ("", "nan", "None") else f"\0row{i}" for i, x in enumerate(g)])
            _, codes = np.unique(g, return_inverse=True)
        self.n = n
        self.order = np.argsort(codes, kind="stable")
        self.counts = np.bincount(codes)
        self.starts = np.concatenate([[0], np.cumsum(self.counts)[:-1]])
        self.n_groups = int(self.counts.size)

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        g = rng.integers(0, self.n_groups, self.n_groups)
        c = self.counts[g]
        out_starts = np.concatenate([[0], np.cumsum(c)[:-1]])
        offs = np.repeat(self.starts[g] - out_starts, c) + np.arange(int(c.sum()))
        return self.order[offs]

    def replicates(self, n_boot: int, seed: int) -> Iterator[np.ndarray]:
        rng = np.random.default_rng(seed)
        for _ in range(n_boot):
            yield self.draw(rng)


def _percentile_interval(values: np.ndarray, level: float) -> tuple[float, float, int]:
    ok = values[~np.isnan(values)]
    bad = int(values.size - ok.size)
    if ok.size == 0:
        return float("nan"), float("nan"), bad
    a = (1 - level) / 2 * 100
    lo, hi = np.percentile(ok, [a, 100 - a])
    return float(lo), float(hi), bad


def _warn_undefined(metric: str, bad: int, n_boot: int) -> None:
    if bad > 0.05 * n_boot:
        warnings.warn(f"{metric}: {bad}/{n_boot} bootstrap replicates were undefined (a class missing from "
                      "the resample) and were left out; the CI is unreliable on so few positives",
                      RuntimeWarning, stacklevel=3)


def bootstrap_ci(scores: np.ndarray, labels: np.ndarray, task: str, metrics: Sequence[str] = METRICS,
                 groups: Sequence | None = None, n_boot: int = DEFAULT_N_BOOT, seed: int = 0,
                 level: float = 0.95, class_names: Sequence[str] | None = None) -> dict[str, ConfidenceInterval]:
    """Percentile bootstrap CIs of every metric, resampling ``groups`` (patients) when given.

    All metrics share the same replicates (so their CIs are mutually consistent). The point
    estimate is the metric on the full data, not the bootstrap mean.
    """
    p = prepare(scores, labels, task, class_names)
    return bootstrap_prepared(p, metrics, groups, n_boot, seed, level)


def bootstrap_prepared(p: Prepared, metrics: Sequence[str] = METRICS, groups: Sequence | None = None,
                       n_boot: int = DEFAULT_N_BOOT, seed: int = 0,
                       level: float = 0.95) -> dict[str, ConfidenceInterval]:
    """:func:`bootstrap_ci` on prepared inputs."""
    res = GroupResampler(p.n, groups)
    reps = np.full((len(metrics), n_boot), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for b, idx in enumerate(res.replicates(n_boot, seed)):
            q = p.take(idx)
            for m, name in enumerate(metrics):
                reps[m, b] = metric_value(name, q)
    out = {}
    for m, name in enumerate(metrics):
        lo, hi, bad = _percentile_interval(reps[m], level)
        _warn_undefined(name, bad, n_boot)
        out[name] = ConfidenceInterval(name, metric_value(name, p), lo, hi, p.n, res.n_groups, n_boot, bad)
    return out


def bootstrap_statistic(values: np.ndarray, statistic: Callable[[np.ndarray], float] = np.mean,
                        groups: Sequence | None = None, n_boot: int = DEFAULT_N_BOOT, seed: int = 0,
                        level: float = 0.95, name: str = "statistic") -> ConfidenceInterval:
    """CI of a statistic of per-sample values (e.g. Recall@K hits, ranks), grouped by patient."""
    values = np.asarray(values, dtype=np.float64)
    res = GroupResampler(len(values), groups)
    reps = np.array([statistic(values[idx]) for idx in res.replicates(n_boot, seed)])
    lo, hi, bad = _percentile_interval(reps, level)
    return ConfidenceInterval(name, float(statistic(values)), lo, hi, len(values), res.n_groups, n_boot, bad)


# ------------------------------------------------------------------ paired tests
def _paired_p_value(deltas: np.ndarray, observed: float) -> float:
    """Two-sided p of H0 "delta = 0": how often the centred bootstrap delta is as extreme.

    The bootstrap distribution of ``delta* - delta`` approximates that of ``delta`` under H0
    (shift method, Efron & Tibshirani 1993, §16.4); +1 in numerator and denominator keeps p > 0.
    """
    ok = deltas[~np.isnan(deltas)]
    if ok.size == 0:
        return float("nan")
    extreme = np.sum(np.abs(ok - observed) >= abs(observed) - 1e-12)
    return float((extreme + 1) / (ok.size + 1))


def paired_bootstrap(scores_a: np.ndarray, scores_b: np.ndarray, labels: np.ndarray, task: str,
                     metric: str = "auroc", groups: Sequence | None = None, n_boot: int = DEFAULT_N_BOOT,
                     seed: int = 0, level: float = 0.95,
                     class_names: Sequence[str] | None = None) -> PairedTest:
    """Paired bootstrap test of ``metric(A) - metric(B)``: both models see the same resamples."""
    pa = prepare(scores_a, labels, task, class_names)
    pb = prepare(scores_b, labels, task, class_names)
    return paired_bootstrap_prepared(pa, pb, metric, groups, n_boot, seed, level)


def paired_bootstrap_prepared(pa: Prepared, pb: Prepared, metric: str, groups: Sequence | None = None,
                              n_boot: int = DEFAULT_N_BOOT, seed: int = 0, level: float = 0.95) -> PairedTest:
    """:func:`paired_bootstrap` on prepared inputs (same rows in the same order)."""
    if pa.n != pb.n:
        raise ValueError(f"paired comparison needs the same samples: {pa.n} vs {pb.n}")
    res = GroupResampler(pa.n, groups)
    deltas = np.full(n_boot, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for b, idx in enumerate(res.replicates(n_boot, seed)):
            deltas[b] = metric_value(metric, pa.take(idx)) - metric_value(metric, pb.take(idx))
    va, vb = metric_value(metric, pa), metric_value(metric, pb)
    lo, hi, bad = _percentile_interval(deltas, level)
    _warn_undefined(metric, bad, n_boot)
    return PairedTest(metric, "paired bootstrap", va, vb, va - vb, _paired_p_value(deltas, va - vb), lo, hi,
                      n=pa.n, n_groups=res.n_groups, detail=f"B={n_boot}, seed={seed}")


def paired_bootstrap_statistic(values_a: np.ndarray, values_b: np.ndarray, groups: Sequence | None = None,
                               statistic: Callable[[np.ndarray], float] = np.mean,
                               n_boot: int = DEFAULT_N_BOOT, seed: int = 0, level: float = 0.95,
                               name: str = "statistic") -> PairedTest:
    """Paired bootstrap of a statistic of per-sample values (e.g. Recall@1 hits)."""
    a = np.asarray(values_a, dtype=np.float64)
    b = np.asarray(values_b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired comparison needs the same samples: {a.shape} vs {b.shape}")
    res = GroupResampler(len(a), groups)
    deltas = np.array([statistic(a[i]) - statistic(b[i]) for i in res.replicates(n_boot, seed)])
    va, vb = float(statistic(a)), float(statistic(b))
    lo, hi, _ = _percentile_interval(deltas, level)
    return PairedTest(name, "paired bootstrap", va, vb, va - vb, _paired_p_value(deltas, va - vb), lo, hi,
                      n=len(a), n_groups=res.n_groups, detail=f"B={n_boot}, seed={seed}")


# ------------------------------------------------------------------ DeLong
def _delong_components(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fast DeLong (Sun & Xu 2014): AUCs [k] and their covariance [k, k] for ``scores`` [k, N].

    Uses three midrank computations instead of the O(m*n) pairwise kernel: the placement value of
    a positive is (its rank among all - its rank among positives) / n_neg, and symmetrically.
    """
    y = np.asarray(y).astype(bool)
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    pos, neg = scores[:, y], scores[:, ~y]
    m, n = pos.shape[1], neg.shape[1]
    if m < 2 or n < 2:
        raise ValueError(f"DeLong needs at least 2 positives and 2 negatives, got {m} and {n}")
    tx = rankdata(pos, axis=1)
    ty = rankdata(neg, axis=1)
    tz = rankdata(np.concatenate([pos, neg], axis=1), axis=1)
    aucs = tz[:, :m].sum(1) / (m * n) - (m + 1.0) / (2.0 * n)
    v10 = (tz[:, :m] - tx) / n  # per positive: fraction of negatives ranked below (ties 1/2)
    v01 = 1.0 - (tz[:, m:] - ty) / m  # per negative: fraction of positives ranked above
    s10 = np.atleast_2d(np.cov(v10))
    s01 = np.atleast_2d(np.cov(v01))
    return aucs, s10 / m + s01 / n


def delong_ci(y: np.ndarray, s: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """AUROC with its DeLong (asymptotic normal) CI, clipped to [0, 1]."""
    aucs, cov = _delong_components(y, np.asarray(s)[None, :])
    se = float(np.sqrt(cov[0, 0]))
    z = sps.norm.ppf(1 - (1 - level) / 2)
    return float(aucs[0]), max(0.0, float(aucs[0] - z * se)), min(1.0, float(aucs[0] + z * se))


def delong_test(y: np.ndarray, s_a: np.ndarray, s_b: np.ndarray, name: str = "auroc") -> PairedTest:
    """Two-sided DeLong test of AUROC(A) = AUROC(B) for correlated ROC curves (same samples).

    Assumes independent samples; with several images per patient it is anti-conservative, use
    the grouped paired bootstrap there (``compare`` reports both).
    """
    y = np.asarray(y).astype(bool)
    aucs, cov = _delong_components(y, np.vstack([s_a, s_b]))
    var = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    delta = float(aucs[0] - aucs[1])
    if var <= 0:
        z, p = (0.0, 1.0) if delta == 0 else (float("inf"), 0.0)
    else:
        z = delta / float(np.sqrt(var))
        p = float(2 * sps.norm.sf(abs(z)))
    se = float(np.sqrt(max(var, 0.0)))
    q = sps.norm.ppf(0.975)
    return PairedTest(name, "DeLong", float(aucs[0]), float(aucs[1]), delta, p, delta - q * se, delta + q * se,
                      statistic=z, n=int(y.size), n_groups=int(y.size), detail=f"var={var:.3g}")


# ------------------------------------------------------------------ McNemar
def mcnemar_test(correct_a: np.ndarray, correct_b: np.ndarray, exact_below: int = 25,
                 name: str = "accuracy") -> PairedTest:
    """McNemar's test on paired correctness: exact binomial when the discordant count is small.

    ``b`` = A right & B wrong, ``c`` = A wrong & B right. For ``b + c < exact_below`` the
    two-sided exact binomial test (scipy ``binomtest(b, b + c, 0.5)``) is used; above it, the
    chi-square statistic with continuity correction ``(|b - c| - 1)^2 / (b + c)`` (1 df).
    """
    a = np.asarray(correct_a, dtype=bool)
    bb = np.asarray(correct_b, dtype=bool)
    if a.shape != bb.shape:
        raise ValueError(f"paired comparison needs the same samples: {a.shape} vs {bb.shape}")
    b = int(np.sum(a & ~bb))
    c = int(np.sum(~a & bb))
    va, vb = float(a.mean()), float(bb.mean())
    if b + c == 0:
        return PairedTest(name, "McNemar (no discordant pairs)", va, vb, va - vb, 1.0, statistic=0.0,
                          n=a.size, n_groups=a.size, detail="b=0, c=0")
    if b + c < exact_below:
        p = float(sps.binomtest(b, b + c, 0.5).pvalue)
        return PairedTest(name, "McNemar exact", va, vb, va - vb, p, statistic=float(min(b, c)),
                          n=a.size, n_groups=a.size, detail=f"b={b}, c={c}")
    chi2 = (abs(b - c) - 1) ** 2 / (b + c)
    return PairedTest(name, "McNemar chi2 (cc)", va, vb, va - vb, float(sps.chi2.sf(chi2, 1)),
                      statistic=float(chi2), n=a.size, n_groups=a.size, detail=f"b={b}, c={c}")
