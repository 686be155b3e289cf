"""Calibration and selective prediction: does the model know when it is wrong?

A discriminative metric (AUROC) says nothing about whether "90 % confident" means right nine
times out of ten. This module answers that from stored per-sample probabilities (the
:class:`~medvl.evaluate.results.Predictions` of any evaluator), so it needs no re-inference:

* **reliability** (top-label confidence vs accuracy per bin), **ECE** with equal-width bins
  (Guo et al. 2017; identical to :mod:`medvl.evaluate.metrics`' ``ece``) and equal-mass bins
  (Nixon et al. 2019, less biased when confidences crowd near 1), **MCE** (worst bin),
  **Brier** score and **NLL**;
* **temperature scaling** (Guo et al. 2017): one scalar ``T`` fitted on the *validation* split
  by L-BFGS on the NLL, applied to the test split. It works from probabilities because
  ``softmax(log p / T)`` equals ``softmax(z / T)`` for the original logits ``z`` (they differ
  by a per-row constant) and ``logit(p)`` *is* the sigmoid logit;
* **selective prediction**: the risk–coverage curve (error rate among the ``k`` most confident
  samples, for every ``k``) and its area **AURC** (Geifman & El-Yaniv 2017), with the optimal
  AURC of a perfect confidence ranking for the same error rate and ``E-AURC = AURC - optimal``.

Conventions: binary scores use the positive-class probability (top-label confidence
``max(p, 1 - p)``); multilabel treats every valid (class, sample) entry as one binary decision
(-1/NaN labels are ignored), so its ECE is over entries, not the per-class mean of ``metrics``.
Confidence ties in the risk–coverage curve are broken by the original order (stable sort);
this is the convention of the reference implementation.

CIs: :func:`calibration_report` resamples *patients* (the
:class:`~medvl.evaluate.stats.GroupResampler` of every other CI in medvl) and reports the
before/after values and their paired difference, so "temperature scaling lowers ECE by 0.05
[0.02, 0.08]" is a statement with its uncertainty. Read ECE intervals knowing that binned ECE is
biased upwards on resamples (duplicated samples make bins purer-looking and gaps larger), so its
percentile interval can sit at or even above the point estimate (BreastMNIST, n=156: ECE 0.034
[0.036, 0.103]); the paired *change* is much less affected, and Brier/NLL have no binning bias.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medvl.errors import MedvlError
from medvl.evaluate.metrics import Prepared, prepare

BIN_STRATEGIES = ("width", "mass")
DEFAULT_BINS = 15
_EPS = 1e-12


# ------------------------------------------------------------------ decisions
@dataclass
class Decisions:
    """Flattened top-label decisions: confidence in the predicted label and whether it was right.

    ``sample`` maps each decision back to its row (several per row for multilabel) so that a
    patient bootstrap can resample decisions by their samples.
    """

    conf: np.ndarray  # [M] float64 in [0.5, 1] (binary/multilabel) or [1/K, 1]
    correct: np.ndarray  # [M] bool
    sample: np.ndarray  # [M] int row index


def decisions(p: Prepared) -> Decisions:
    """Top-label confidence/correctness of prepared predictions (see module doc for multilabel)."""
    if p.task == "multilabel":
        valid = ~np.isnan(p.y)
        rows, cols = np.nonzero(valid)
        prob = p.s[rows, cols]
        conf = np.maximum(prob, 1.0 - prob)
        correct = (prob > 0.5) == (p.y[rows, cols] == 1)
        return Decisions(conf, correct, rows)
    conf = p.s.max(1)
    return Decisions(conf, p.s.argmax(1) == p.y, np.arange(p.n))


# ------------------------------------------------------------------ reliability / ECE
@dataclass
class ReliabilityBins:
    """One row per non-empty bin: its edges, size, mean confidence and accuracy."""

    strategy: str
    lo: np.ndarray
    hi: np.ndarray
    count: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray

    @property
    def n(self) -> int:
        return int(self.count.sum())

    def gaps(self) -> np.ndarray:
        return np.abs(self.accuracy - self.confidence)

    def to_dict(self) -> dict[str, Any]:
        return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in asdict(self).items()}


def _bin_index(conf: np.ndarray, n_bins: int, strategy: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bin of each confidence plus the bins' lower/upper edges.

    ``width``: ``n_bins`` equal intervals ``(lo, hi]`` of [0, 1] (as sklearn's
    ``calibration_curve`` and :func:`medvl.evaluate.metrics._ece_from`). ``mass``: the sorted
    confidences split into ``n_bins`` nearly equal-sized consecutive groups (ties may straddle a
    boundary; each sample is in exactly one bin).
    """
    if strategy not in BIN_STRATEGIES:
        raise MedvlError(f"calibration: bin strategy must be one of {', '.join(BIN_STRATEGIES)}, got {strategy!r}")
    if n_bins < 1:
        raise MedvlError(f"calibration: n_bins must be >= 1, got {n_bins}")
    if strategy == "width":
        edges = np.linspace(0.0, 1.0, n_bins + 1)
        b = np.searchsorted(edges[1:-1], conf, side="left")
        return b, edges[:-1], edges[1:]
    order = np.argsort(conf, kind="stable")
    b = np.empty(conf.size, dtype=np.int64)
    chunks = np.array_split(order, min(n_bins, max(conf.size, 1)))
    lo, hi = [], []
    for i, ch in enumerate(chunks):
        b[ch] = i
        lo.append(float(conf[ch].min()) if ch.size else float("nan"))
        hi.append(float(conf[ch].max()) if ch.size else float("nan"))
    return b, np.array(lo), np.array(hi)


def reliability(conf: np.ndarray, correct: np.ndarray, n_bins: int = DEFAULT_BINS,
                strategy: str = "width") -> ReliabilityBins:
    """Per-bin mean confidence and accuracy (the data of a reliability diagram); empty bins dropped."""
    conf = np.asarray(conf, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    b, lo, hi = _bin_index(conf, n_bins, strategy)
    k = lo.size
    count = np.bincount(b, minlength=k).astype(np.int64)
    s_conf = np.bincount(b, weights=conf, minlength=k)
    s_acc = np.bincount(b, weights=correct, minlength=k)
    keep = count > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        return ReliabilityBins(strategy, lo[keep], hi[keep], count[keep], (s_conf / count)[keep],
                               (s_acc / count)[keep])


def ece(conf: np.ndarray, correct: np.ndarray, n_bins: int = DEFAULT_BINS, strategy: str = "width") -> float:
    """Expected calibration error ``sum_b n_b/N |acc_b - conf_b|``; NaN without decisions."""
    r = reliability(conf, correct, n_bins, strategy)
    return float((r.count * r.gaps()).sum() / r.n) if r.n else float("nan")


def mce(conf: np.ndarray, correct: np.ndarray, n_bins: int = DEFAULT_BINS, strategy: str = "width") -> float:
    """Maximum calibration error: the largest bin gap (sensitive to small bins: read with the counts)."""
    r = reliability(conf, correct, n_bins, strategy)
    return float(r.gaps().max()) if r.n else float("nan")


# ------------------------------------------------------------------ proper scores
def brier(p: Prepared) -> float:
    """Brier score: binary ``mean (p1 - y)^2`` (sklearn ``brier_score_loss``); multiclass ``mean sum_k
    (p_k - y_k)^2`` (Brier 1950); multilabel the mean over valid entries of the binary score."""
    if p.task == "multilabel":
        valid = ~np.isnan(p.y)
        return float(np.mean((p.s[valid] - p.y[valid]) ** 2)) if valid.any() else float("nan")
    if p.n == 0:
        return float("nan")
    if p.task == "binary":
        return float(np.mean((p.s[:, 1] - (p.y == 1)) ** 2))
    onehot = np.eye(p.s.shape[1])[p.y]
    return float(np.mean(((p.s - onehot) ** 2).sum(1)))


def nll(p: Prepared) -> float:
    """Mean negative log-likelihood of the true label (probabilities clipped at 1e-12)."""
    s = np.clip(p.s, _EPS, 1.0 - _EPS)
    if p.task == "multilabel":
        valid = ~np.isnan(p.y)
        y = p.y[valid]
        q = s[valid]
        return float(-np.mean(y * np.log(q) + (1 - y) * np.log(1 - q))) if valid.any() else float("nan")
    if p.n == 0:
        return float("nan")
    return float(-np.mean(np.log(s[np.arange(p.n), p.y])))


# ------------------------------------------------------------------ temperature scaling
def _logits(p: Prepared) -> torch.Tensor:
    """Logits that reproduce the probabilities: ``log p`` (softmax) or ``logit p`` (sigmoid, multilabel)."""
    s = np.clip(p.s, _EPS, 1.0 - _EPS)
    z = np.log(s) - np.log1p(-s) if p.task == "multilabel" else np.log(s)
    return torch.as_tensor(z, dtype=torch.float64)


def apply_temperature(p: Prepared, temperature: float) -> Prepared:
    """Probabilities after dividing the logits by ``temperature`` (T > 1 softens, T < 1 sharpens)."""
    if not temperature > 0 or not math.isfinite(temperature):
        raise MedvlError(f"temperature scaling: temperature must be a positive number, got {temperature}")
    z = _logits(p) / temperature
    s = torch.sigmoid(z) if p.task == "multilabel" else torch.softmax(z, dim=1)
    return Prepared(p.task, p.y, s.numpy(), p.class_names)


def _nll_torch(z: torch.Tensor, p: Prepared) -> torch.Tensor:
    if p.task == "multilabel":
        valid = torch.as_tensor(~np.isnan(p.y))
        y = torch.as_tensor(np.nan_to_num(p.y), dtype=z.dtype)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z, y, reduction="none")
        return loss[valid].mean()
    return torch.nn.functional.cross_entropy(z, torch.as_tensor(p.y))


def fit_temperature(p: Prepared, max_iter: int = 200) -> float:
    """The temperature minimising validation NLL (L-BFGS on ``log T``, so T stays positive).

    The NLL is convex in ``1/T`` for softmax, so the optimum is unique; starting at T=1 means
    an already calibrated model keeps T near 1.
    """
    if p.n < 2:
        raise MedvlError(f"temperature scaling: needs at least 2 validation samples, got {p.n}")
    z = _logits(p)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = _nll_torch(z / log_t.exp(), p)
        loss.backward()
        return loss

    opt.step(closure)
    t = float(log_t.detach().exp())
    if not math.isfinite(t):
        raise MedvlError("temperature scaling: the fit diverged (validation predictions may be constant)")
    return t


# ------------------------------------------------------------------ selective prediction
@dataclass
class RiskCoverage:
    """Risk (error rate) of the ``k`` most confident decisions for every ``k`` (coverage ``k/M``)."""

    coverage: np.ndarray
    risk: np.ndarray
    aurc: float
    optimal_aurc: float

    @property
    def e_aurc(self) -> float:
        return self.aurc - self.optimal_aurc

    def risk_at(self, coverage: float) -> float:
        """Risk when keeping the most confident ``coverage`` fraction (at least one decision)."""
        k = max(1, int(math.ceil(coverage * self.coverage.size)))
        return float(self.risk[k - 1])

    def to_dict(self, points: int = 101) -> dict[str, Any]:
        """Curve thinned to ~``points`` coverages (a JSON of every k would be as long as the test set)."""
        idx = np.unique(np.linspace(0, self.coverage.size - 1, min(points, self.coverage.size)).round().astype(int))
        return {"coverage": self.coverage[idx].tolist(), "risk": self.risk[idx].tolist(), "aurc": self.aurc,
                "optimal_aurc": self.optimal_aurc, "e_aurc": self.e_aurc}


def optimal_aurc(n: int, n_errors: int) -> float:
    """AURC of a perfect ranking (every error less confident than every correct decision)."""
    if n == 0:
        return float("nan")
    k = np.arange(1, n + 1)
    return float(np.mean(np.maximum(0, k - (n - n_errors)) / k))


def aurc_from(conf: np.ndarray, correct: np.ndarray) -> float:
    """Area under the risk–coverage curve: mean over k of the error rate of the top-k (cheap kernel)."""
    if conf.size == 0:
        return float("nan")
    order = np.argsort(-conf, kind="stable")
    err = np.cumsum(~correct[order]) / np.arange(1, conf.size + 1)
    return float(err.mean())


def risk_coverage(conf: np.ndarray, correct: np.ndarray) -> RiskCoverage:
    """The full risk–coverage curve with AURC and the optimal AURC for the same error count."""
    conf = np.asarray(conf, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    m = conf.size
    if m == 0:
        raise MedvlError("selective prediction: no decisions to rank (empty predictions)")
    order = np.argsort(-conf, kind="stable")
    k = np.arange(1, m + 1)
    risk = np.cumsum(~correct[order]) / k
    return RiskCoverage(k / m, risk, float(risk.mean()), optimal_aurc(m, int((~correct).sum())))


# ------------------------------------------------------------------ one report with CIs
CAL_METRICS = ("ece", "ece_mass", "mce", "brier", "nll", "aurc")


def calibration_values(p: Prepared, n_bins: int = DEFAULT_BINS) -> dict[str, float]:
    """Every calibration number of one set of predictions (the bootstrap kernel)."""
    d = decisions(p)
    return {"ece": ece(d.conf, d.correct, n_bins, "width"), "ece_mass": ece(d.conf, d.correct, n_bins, "mass"),
            "mce": mce(d.conf, d.correct, n_bins, "width"), "brier": brier(p), "nll": nll(p),
            "aurc": aurc_from(d.conf, d.correct)}


@dataclass
class Interval:
    """A value with its percentile bootstrap interval (NaN bounds when no CI was computed)."""

    value: float
    low: float = float("nan")
    high: float = float("nan")

    def fmt(self, digits: int = 3) -> str:
        if math.isnan(self.value):
            return "n/a"
        if math.isnan(self.low):
            return f"{self.value:.{digits}f}"
        return f"{self.value:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


@dataclass
class CalibrationReport:
    """Before/after temperature scaling on the test split, with patient-level CIs of each and of the change."""

    temperature: float
    before: dict[str, Interval]
    after: dict[str, Interval]
    change: dict[str, Interval]  # after - before (negative = better for every metric here)
    reliability_before: ReliabilityBins
    reliability_after: ReliabilityBins
    risk_coverage: RiskCoverage
    n: int
    n_groups: int
    n_boot: int
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        def iv(d: dict[str, Interval]) -> dict[str, dict[str, float]]:
            return {k: asdict(v) for k, v in d.items()}

        return {"temperature": self.temperature, "before": iv(self.before), "after": iv(self.after),
                "change": iv(self.change), "reliability_before": self.reliability_before.to_dict(),
                "reliability_after": self.reliability_after.to_dict(),
                "risk_coverage": self.risk_coverage.to_dict(), "n": self.n, "n_groups": self.n_groups,
                "n_boot": self.n_boot, "notes": list(self.notes)}


def percentile_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of ``values`` (NaN replicates, e.g. a class missing, left out)."""
    from medvl.evaluate.stats import _percentile_interval

    lo, hi, _ = _percentile_interval(np.asarray(values, dtype=np.float64), level)
    return lo, hi


def calibration_report(test: Prepared, val: Prepared | None = None, groups: Sequence | None = None,
                       n_boot: int = 1000, seed: int = 0, level: float = 0.95,
                       n_bins: int = DEFAULT_BINS) -> CalibrationReport:
    """Calibration of ``test`` before and after temperature scaling fitted on ``val``.

    Without ``val`` no temperature is fitted (T = 1, said in ``notes``): fitting it on the test
    split would report an optimistic "after".
    """
    from medvl.evaluate.stats import GroupResampler

    notes: list[str] = []
    if val is None:
        t = 1.0
        notes.append("no validation split: temperature scaling not fitted (T = 1)")
    else:
        t = fit_temperature(val)
    scaled = apply_temperature(test, t)
    before, after = calibration_values(test, n_bins), calibration_values(scaled, n_bins)
    res = GroupResampler(test.n, groups)
    reps = np.full((2, len(CAL_METRICS), n_boot), np.nan)
    if n_boot:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            for b, idx in enumerate(res.replicates(n_boot, seed)):
                vb, va = calibration_values(test.take(idx), n_bins), calibration_values(scaled.take(idx), n_bins)
                reps[0, :, b] = [vb[m] for m in CAL_METRICS]
                reps[1, :, b] = [va[m] for m in CAL_METRICS]
    out_b, out_a, out_c = {}, {}, {}
    for i, m in enumerate(CAL_METRICS):
        ci_b = percentile_interval(reps[0, i], level) if n_boot else (float("nan"),) * 2
        ci_a = percentile_interval(reps[1, i], level) if n_boot else (float("nan"),) * 2
        ci_c = percentile_interval(reps[1, i] - reps[0, i], level) if n_boot else (float("nan"),) * 2
        out_b[m] = Interval(before[m], *ci_b)
        out_a[m] = Interval(after[m], *ci_a)
        out_c[m] = Interval(after[m] - before[m], *ci_c)
    d0, d1 = decisions(test), decisions(scaled)
    return CalibrationReport(t, out_b, out_a, out_c, reliability(d0.conf, d0.correct, n_bins),
                             reliability(d1.conf, d1.correct, n_bins), risk_coverage(d0.conf, d0.correct),
                             test.n, res.n_groups, n_boot, notes)


def calibration_of(test_scores: np.ndarray, test_labels: np.ndarray, task: str,
                   val_scores: np.ndarray | None = None, val_labels: np.ndarray | None = None,
                   groups: Sequence | None = None, n_boot: int = 1000, seed: int = 0,
                   class_names: Sequence[str] | None = None) -> CalibrationReport:
    """:func:`calibration_report` from raw scores/labels (the conventions of :mod:`medvl.evaluate.metrics`)."""
    test = prepare(test_scores, test_labels, task, class_names)
    val = prepare(val_scores, val_labels, task, class_names) if val_scores is not None else None
    return calibration_report(test, val, groups, n_boot, seed)


# ------------------------------------------------------------------ plots
def plot_reliability(bins: ReliabilityBins | Sequence[tuple[str, ReliabilityBins]], path: str | Path,
                     title: str = "Reliability diagram") -> Path:
    """Accuracy vs confidence per bin (bar width = bin, diagonal = perfect calibration), as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = [("model", bins)] if isinstance(bins, ReliabilityBins) else list(bins)
    fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect")
    for name, r in series:
        ax.plot(r.confidence, r.accuracy, "o-", label=f"{name} (n={r.n})")
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8)
    return _save(fig, path)


def plot_risk_coverage(curves: RiskCoverage | Sequence[tuple[str, RiskCoverage]], path: str | Path,
                       title: str = "Risk-coverage") -> Path:
    """Error rate among the kept (most confident) decisions vs the fraction kept, as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = [("model", curves)] if isinstance(curves, RiskCoverage) else list(curves)
    fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
    for name, c in series:
        ax.plot(c.coverage, c.risk, label=f"{name} (AURC {c.aurc:.3f}, optimal {c.optimal_aurc:.3f})")
    ax.set_xlabel("coverage (fraction answered)")
    ax.set_ylabel("risk (error rate)")
    ax.set_xlim(0, 1)
    ax.set_ylim(bottom=0)
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=7)
    return _save(fig, path)


def _save(fig: Any, path: str | Path) -> Path:
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path

