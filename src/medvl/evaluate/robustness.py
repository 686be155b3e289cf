"""``medvl eval robustness``: does the model still work when the input shifts, and for whom does it not?

One call evaluates one encoder under one protocol and returns a :class:`RobustnessReport`:

* **corruptions** (:mod:`medvl.evaluate.corruptions`): the task metric (AUROC by default) on
  the test split under every applicable corruption x severity, with a patient-level CI and the
  *paired* drop from the clean run (same resampled patients for both, so the drop's CI is much
  tighter than the difference of two CIs), plus the mean relative drop over all cells;
* **site shift**: trained on one site (``in_site``), scored on every site of the test split,
  with the drop from the in-site score and an unpaired bootstrap CI (the sites share no
  patients);
* **subgroups**: per-group metric for any manifest column the user names, the worst group and
  the best-worst gap with a CI. A group too small for a CI gets no interval and says why;
* **calibration** (:mod:`medvl.evaluate.calibration`) of the clean test predictions, temperature
  fitted on validation.

Cost: clean features come from the feature cache (:mod:`medvl.evaluate.features`), the probe or
zero-shot head is built once and reused on every corruption, and only the corrupted test
images are re-encoded (their features are cached too, keyed by corruption, severity and seed).
The ``finetune`` protocol fine-tunes once with :func:`medvl.evaluate.finetune.train_one` and
scores validation, clean test and every corrupted copy of the test split in the same call.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medvl.errors import ConfigError, ManifestError
from medvl.evaluate.calibration import CalibrationReport, Interval, calibration_report
from medvl.evaluate.calibration import percentile_interval as _pct
from medvl.evaluate.corruptions import CORRUPTIONS, SEVERITIES, corrupt, get_corruption
from medvl.evaluate.metrics import METRICS, Prepared, metric_value, prepare

log = logging.getLogger(__name__)
PROTOCOLS = ("zeroshot", "linear-probe", "finetune")
CORRUPT_CHUNK = 64  # corruption randomness is drawn per chunk of this many images (independent of batch size)
MIN_CI_SAMPLES = 20
MIN_CI_GROUPS = 10
MIN_CI_PER_CLASS = 3
CORE_ATTRS = ("site", "modality", "split", "patient_id", "study_id")


# ------------------------------------------------------------------ result types
@dataclass
class CorruptionCell:
    """The metric under one corruption at one severity, and its paired drop from clean."""

    corruption: str
    severity: int
    value: Interval
    drop: Interval  # clean - corrupted (positive = worse)
    relative_drop: float


@dataclass
class SiteResult:
    site: str
    role: str  # "in" (trained here) or "shift"
    n: int
    n_groups: int
    value: Interval
    drop: Interval | None = None  # in-site - this site
    note: str = ""


@dataclass
class GroupResult:
    group: str
    n: int
    n_groups: int
    value: Interval
    note: str = ""


@dataclass
class SubgroupResult:
    column: str
    groups: list[GroupResult]
    worst: str | None = None
    best: str | None = None
    gap: Interval | None = None  # best - worst
    note: str = ""


@dataclass
class RobustnessReport:
    """Everything ``medvl eval robustness`` measured for one model (JSON via :meth:`to_dict`)."""

    model: str
    dataset: str
    split: str
    protocol: str
    metric: str
    label_task: str
    modality: str
    n: int
    n_groups: int
    clean: Interval
    cells: list[CorruptionCell] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    mean_relative_drop: float = float("nan")
    in_site: str | None = None
    sites: list[SiteResult] = field(default_factory=list)
    site_note: str = ""
    subgroups: list[SubgroupResult] = field(default_factory=list)
    calibration: CalibrationReport | None = None
    extras: dict[str, Any] = field(default_factory=dict)  # prompt sensitivity, confusable pairs, merge curve
    config: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    predictions: Any = field(default=None, repr=False)  # clean test Predictions (not in the JSON)

    def worst_cell(self) -> CorruptionCell | None:
        ok = [c for c in self.cells if not math.isnan(c.drop.value)]
        return max(ok, key=lambda c: c.drop.value) if ok else None

    def to_dict(self) -> dict[str, Any]:
        from medvl.evaluate.results import _clean

        d: dict[str, Any] = {}
        for f in fields(self):
            if f.name in ("calibration", "predictions"):
                continue
            v = getattr(self, f.name)
            if is_dataclass(v):
                v = asdict(v)
            elif isinstance(v, list):
                v = [asdict(x) if is_dataclass(x) else x for x in v]
            d[f.name] = v
        d["calibration"] = self.calibration.to_dict() if self.calibration is not None else None
        return _clean(d)


# ------------------------------------------------------------------ bootstrap helpers
def weighted_auroc(y: np.ndarray, s: np.ndarray, w: np.ndarray) -> np.ndarray:
    """AUROC of one binary problem under many bootstrap replicates at once.

    ``w`` [B, N] holds how often each sample was drawn in each replicate; the Mann-Whitney
    statistic with multiplicities (ties count 1/2) equals the AUROC of the resampled data, so one
    sort serves every replicate instead of B ``rankdata`` calls (the corruption grid's bootstrap
    went from ~2 min to seconds). NaN where a replicate has no positive or no negative.
    """
    order = np.argsort(s, kind="stable")
    s_sorted = s[order]
    pos = y[order].astype(np.float64)
    ws = w[:, order]
    starts = np.flatnonzero(np.r_[True, s_sorted[1:] != s_sorted[:-1]])  # tie groups
    gp = np.add.reduceat(ws * pos, starts, axis=1)
    gn = np.add.reduceat(ws * (1.0 - pos), starts, axis=1)
    below = np.cumsum(gn, axis=1) - gn
    num = (gp * (below + 0.5 * gn)).sum(1)
    den = gp.sum(1) * gn.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def boot_auroc(p: Prepared, w: np.ndarray) -> np.ndarray:
    """Macro AUROC per replicate with the conventions of :mod:`medvl.evaluate.metrics` (NaN classes skipped)."""
    if p.task == "binary":
        return weighted_auroc(p.y == 1, p.s[:, 1], w)
    per = []
    for c in range(p.s.shape[1]):
        if p.task == "multiclass":
            per.append(weighted_auroc(p.y == c, p.s[:, c], w))
        else:
            valid = ~np.isnan(p.y[:, c])
            per.append(weighted_auroc(p.y[valid, c] == 1, p.s[valid, c], w[:, valid]))
    stacked = np.stack(per)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(stacked, axis=0)


class _Boot:
    """Fixed patient-level bootstrap replicates of one sample set, shared by every comparison on it."""

    def __init__(self, n: int, groups: Sequence | None, n_boot: int, seed: int):
        from medvl.evaluate.stats import GroupResampler

        self.res = GroupResampler(n, groups)
        self.n_boot = n_boot
        self.idx = list(self.res.replicates(n_boot, seed)) if n_boot else []
        self._w: np.ndarray | None = None

    @property
    def weights(self) -> np.ndarray:
        """[B, N] draw counts of every sample in every replicate (for the vectorised AUROC)."""
        if self._w is None:
            n = self.res.n
            self._w = np.stack([np.bincount(i, minlength=n) for i in self.idx]).astype(np.float64) \
                if self.idx else np.zeros((0, n))
        return self._w

    def values(self, p: Prepared, metric: str) -> np.ndarray:
        if metric == "auroc":
            return boot_auroc(p, self.weights)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return np.array([metric_value(metric, p.take(i)) for i in self.idx], dtype=np.float64)


def _value(p: Prepared, metric: str) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(metric_value(metric, p))


def ci_blocker(p: Prepared, groups: np.ndarray | None) -> str:
    """Why a set of predictions is too small for a bootstrap CI ("" when it is not).

    A percentile bootstrap on a handful of patients gives intervals that look precise and are
    not; below these sizes we report the point value only and say so.
    """
    n_groups = len(set(groups.tolist())) if groups is not None and len(groups) else p.n
    if p.n < MIN_CI_SAMPLES:
        return f"n={p.n} < {MIN_CI_SAMPLES} samples: too small for a CI"
    if n_groups < MIN_CI_GROUPS:
        return f"{n_groups} patients < {MIN_CI_GROUPS}: too small for a CI"
    if p.task != "multilabel":
        counts = np.bincount(p.y, minlength=p.s.shape[1])
        present = counts[counts > 0]
        if present.size < 2:
            return "one class only: the metric is undefined"
        if present.min() < MIN_CI_PER_CLASS:
            return f"a class has {int(present.min())} sample(s) (< {MIN_CI_PER_CLASS}): too few for a CI"
    return ""


# ------------------------------------------------------------------ scorers (the protocol's head)
@dataclass
class _Scored:
    """Per-protocol output: validation and clean test scores, and a function scoring corrupted test images."""

    val: np.ndarray | None
    test: np.ndarray
    score_corrupted: Callable[[str, int], np.ndarray]
    config: dict[str, Any]


def _pixels01(manifest: Any, split: str, pre: dict[str, Any]) -> Any:
    """The split as [0, 1] tensors (resized, channels fixed, *not* normalised): what corruptions act on."""
    from medvl.evaluate.finetune import load_split

    zero = {**pre, "mean": [0.0] * len(pre["mean"]), "std": [1.0] * len(pre["std"])}
    return load_split(manifest, split, zero)


def _normalise(x: torch.Tensor, pre: dict[str, Any]) -> torch.Tensor:
    shape = (1, -1) + (1,) * (x.ndim - 2)
    m = torch.as_tensor(pre["mean"], dtype=torch.float32).view(shape)
    s = torch.as_tensor(pre["std"], dtype=torch.float32).view(shape)
    return (x - m) / s


def corrupted_batch(x01: torch.Tensor, name: str, severity: int, seed: int = 0) -> torch.Tensor:
    """Corrupt a whole split in fixed chunks, so the pixels do not depend on the encoding batch size."""
    return torch.cat([corrupt(x01[i:i + CORRUPT_CHUNK], name, severity, seed, i // CORRUPT_CHUNK)
                      for i in range(0, x01.shape[0], CORRUPT_CHUNK)])


def corrupted_features(encoder: Any, manifest: Any, split: str, x01: torch.Tensor, name: str, severity: int,
                       seed: int = 0, cache_dir: str | Path | None = None, batch_size: int = 128) -> np.ndarray:
    """Embeddings [N, D] of the corrupted split (cached like clean features, keyed by corruption too)."""
    from medvl.evaluate.features import Features, cache_key, preprocessing_of

    pre = preprocessing_of(encoder)
    path = None
    if cache_dir is not None:
        key = cache_key(encoder, manifest, split, {**pre, "corruption": name, "severity": severity, "seed": seed,
                                                   "chunk": CORRUPT_CHUNK})
        path = Path(cache_dir) / f"{key}.npz"
        if path.is_file():
            try:
                return Features.load(path).x
            except Exception as exc:  # truncated by a killed run: recompute
                log.warning("robustness: ignoring unreadable cache %s (%s)", path, exc)
    xc = _normalise(corrupted_batch(x01, name, severity, seed), pre)
    x = encoder.encode_image(xc, batch_size=batch_size).float().numpy()
    if path is not None:
        n = x.shape[0]
        Features(x=x, labels=np.zeros((n, 0), np.float32), ids=np.array([f"c{i}" for i in range(n)]),
                 rows=np.arange(n), patient_ids=np.array([""] * n),
                 meta={"corruption": name, "severity": severity}).save(path)
    return x


def _feature_scorer(protocol: str, inputs: Any, feats: dict[str, Any], split: str, x01: torch.Tensor,
                    cache_dir: Path | None, seed: int, device: str, batch_size: int,
                    train_mask: np.ndarray | None = None) -> _Scored:
    """Zero-shot or linear-probe head on frozen features; the head is built once and reused."""
    from medvl.evaluate.features import classification_labels

    enc, task, classes = inputs.encoder, inputs.task, inputs.classes
    test, val = feats[split], feats.get("val")
    if protocol == "zeroshot":
        from medvl.evaluate.zeroshot import (
            class_embeddings,
            model_logit_scale,
            uses_prompt_pairs,
            zeroshot_scores,
        )

        if not getattr(enc, "has_text", False):
            raise ConfigError(f"robustness --protocol zeroshot needs an encoder with a text tower; "
                              f"{inputs.model_name!r} has none (use --protocol linear-probe)")
        scale = model_logit_scale(enc)
        pos = class_embeddings(enc, inputs.manifest.card, classes)
        neg = class_embeddings(enc, inputs.manifest.card, classes, negative=True) \
            if uses_prompt_pairs(task, len(classes)) else None

        def head(x: np.ndarray) -> np.ndarray:
            return zeroshot_scores(x, pos, task, neg, scale)
        config = {"logit_scale": scale}
    else:
        from medvl.evaluate.linear_probe import C_GRID, fit_probe, stratified_subset

        train = feats.get("train")
        if train is None:
            raise ConfigError(f"{inputs.manifest.path}: --protocol linear-probe needs a 'train' split")
        x_tr, y_tr = train.x, classification_labels(train, task)
        if train_mask is not None:
            x_tr, y_tr = x_tr[train_mask], y_tr[train_mask]
        if val is not None:
            x_v, y_v = val.x, classification_labels(val, task)
        else:
            held = stratified_subset(y_tr, task, 0.1, seed=0)
            keep = np.setdiff1d(np.arange(len(y_tr)), held)
            x_v, y_v, x_tr, y_tr = x_tr[held], y_tr[held], x_tr[keep], y_tr[keep]
        mu, sd = x_tr.mean(0, keepdims=True), x_tr.std(0, keepdims=True) + 1e-6
        n_classes = max(2, classification_labels(test, task).shape[1])
        fit = fit_probe((x_tr - mu) / sd, y_tr, (x_v - mu) / sd, y_v, task, n_classes, classes, C_GRID,
                        "auroc", device)
        single = task == "binary" and y_tr.shape[1] == 1

        def head(x: np.ndarray) -> np.ndarray:
            probs = fit.model.predict_proba(((x - mu) / sd).astype(np.float32))
            return probs[:, 1:] if single else probs
        config = {"C": fit.C, "n_train": int(len(y_tr))}

    def score_corrupted(name: str, severity: int) -> np.ndarray:
        return head(corrupted_features(enc, inputs.manifest, split, x01, name, severity, seed, cache_dir,
                                       batch_size))

    return _Scored(head(val.x) if val is not None else None, head(test.x), score_corrupted, config)


def _finetune_scorer(inputs: Any, split: str, cells: list[tuple[str, int]], seed: int, device: str,
                     finetune_options: dict[str, Any], train_rows: set[int] | None = None) -> _Scored:
    """Fine-tune once; score val, clean test and every corrupted test copy in the same prediction pass.

    ``finetune_options``: the fine-tuning protocol's overrides plus ``spec``/``encoder_kwargs`` (how to
    rebuild a fresh encoder: each fine-tuning run starts from the pretrained weights).
    """
    from medvl.evaluate.features import preprocessing_of
    from medvl.evaluate.finetune import SplitTensors, load_split, protocol_config, train_one
    from medvl.models.encoder import load_encoder

    opts = dict(finetune_options)
    spec, kwargs = str(opts.pop("spec")), dict(opts.pop("encoder_kwargs", None) or {})
    cfg = protocol_config(opts.pop("protocol", "default"), **opts)

    def make_encoder() -> Any:
        return load_encoder(spec, device="cpu", **kwargs)

    pre = preprocessing_of(inputs.encoder)
    train = load_split(inputs.manifest, "train", pre)
    if train_rows is not None:
        keep = torch.as_tensor(np.isin(train.rows, list(train_rows)))
        train = SplitTensors(train.x[keep], train.labels[keep.numpy()], train.ids[keep.numpy()],
                             train.rows[keep.numpy()], train.patient_ids[keep.numpy()])
    val = load_split(inputs.manifest, "val", pre)
    x01 = _pixels01(inputs.manifest, split, pre)
    blocks = [val.x, _normalise(x01.x, pre)] + [_normalise(corrupted_batch(x01.x, c, s, seed), pre) for c, s in cells]
    n_val, n_test = val.x.shape[0], x01.x.shape[0]
    big = SplitTensors(torch.cat(blocks), np.zeros((0, 0)), np.array([]), np.array([]), np.array([]))
    run = train_one(make_encoder, train, val, big, inputs.task, inputs.classes, cfg, seed, device)
    scores = run.scores
    out = {cell: scores[n_val + n_test * (i + 1): n_val + n_test * (i + 2)] for i, cell in enumerate(cells)}

    def score_corrupted(name: str, severity: int) -> np.ndarray:
        return out[(name, severity)]

    return _Scored(scores[:n_val], scores[n_val:n_val + n_test], score_corrupted,
                   {"best_epoch": run.best_epoch, "epochs_run": run.epochs_run, "n_train": int(train.x.shape[0])})


# ------------------------------------------------------------------ pieces of the report
def split_modality(manifest: Any, split: str) -> str:
    """The modality of a split: the rows' ``modality`` column when uniform, else the card's."""
    mods = {s.modality for s in manifest.samples if s.split == split and s.modality}
    if len(mods) == 1:
        return next(iter(mods))
    if len(mods) > 1:
        return "mixed(" + ",".join(sorted(mods)) + ")"
    card = getattr(manifest, "card", None)
    return str(getattr(card, "modality", "") or "unknown")


def select_cells(corruptions: Sequence[str] | None, severities: Sequence[int], modality: str,
                 spatial_dims: int) -> tuple[list[tuple[str, int]], dict[str, str]]:
    """The (corruption, severity) cells to run and the corruptions skipped, with the reason."""
    names = list(corruptions) if corruptions else list(CORRUPTIONS)
    bad = [s for s in severities if s not in SEVERITIES]
    if bad:
        raise ConfigError(f"--severities: {bad} not in 1-5")
    cells, skipped = [], {}
    for name in names:
        c = get_corruption(name)
        reason = c.skip_reason(modality, spatial_dims)
        if reason:
            skipped[name] = reason
            continue
        cells += [(name, int(s)) for s in severities]
    return cells, skipped


def corruption_cells(clean: Prepared, corrupted: dict[tuple[str, int], Prepared], metric: str, boot: _Boot,
                     level: float = 0.95) -> tuple[list[CorruptionCell], float]:
    """Per cell: metric with CI and the paired drop (same replicates as the clean run); mean relative drop."""
    clean_v = _value(clean, metric)
    clean_b = boot.values(clean, metric) if boot.n_boot else np.array([])
    cells = []
    for (name, sev), p in corrupted.items():
        v = _value(p, metric)
        if boot.n_boot:
            b = boot.values(p, metric)
            iv, dv = Interval(v, *_pct(b, level)), Interval(clean_v - v, *_pct(clean_b - b, level))
        else:
            iv, dv = Interval(v), Interval(clean_v - v)
        rel = (clean_v - v) / clean_v if clean_v else float("nan")
        cells.append(CorruptionCell(name, sev, iv, dv, float(rel)))
    rels = [c.relative_drop for c in cells if not math.isnan(c.relative_drop)]
    return cells, float(np.mean(rels)) if rels else float("nan")


def _interval(p: Prepared, metric: str, groups: np.ndarray | None, n_boot: int, seed: int
              ) -> tuple[Interval, np.ndarray, str]:
    """Point value, CI (unless too small: then NaN bounds and the reason), and the replicate values."""
    v = _value(p, metric)
    why = ci_blocker(p, groups)
    if why or not n_boot:
        return Interval(v), np.array([]), why
    b = _Boot(p.n, groups, n_boot, seed).values(p, metric)
    return Interval(v, *_pct(b)), b, ""


def _diff(a: tuple[Interval, np.ndarray], b: tuple[Interval, np.ndarray]) -> Interval:
    """Unpaired difference a - b; a CI only when both sides have replicates (independent samples)."""
    if a[1].size and b[1].size:
        return Interval(a[0].value - b[0].value, *_pct(a[1] - b[1]))
    return Interval(a[0].value - b[0].value)


def column_values(samples: Sequence[Any], column: str, manifest_path: Any = "") -> list[str]:
    """The value of ``column`` for every sample (core attribute or extra manifest column)."""
    if column in CORE_ATTRS:
        vals = [str(getattr(s, column) or "") for s in samples]
    else:
        if not any(column in s.extra for s in samples):
            avail = sorted({k for s in samples for k in s.extra} | {a for a in CORE_ATTRS
                                                                    if any(getattr(s, a) for s in samples)})
            raise ConfigError(f"{manifest_path}: subgroup column {column!r} is not in the manifest; columns: "
                              f"{', '.join(avail) or '(none)'}")
        vals = [str(s.extra.get(column, "") or "") for s in samples]
    return [v if v not in ("", "nan", "None") else "(blank)" for v in vals]


def subgroup_analysis(p: Prepared, values: Sequence[str], column: str, metric: str, groups: np.ndarray | None,
                      n_boot: int = 1000, seed: int = 0) -> SubgroupResult:
    """Per-group metric (CI where the group is large enough), worst group and best-worst gap."""
    vals = np.asarray(values)
    names = sorted(set(vals.tolist()))
    if len(names) < 2:
        only = names[0] if names else "(none)"
        v, _, why = _interval(p, metric, groups, n_boot, seed)
        g = GroupResult(only, p.n, len(set(groups.tolist())) if groups is not None else p.n, v, why)
        return SubgroupResult(column, [g], note=f"column {column!r} has one group ({only!r}) in this split: "
                                                "no subgroup comparison")
    out: list[GroupResult] = []
    reps: dict[str, tuple[Interval, np.ndarray]] = {}
    for name in names:
        idx = np.flatnonzero(vals == name)
        q = p.take(idx)
        gg = groups[idx] if groups is not None else None
        iv, b, why = _interval(q, metric, gg, n_boot, seed)
        reps[name] = (iv, b)
        out.append(GroupResult(name, q.n, len(set(gg.tolist())) if gg is not None else q.n, iv, why))
    defined = [g for g in out if not math.isnan(g.value.value)]
    if len(defined) < 2:
        return SubgroupResult(column, out, note=f"{metric} is defined in fewer than two groups: no gap")
    # The worst group is looked for among groups large enough for a CI: a 2-image group's AUROC of 0 or 1
    # is noise, and naming it "the worst group" would be the loudest number on the card.
    sized = [g for g in defined if not g.note]
    pool = sized if len(sized) >= 2 else defined
    worst = min(pool, key=lambda g: g.value.value)
    best = max(pool, key=lambda g: g.value.value)
    gap = _diff(reps[best.group], reps[worst.group])
    small = len(defined) - len(sized)
    if pool is sized:
        note = f"worst/best among the {len(sized)} groups large enough for a CI" + (
            f"; {small} smaller group(s) listed without one" if small else "")
        note = "" if not small else note
    else:
        note = "gap without CI: fewer than two groups are large enough for one"
    return SubgroupResult(column, out, worst.group, best.group, gap, note)


def site_results(p: Prepared, sites: Sequence[str], in_site: str, metric: str, groups: np.ndarray | None,
                 n_boot: int = 1000, seed: int = 0) -> list[SiteResult]:
    """Metric per test site and the drop from the in-site score (unpaired bootstrap CI)."""
    site_arr = np.asarray(sites)
    out, reps = [], {}
    for site in sorted(set(site_arr.tolist())):
        idx = np.flatnonzero(site_arr == site)
        gg = groups[idx] if groups is not None else None
        iv, b, why = _interval(p.take(idx), metric, gg, n_boot, seed)
        reps[site] = (iv, b)
        out.append(SiteResult(site, "in" if site == in_site else "shift", int(idx.size),
                              len(set(gg.tolist())) if gg is not None else int(idx.size), iv, note=why))
    for r in out:
        if r.role == "shift" and in_site in reps:
            r.drop = _diff(reps[in_site], reps[r.site])
    return out


# ------------------------------------------------------------------ the whole run
def robustness_eval(model: str, data: str | Path, protocol: str = "linear-probe", split: str = "test",
                    metric: str = "auroc", corruptions: Sequence[str] | None = None,
                    severities: Sequence[int] = SEVERITIES, subgroups: Sequence[str] = (),
                    in_site: str | None = None, site_shift: bool = True, n_boot: int = 1000, seed: int = 0,
                    device: str = "cpu", batch_size: int = 128, cache_dir: str | Path | None = None,
                    finetune_options: dict[str, Any] | None = None, model_name: str | None = None,
                    extras: Sequence[str] = ("prompts", "confusable"),
                    encoder_kwargs: dict[str, Any] | None = None) -> RobustnessReport:
    """Run every robustness check on one model (see the module doc); plain arguments, plain result."""
    from medvl.evaluate.features import load_eval_inputs, preprocessing_of, split_features

    if protocol not in PROTOCOLS:
        raise ConfigError(f"--protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    if metric not in METRICS:
        raise ConfigError(f"--metric must be one of {', '.join(METRICS)}, got {metric!r}")
    t0 = time.perf_counter()
    seconds: dict[str, float] = {}
    inputs = load_eval_inputs(model, data, device, encoder_kwargs)
    if model_name:
        inputs.model_name = model_name
    manifest, task = inputs.manifest, inputs.task
    if split not in manifest.splits:
        raise ManifestError(f"{manifest.path}: no rows in split {split!r}; splits: {', '.join(manifest.splits)}")
    pre = preprocessing_of(inputs.encoder)
    x01 = _pixels01(manifest, split, pre)
    spatial_dims = x01.x.ndim - 2
    modality = split_modality(manifest, split)
    cells, skipped = select_cells(corruptions, severities, modality, spatial_dims)
    cache = Path(cache_dir) if cache_dir is not None else None
    finetune_options = {**(finetune_options or {}), "spec": str(model), "encoder_kwargs": encoder_kwargs}
    # bad --subgroups / --in-site fail now, not after minutes of encoding corrupted images
    by_row = {s.row: s for s in manifest.samples}
    test_samples = [by_row[int(r)] for r in x01.rows]
    group_values = {column: column_values(test_samples, column, manifest.path) for column in subgroups}
    sites = [s.site or "(blank)" for s in test_samples]
    distinct = sorted(set(sites))
    if site_shift and in_site is not None and len(distinct) >= 2 and in_site not in distinct:
        raise ConfigError(f"--in-site {in_site!r} is not a site of split {split!r}; sites: {', '.join(distinct)}")
    seconds["load"] = time.perf_counter() - t0

    t = time.perf_counter()
    feats: dict[str, Any] = {}
    if protocol == "finetune":
        scored = _finetune_scorer(inputs, split, cells, seed, device, finetune_options)
        test_ids, test_rows, test_groups_raw = x01.ids, x01.rows, x01.patient_ids
    else:
        feats = split_features(inputs, ["train", "val", split], cache, batch_size)
        test = feats[split]
        if not np.array_equal(test.rows, x01.rows):
            raise ManifestError(f"{manifest.path}: feature rows and image rows of split {split!r} differ "
                                "(stale feature cache?); rerun with a fresh --cache-dir")
        scored = _feature_scorer(protocol, inputs, feats, split, x01.x, cache, seed, device, batch_size)
        test_ids, test_rows, test_groups_raw = test.ids, test.rows, test.patient_ids
    seconds["clean"] = time.perf_counter() - t

    from medvl.evaluate.features import Features, classification_labels

    label_feats = Features(x=np.zeros((len(x01.ids), 0), np.float32), labels=x01.labels, ids=x01.ids,
                           rows=x01.rows, patient_ids=x01.patient_ids)
    y_test = classification_labels(label_feats, task)
    groups = test_groups_raw if any(test_groups_raw) else None
    clean = prepare(scored.test, y_test, task, inputs.classes)
    boot = _Boot(clean.n, groups, n_boot, seed)
    clean_iv = Interval(_value(clean, metric), *(_pct(boot.values(clean, metric)) if n_boot else (math.nan,) * 2))

    t = time.perf_counter()
    corrupted = {(c, s): prepare(scored.score_corrupted(c, s), y_test, task, inputs.classes) for c, s in cells}
    seconds["corruptions_encode"] = time.perf_counter() - t
    t = time.perf_counter()
    cell_results, mean_rel = corruption_cells(clean, corrupted, metric, boot)
    seconds["corruptions_stats"] = time.perf_counter() - t

    report = RobustnessReport(
        model=inputs.model_name, dataset=inputs.dataset, split=split, protocol=protocol, metric=metric,
        label_task=task, modality=modality, n=clean.n, n_groups=boot.res.n_groups, clean=clean_iv,
        cells=cell_results, skipped=skipped, mean_relative_drop=mean_rel,
        config={"n_boot": n_boot, "seed": seed, "severities": list(severities), "preprocess": pre,
                "head": scored.config, "manifest": str(manifest.path), "model_spec": str(model)})
    from medvl.evaluate.results import Predictions

    report.predictions = Predictions(ids=test_ids, scores=scored.test, labels=y_test, label_task=task,
                                     classes=list(inputs.classes), patient_ids=test_groups_raw, rows=test_rows)

    # site shift
    t = time.perf_counter()
    if not site_shift:
        report.site_note = "site shift not requested"
    elif distinct == ["(blank)"]:
        report.site_note = "the manifest has no site column (or it is blank): no site shift measured"
    elif len(distinct) < 2:
        report.site_note = (f"one site only in split {split!r} ({distinct[0] if distinct else 'none'}): "
                            "no site shift measured")
    else:
        chosen = in_site if in_site is not None else distinct[0]
        if chosen not in distinct:
            raise ConfigError(f"--in-site {chosen!r} is not a site of split {split!r}; sites: {', '.join(distinct)}")
        report.in_site = chosen
        site_scores = _site_scores(protocol, inputs, feats, split, x01, cache, seed, device, batch_size,
                                   chosen, scored, finetune_options)
        sp = prepare(site_scores, y_test, task, inputs.classes)
        report.sites = site_results(sp, sites, chosen, metric, groups, n_boot, seed)
        report.site_note = (f"{protocol} trained on site {chosen!r} only" if protocol != "zeroshot"
                            else "zero-shot (no training): per-site scores of the same model")
    seconds["sites"] = time.perf_counter() - t

    # subgroups
    t = time.perf_counter()
    for column, vals in group_values.items():
        report.subgroups.append(subgroup_analysis(clean, vals, column, metric, groups, n_boot, seed))
    seconds["subgroups"] = time.perf_counter() - t

    # calibration
    t = time.perf_counter()
    val_p = None
    if scored.val is not None and "val" in manifest.splits:
        val_labels = feats["val"] if feats.get("val") is not None else None
        if val_labels is not None:
            val_p = prepare(scored.val, classification_labels(val_labels, task), task, inputs.classes)
        else:  # finetune: labels of the val split in load order
            from medvl.evaluate.finetune import load_split

            v = load_split(manifest, "val", pre)
            vf = Features(x=np.zeros((len(v.ids), 0), np.float32), labels=v.labels, ids=v.ids, rows=v.rows,
                          patient_ids=v.patient_ids)
            val_p = prepare(scored.val, classification_labels(vf, task), task, inputs.classes)
    report.calibration = calibration_report(clean, val_p, groups, n_boot, seed)
    seconds["calibration"] = time.perf_counter() - t

    # optional analyses that need features (zero-shot prompts, confusable pairs)
    t = time.perf_counter()
    if protocol != "finetune":
        _extras(report, extras, inputs, feats, split, clean, metric, test_ids)
    seconds["extras"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - t0
    report.seconds = {k: round(v, 2) for k, v in seconds.items()}
    log.info("robustness: %s done in %.1fs", inputs.model_name, seconds["total"])
    return report


def _site_scores(protocol: str, inputs: Any, feats: dict[str, Any], split: str, x01: Any, cache: Path | None,
                 seed: int, device: str, batch_size: int, in_site: str, scored: _Scored,
                 finetune_options: dict[str, Any]) -> np.ndarray:
    """Test scores of a head trained on ``in_site`` only (zero-shot: the clean scores, nothing is trained)."""
    if protocol == "zeroshot":
        return scored.test
    site_rows = {s.row for s in inputs.manifest.samples if s.split == "train" and (s.site or "(blank)") == in_site}
    if not site_rows:
        raise ConfigError(f"site shift: no train rows at site {in_site!r}; choose --in-site among the train sites")
    if protocol == "finetune":
        return _finetune_scorer(inputs, split, [], seed, device, finetune_options, train_rows=site_rows).test
    mask = np.isin(feats["train"].rows, list(site_rows))
    site_feats = dict(feats)
    val = feats.get("val")
    if val is not None:
        val_rows = {s.row for s in inputs.manifest.samples if s.split == "val" and (s.site or "(blank)") == in_site}
        keep = np.isin(val.rows, list(val_rows))
        if keep.sum() >= 2:
            from medvl.evaluate.features import Features

            site_feats["val"] = Features(x=val.x[keep], labels=val.labels[keep], ids=val.ids[keep],
                                         rows=val.rows[keep], patient_ids=val.patient_ids[keep])
    return _feature_scorer(protocol, inputs, site_feats, split, x01.x, cache, seed, device, batch_size,
                           train_mask=mask).test


def _extras(report: RobustnessReport, extras: Sequence[str], inputs: Any, feats: dict[str, Any], split: str,
            clean: Prepared, metric: str, test_ids: np.ndarray) -> None:
    """Prompt sensitivity (zero-shot) and confusable pairs, when their modules are available."""
    if "prompts" in extras and getattr(inputs.encoder, "has_text", False):
        try:
            from medvl.evaluate.prompt_sensitivity import prompt_sensitivity
        except ImportError:  # module not installed in this build
            prompt_sensitivity = None
        if prompt_sensitivity is not None:
            ps = prompt_sensitivity(inputs.encoder, feats[split], inputs.manifest.card, inputs.classes, inputs.task,
                                    metric=metric)
            report.extras["prompt_sensitivity"] = ps.to_dict()
    if "confusable" in extras:
        try:
            from medvl.evaluate.confusable import confusable_pairs
        except ImportError:
            confusable_pairs = None
        if confusable_pairs is not None:
            cp = confusable_pairs(feats[split], clean, ids=test_ids)
            report.extras["confusable_pairs"] = cp.to_dict()
