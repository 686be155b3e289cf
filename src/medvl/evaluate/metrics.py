"""Classification metrics for binary, multiclass and multilabel tasks, checked against scikit-learn.

Every metric here returns the value scikit-learn returns on the same inputs (see
``tests/evaluate/test_metrics.py``); they are re-implemented in vectorised numpy rather than
called from scikit-learn because :mod:`medvl.evaluate.stats` recomputes them ~1000 times per
bootstrap, and scikit-learn's per-call input validation (~1.5 ms for ``roc_auc_score`` on 150
samples) would dominate: a 5-metric, 1000-replicate CI would take ~8 s instead of ~0.3 s.

Conventions (shared by all evaluators and by the stored predictions):

* ``scores`` are probabilities, ``[N, K]`` (rows sum to 1 for binary-with-2-columns and
  multiclass; independent per column for multilabel). Binary also accepts ``[N]`` or ``[N, 1]``
  (the positive-class probability).
* ``labels`` are ``[N, K]`` with 1/0 (multilabel: -1 "uncertain" and NaN "unknown" are ignored
  for that class), or ``[N]`` class indices for binary/multiclass.
* Binary with two columns is evaluated like the MedMNIST reference: AUROC of column 1, the
  prediction is the argmax (= ``p1 > 0.5``).
* **Absent classes.** A class with no positive (or, for AUROC, no negative) test sample has no
  AUROC/F1/balanced accuracy: its per-class value is NaN (``None`` in JSON), an
  :class:`AbsentClassWarning` names it, and the macro average is taken over the classes that are
  present. The macro is NaN only when *no* class is defined, and that too is warned about.

Definitions that are not unique in the literature:

* multiclass AUROC = one-vs-rest macro (sklearn ``multi_class="ovr", average="macro"``);
* multilabel accuracy = mean over classes of per-class accuracy at threshold 0.5 (MedMNIST's
  "ACC"; *not* sklearn's exact-match subset accuracy); per-class accuracy for multiclass is the
  class recall;
* F1 = macro F1 over the classes present in the labels (binary included: both classes);
* ECE = top-label expected calibration error with 15 equal-width bins ``(lo, hi]`` (Guo et al.
  2017; bins as in sklearn ``calibration_curve``); multilabel: mean of per-class binary
  top-label ECE.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.stats import rankdata

TASKS = ("binary", "multiclass", "multilabel")
METRICS = ("auroc", "accuracy", "balanced_accuracy", "f1", "ece")
ECE_BINS = 15


@dataclass(frozen=True)
class MetricInfo:
    """What a reader (model selection, leaderboard, ablation) must know about a metric besides its value."""

    name: str
    higher_is_better: bool = True
    description: str = ""


# Every metric medvl reports that is NOT "higher is better" must be here (or match a suffix below):
# model selection (C of the linear probe, k of kNN, the fine-tuning epoch), the leaderboard's best
# marker and its ranking all read the direction from this table.
METRIC_INFO: dict[str, MetricInfo] = {m.name: m for m in (
    MetricInfo("auroc", True, "area under the ROC curve (macro one-vs-rest for multiclass/multilabel)"),
    MetricInfo("accuracy", True, "accuracy at the argmax / 0.5 threshold"),
    MetricInfo("balanced_accuracy", True, "mean per-class recall"),
    MetricInfo("f1", True, "macro F1"),
    MetricInfo("ece", False, "expected calibration error, 15 bins"),
)}
# Families of names: retrieval reports "<direction>_median_rank" (i2t_, t2i_) and "<direction>_R@k".
_SUFFIX_INFO: dict[str, MetricInfo] = {
    "median_rank": MetricInfo("median_rank", False, "median rank of the true match (1 = best)"),
}


def register_metric_info(name: str, higher_is_better: bool, description: str = "") -> MetricInfo:
    """Declare a metric's direction (for evaluators that add metrics outside this module, e.g. a distance)."""
    info = MetricInfo(name, higher_is_better, description)
    METRIC_INFO[name] = info
    return info


def metric_info(name: str) -> MetricInfo:
    """The :class:`MetricInfo` of ``name``; an undeclared metric is taken as higher-is-better (most are)."""
    if name in METRIC_INFO:
        return METRIC_INFO[name]
    for suffix, info in _SUFFIX_INFO.items():
        if name == suffix or name.endswith("_" + suffix):
            return info
    return MetricInfo(name)


def higher_is_better(name: str) -> bool:
    """True when a larger value of metric ``name`` is better (False for ECE and median ranks)."""
    return metric_info(name).higher_is_better


def oriented(name: str, value: float) -> float:
    """``value`` signed so that larger is always better: what model selection maximises."""
    return value if higher_is_better(name) else -value


class AbsentClassWarning(UserWarning):
    """A class has no positive (or no negative) sample in the evaluated labels."""


@dataclass
class MetricResult:
    """One metric: the summary ``value`` plus per-class values (NaN where undefined)."""

    name: str
    value: float
    per_class: dict[str, float] = field(default_factory=dict)
    undefined: list[str] = field(default_factory=list)


def binary_auroc(y: np.ndarray, s: np.ndarray) -> float:
    """AUROC of scores ``s`` for 0/1 targets ``y`` via the Mann-Whitney U statistic (midranks).

    Ties count 1/2, exactly like ``sklearn.metrics.roc_auc_score``. NaN when only one class.
    """
    y = np.asarray(y, dtype=bool)
    n1 = int(y.sum())
    n0 = y.size - n1
    if n1 == 0 or n0 == 0:
        return float("nan")
    r = rankdata(s)
    return float((r[y].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))


def _ece_from(conf: np.ndarray, correct: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """``sum_b n_b/N |acc_b - conf_b|``, bins (lo, hi] as ``np.searchsorted(edges[1:-1], conf)``."""
    if conf.size == 0:
        return float("nan")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    b = np.searchsorted(edges[1:-1], conf, side="left")
    s_conf = np.bincount(b, weights=conf, minlength=n_bins)
    s_acc = np.bincount(b, weights=correct.astype(np.float64), minlength=n_bins)
    return float(np.abs(s_acc - s_conf).sum() / conf.size)


def _nanmean(values: np.ndarray) -> float:
    v = values[~np.isnan(values)]
    return float(v.mean()) if v.size else float("nan")


@dataclass
class Prepared:
    """Inputs normalised once per task so that bootstrap resamples only index arrays.

    binary/multiclass: ``y`` int class index [N], ``s`` [N, K] (binary always K=2).
    multilabel: ``y`` float [N, K] with NaN for ignored entries, ``s`` [N, K].
    """

    task: str
    y: np.ndarray
    s: np.ndarray
    class_names: list[str]

    @property
    def n(self) -> int:
        return int(self.s.shape[0])

    def take(self, idx: np.ndarray) -> Prepared:
        return Prepared(self.task, self.y[idx], self.s[idx], self.class_names)


def prepare(scores: np.ndarray, labels: np.ndarray, task: str,
            class_names: Sequence[str] | None = None) -> Prepared:
    """Validate shapes and convert to the internal form described in :class:`Prepared`."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    if s.ndim == 1:
        s = s[:, None]
    if s.ndim != 2:
        raise ValueError(f"scores must be [N] or [N, K], got shape {s.shape}")
    if y.shape[0] != s.shape[0]:
        raise ValueError(f"scores have {s.shape[0]} rows but labels have {y.shape[0]}")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    if task == "multilabel":
        if y.shape != s.shape:
            raise ValueError(f"multilabel labels must have the scores' shape {s.shape}, got {y.shape}")
        y = np.where((y == 0) | (y == 1), y, np.nan)
        names = list(class_names) if class_names else [str(i) for i in range(s.shape[1])]
        return Prepared(task, y, s, names)
    # binary / multiclass: class indices
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim == 2:
        pos = y == 1
        bad = np.flatnonzero(pos.sum(1) != 1)
        if bad.size:
            raise ValueError(f"{task} labels need exactly one positive per row; rows {bad[:5].tolist()} "
                             f"(0-based) have {int(pos[bad[0]].sum())}")
        y_idx = pos.argmax(1)
    else:
        if np.isnan(y).any() or np.any(y != np.round(y)) or (y.size and y.min() < 0):
            raise ValueError(f"{task} labels must be non-negative class indices or one-hot rows")
        y_idx = y.astype(np.int64)
    if task == "binary":
        if s.shape[1] == 1:
            s = np.concatenate([1.0 - s, s], axis=1)
        if s.shape[1] != 2:
            raise ValueError(f"binary scores must have 1 or 2 columns, got {s.shape[1]}")
        if y_idx.size and y_idx.max() > 1:
            raise ValueError("binary labels must be 0/1")
        names = list(class_names) if class_names else ["0", "1"]
        if len(names) == 1:  # single-class card ("pneumonia" yes/no)
            names = [f"not {names[0]}", names[0]]
    else:
        if y_idx.size and y_idx.max() >= s.shape[1]:
            raise ValueError(f"label index {int(y_idx.max())} out of range for {s.shape[1]} score columns")
        names = list(class_names) if class_names else [str(i) for i in range(s.shape[1])]
    if len(names) != s.shape[1]:
        raise ValueError(f"{len(names)} class names for {s.shape[1]} score columns")
    return Prepared(task, y_idx.astype(np.int64), s, names)


# ---------------------------------------------------------------- per-task kernels
# Each returns (summary value, per-class array with NaN where undefined).

def _single_label_counts(p: Prepared) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class true positives, label counts and prediction counts (binary/multiclass)."""
    k = p.s.shape[1]
    pred = p.s.argmax(1)
    tp = np.bincount(p.y[pred == p.y], minlength=k).astype(np.float64)
    support = np.bincount(p.y, minlength=k).astype(np.float64)
    predicted = np.bincount(pred, minlength=k).astype(np.float64)
    return tp, support, predicted


def _auroc(p: Prepared) -> tuple[float, np.ndarray]:
    k = p.s.shape[1]
    if p.task == "binary":
        a = binary_auroc(p.y == 1, p.s[:, 1])
        return a, np.array([a, a])
    per = np.full(k, np.nan)
    for c in range(k):
        if p.task == "multiclass":
            per[c] = binary_auroc(p.y == c, p.s[:, c])
        else:
            m = ~np.isnan(p.y[:, c])
            per[c] = binary_auroc(p.y[m, c] == 1, p.s[m, c])
    return _nanmean(per), per


def _accuracy(p: Prepared) -> tuple[float, np.ndarray]:
    if p.task == "multilabel":
        valid = ~np.isnan(p.y)
        hit = ((p.s > 0.5) == (p.y == 1)) & valid
        nv = valid.sum(0)
        with np.errstate(invalid="ignore", divide="ignore"):
            per = np.where(nv > 0, hit.sum(0) / np.maximum(nv, 1), np.nan)
        return _nanmean(per), per
    tp, support, _ = _single_label_counts(p)
    with np.errstate(invalid="ignore", divide="ignore"):
        per = np.where(support > 0, tp / np.maximum(support, 1), np.nan)
    return (float(tp.sum() / p.n) if p.n else float("nan")), per


def _balanced_accuracy(p: Prepared) -> tuple[float, np.ndarray]:
    if p.task == "multilabel":
        valid = ~np.isnan(p.y)
        pos = (p.y == 1) & valid
        neg = (p.y == 0) & valid
        pred = p.s > 0.5
        npos, nneg = pos.sum(0), neg.sum(0)
        with np.errstate(invalid="ignore", divide="ignore"):
            tpr = (pred & pos).sum(0) / npos
            tnr = (~pred & neg).sum(0) / nneg
            per = np.where((npos > 0) & (nneg > 0), (tpr + tnr) / 2, np.nan)
        return _nanmean(per), per
    tp, support, _ = _single_label_counts(p)
    with np.errstate(invalid="ignore", divide="ignore"):
        per = np.where(support > 0, tp / np.maximum(support, 1), np.nan)
    return _nanmean(per), per


def _f1(p: Prepared) -> tuple[float, np.ndarray]:
    if p.task == "multilabel":
        valid = ~np.isnan(p.y)
        pos = (p.y == 1) & valid
        pred = (p.s > 0.5) & valid
        tp = (pred & pos).sum(0).astype(np.float64)
        support, predicted = pos.sum(0).astype(np.float64), pred.sum(0).astype(np.float64)
    else:
        tp, support, predicted = _single_label_counts(p)
    with np.errstate(invalid="ignore", divide="ignore"):
        per = np.where(support > 0, 2 * tp / (support + predicted), np.nan)
    return _nanmean(per), per


def _ece(p: Prepared) -> tuple[float, np.ndarray]:
    k = p.s.shape[1]
    if p.task == "multilabel":
        per = np.full(k, np.nan)
        for c in range(k):
            m = ~np.isnan(p.y[:, c])
            prob = p.s[m, c]
            conf = np.maximum(prob, 1 - prob)
            per[c] = _ece_from(conf, (prob > 0.5) == (p.y[m, c] == 1))
        return _nanmean(per), per
    conf = p.s.max(1)
    value = _ece_from(conf, p.s.argmax(1) == p.y)
    # Per-class: calibration of the samples predicted as that class (diagnostic only).
    pred = p.s.argmax(1)
    per = np.array([_ece_from(conf[pred == c], (p.y == c)[pred == c]) for c in range(k)])
    return value, per


_KERNELS = {
    "auroc": _auroc,
    "accuracy": _accuracy,
    "balanced_accuracy": _balanced_accuracy,
    "f1": _f1,
    "ece": _ece,
}
# Metrics whose per-class value needs positives of that class (absent -> undefined, warned).
_NEEDS_POSITIVES = ("auroc", "balanced_accuracy", "f1")


def metric_value(name: str, p: Prepared) -> float:
    """The summary value of one metric on prepared inputs, without warnings (bootstrap kernel)."""
    try:
        kernel = _KERNELS[name]
    except KeyError:
        raise ValueError(f"unknown metric {name!r}; choose from {', '.join(METRICS)}") from None
    return kernel(p)[0]


def undefined_classes(p: Prepared) -> dict[str, str]:
    """Classes for which AUROC is undefined on these labels, with the reason."""
    out: dict[str, str] = {}
    for c, name in enumerate(p.class_names):
        if p.task == "multilabel":
            col = p.y[:, c]
            npos, nneg = int(np.sum(col == 1)), int(np.sum(col == 0))
        else:
            npos = int(np.sum(p.y == c))
            nneg = p.n - npos
        if npos == 0:
            out[name] = "no positive sample"
        elif nneg == 0:
            out[name] = "no negative sample"
    return out


def compute_metrics(scores: np.ndarray, labels: np.ndarray, task: str,
                    metrics: Sequence[str] = METRICS, class_names: Sequence[str] | None = None,
                    warn: bool = True) -> dict[str, MetricResult]:
    """Compute ``metrics`` with per-class values; warns once, naming classes absent from ``labels``."""
    p = prepare(scores, labels, task, class_names)
    return compute_prepared(p, metrics, warn=warn)


def compute_prepared(p: Prepared, metrics: Sequence[str] = METRICS, warn: bool = True) -> dict[str, MetricResult]:
    """:func:`compute_metrics` on already prepared inputs."""
    absent = undefined_classes(p)
    if warn and absent:
        present = len(p.class_names) - len(absent)
        what = "; ".join(f"class {n!r}: {r}" for n, r in absent.items())
        warnings.warn(
            f"{what} in the evaluated labels (n={p.n}); its AUROC/F1/balanced accuracy are undefined "
            f"(NaN per class) and macro averages use the {present} remaining class(es)",
            AbsentClassWarning, stacklevel=3)
    out: dict[str, MetricResult] = {}
    for name in metrics:
        if name not in _KERNELS:
            raise ValueError(f"unknown metric {name!r}; choose from {', '.join(METRICS)}")
        value, per = _KERNELS[name](p)
        if warn and np.isnan(value) and p.n:
            warnings.warn(f"{name} is undefined on these labels (no class has both positives and negatives)",
                          AbsentClassWarning, stacklevel=3)
        out[name] = MetricResult(
            name=name, value=value,
            per_class={c: float(v) for c, v in zip(p.class_names, per, strict=True)},
            undefined=[c for c, v in zip(p.class_names, per, strict=True) if np.isnan(v)],
        )
    return out
