"""Result records (JSON) with their per-sample predictions (``.npz``) stored beside them.

Why per-sample predictions: a paired test between two models (``medvl eval compare A B``) needs
both models' scores on the same samples; storing them with every result (the MedMNIST results
format, extended with ids and patient ids) means comparisons never re-run inference.

On disk, ``--out results.json`` writes

* ``results.json``: a list of records ``{model, task, dataset, split, metric, value, ci_low,
  ci_high, n, n_groups, config, created, predictions, label_task, classes, per_class}``, one per
  metric (``per_class``: class -> value, ``None`` where undefined);
* ``results.predictions.npz`` (or ``results.<i>.predictions.npz`` when the file holds several
  runs, e.g. one per linear-probe fraction): ``ids``, ``rows``, ``patient_ids``, ``scores``
  ``[N, K]``, ``labels`` ``[N, K]`` (1/0, -1/NaN ignored), a JSON ``meta`` and optional
  per-sample arrays ``extra__<name>`` (e.g. retrieval ranks). Records point to it by a path
  relative to the JSON file, so the pair can be moved together.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medvl.errors import MedvlError

RECORD_KEYS = ("model", "task", "dataset", "split", "metric", "value", "ci_low", "ci_high", "n", "n_groups",
               "config", "created")


def _clean(v: Any) -> Any:
    """JSON-safe: NaN -> None, numpy scalars -> Python."""
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return None
    if isinstance(v, Path):
        return str(v)
    return v


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


@dataclass
class MetricRecord:
    """One metric of one model on one dataset split (a row of the results table)."""

    model: str
    task: str  # evaluation task: zeroshot, retrieval, linear-probe, knn, finetune
    dataset: str
    split: str
    metric: str
    value: float
    ci_low: float | None = None
    ci_high: float | None = None
    n: int = 0
    n_groups: int = 0
    config: dict[str, Any] = field(default_factory=dict)
    created: str = field(default_factory=now_iso)
    predictions: str | None = None
    label_task: str = ""
    classes: list[str] = field(default_factory=list)
    per_class: dict[str, float | None] | None = None

    def to_dict(self) -> dict[str, Any]:
        return _clean(asdict(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MetricRecord:
        missing = [k for k in ("model", "task", "metric", "value") if k not in d]
        if missing:
            raise MedvlError(f"result record lacks {', '.join(missing)}: {d}")
        known = {f for f in cls.__dataclass_fields__}
        data = {k: v for k, v in d.items() if k in known}
        data.setdefault("dataset", "")
        data.setdefault("split", "")
        if data.get("value") is None:  # NaN is stored as null
            data["value"] = float("nan")
        return cls(**data)


@dataclass
class Predictions:
    """Per-sample outputs of one evaluation run, enough to recompute any metric or paired test."""

    ids: np.ndarray  # [N] str, stable sample identifiers (image path, else manifest row)
    scores: np.ndarray  # [N, K] float32 probabilities
    labels: np.ndarray  # [N, K] float32 1/0 (-1/NaN ignored)
    label_task: str  # binary | multiclass | multilabel (or "" for retrieval-only runs)
    classes: list[str]
    patient_ids: np.ndarray | None = None  # [N] str
    rows: np.ndarray | None = None  # [N] int manifest rows
    meta: dict[str, Any] = field(default_factory=dict)  # model, task, dataset, split, config
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # per-sample arrays, e.g. ranks

    def __post_init__(self) -> None:
        self.ids = np.asarray(self.ids).astype(str)
        self.scores = np.asarray(self.scores, dtype=np.float32)
        self.labels = np.asarray(self.labels, dtype=np.float32)
        n = len(self.ids)
        if self.scores.shape[0] != n or self.labels.shape[0] != n:
            raise ValueError(f"predictions: {n} ids, {self.scores.shape[0]} score rows, {self.labels.shape[0]} labels")
        if self.patient_ids is not None:
            self.patient_ids = np.asarray(self.patient_ids).astype(str)
        if len(set(self.ids.tolist())) != n:
            raise ValueError("predictions: sample ids are not unique")

    @property
    def n(self) -> int:
        return len(self.ids)

    @property
    def groups(self) -> np.ndarray | None:
        """Patient ids when any are present (bootstrap unit), else None (each sample alone)."""
        if self.patient_ids is None or not any(self.patient_ids):
            return None
        return self.patient_ids

    @property
    def n_groups(self) -> int:
        g = self.groups
        return self.n if g is None else len(set(g.tolist()))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {
            "ids": self.ids, "scores": self.scores, "labels": self.labels,
            "meta": np.array(json.dumps(_clean({**self.meta, "label_task": self.label_task,
                                                "classes": list(self.classes)}))),
        }
        if self.patient_ids is not None:
            arrays["patient_ids"] = self.patient_ids
        if self.rows is not None:
            arrays["rows"] = np.asarray(self.rows, dtype=np.int64)
        for k, v in self.extra.items():
            arrays[f"extra__{k}"] = np.asarray(v)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez_compressed(tmp, **arrays)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Predictions:
        path = Path(path)
        if not path.is_file():
            raise MedvlError(f"predictions file not found: {path}")
        try:
            with np.load(path, allow_pickle=False) as z:
                data = {k: z[k] for k in z.files}
        except Exception as exc:  # zipfile/ValueError on a corrupt file
            raise MedvlError(f"cannot read predictions {path}: {exc}") from exc
        for k in ("ids", "scores", "labels", "meta"):
            if k not in data:
                raise MedvlError(f"predictions {path} lacks the array {k!r}")
        meta = json.loads(str(data["meta"]))
        return cls(ids=data["ids"], scores=data["scores"], labels=data["labels"],
                   label_task=meta.pop("label_task", ""), classes=list(meta.pop("classes", [])),
                   patient_ids=data.get("patient_ids"), rows=data.get("rows"), meta=meta,
                   extra={k[len("extra__"):]: v for k, v in data.items() if k.startswith("extra__")})


@dataclass
class EvalResult:
    """The metric records of one run together with its predictions."""

    records: list[MetricRecord]
    predictions: Predictions | None = None

    def value(self, metric: str) -> float:
        for r in self.records:
            if r.metric == metric:
                return r.value
        raise KeyError(metric)


def _prediction_names(out: Path, count: int) -> list[str]:
    stem = out.name[: -len(out.suffix)] if out.suffix else out.name
    if count == 1:
        return [f"{stem}.predictions.npz"]
    return [f"{stem}.{i}.predictions.npz" for i in range(count)]


def save_results(results: EvalResult | Sequence[EvalResult], out: str | Path) -> Path:
    """Write the records as a JSON list and each run's predictions beside it (see module doc)."""
    out = Path(out)
    if out.suffix.lower() != ".json":
        raise MedvlError(f"--out must be a .json file, got {out}")
    runs = [results] if isinstance(results, EvalResult) else list(results)
    out.parent.mkdir(parents=True, exist_ok=True)
    names = _prediction_names(out, len(runs))
    rows: list[dict[str, Any]] = []
    for run, name in zip(runs, names, strict=True):
        ref = None
        if run.predictions is not None:
            run.predictions.save(out.parent / name)
            ref = name
        for rec in run.records:
            rec.predictions = ref
            rows.append(rec.to_dict())
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(rows, indent=1))
    tmp.replace(out)
    return out


def load_records(path: str | Path) -> list[MetricRecord]:
    """Records from a results JSON (a list, a ``{"records": [...]}`` object) or JSONL file."""
    path = Path(path)
    if not path.is_file():
        raise MedvlError(f"results file not found: {path}")
    text = path.read_text()
    try:
        if path.suffix.lower() == ".jsonl":
            data: Any = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MedvlError(f"{path}: invalid JSON ({exc.msg}, line {exc.lineno})") from exc
    if isinstance(data, dict):
        data = data.get("records", [data])
    if not isinstance(data, list):
        raise MedvlError(f"{path}: expected a list of result records")
    return [MetricRecord.from_dict(d) for d in data]


def load_results(path: str | Path) -> list[EvalResult]:
    """Runs from a results JSON (records grouped by their predictions file), or one ``.npz``."""
    path = Path(path)
    if path.suffix.lower() == ".npz":
        return [EvalResult(records=[], predictions=Predictions.load(path))]
    records = load_records(path)
    groups: dict[str | None, list[MetricRecord]] = {}
    for r in records:
        groups.setdefault(r.predictions, []).append(r)
    runs = []
    for ref, recs in groups.items():
        preds = None
        if ref is not None:
            p = Path(ref)
            preds = Predictions.load(p if p.is_absolute() else path.parent / p)
        runs.append(EvalResult(records=recs, predictions=preds))
    return runs


def records_table(records: Sequence[MetricRecord], title: str | None = None) -> Any:
    """A rich table for humans: one row per metric, value with its 95% CI."""
    from rich.table import Table

    table = Table(title=title, show_lines=False)
    for col in ("model", "task", "dataset", "split", "config", "metric", "value", "95% CI", "n (groups)"):
        table.add_column(col, justify="right" if col in ("value", "95% CI", "n (groups)") else "left")
    for r in records:
        conf = ", ".join(f"{k}={v}" for k, v in r.config.items() if k in ("fraction", "k", "C", "seed", "epochs"))
        ci = "" if r.ci_low is None or r.ci_high is None else f"[{r.ci_low:.3f}, {r.ci_high:.3f}]"
        value = "nan" if r.value is None or (isinstance(r.value, float) and math.isnan(r.value)) else f"{r.value:.4f}"
        table.add_row(r.model, r.task, r.dataset, r.split, conf, r.metric, value, ci, f"{r.n} ({r.n_groups})")
    return table


def make_result(preds: Predictions, model: str, task: str, dataset: str, split: str,
                config: dict[str, Any] | None = None, metrics: Sequence[str] | None = None,
                n_boot: int = 1000, seed: int = 0) -> EvalResult:
    """Score classification predictions: every metric with its (patient-level) bootstrap CI.

    Absent classes are warned about once (by :func:`medvl.evaluate.metrics.compute_prepared`);
    the bootstrap replicates are silent.
    """
    from medvl.evaluate.metrics import METRICS, compute_prepared, prepare
    from medvl.evaluate.stats import bootstrap_prepared

    metrics = list(metrics or METRICS)
    p = prepare(preds.scores, preds.labels, preds.label_task, preds.classes)
    point = compute_prepared(p, metrics)
    cis = bootstrap_prepared(p, metrics, groups=preds.groups, n_boot=n_boot, seed=seed) if n_boot else {}
    config = dict(config or {})
    preds.meta.update({"model": model, "task": task, "dataset": dataset, "split": split, "config": config})
    records = []
    for m in metrics:
        ci = cis.get(m)
        records.append(MetricRecord(
            model=model, task=task, dataset=dataset, split=split, metric=m, value=point[m].value,
            ci_low=ci.low if ci else None, ci_high=ci.high if ci else None, n=preds.n, n_groups=preds.n_groups,
            config={**config, "n_boot": n_boot, "bootstrap_seed": seed}, label_task=preds.label_task,
            classes=list(preds.classes), per_class=_clean(point[m].per_class)))
    return EvalResult(records=records, predictions=preds)
