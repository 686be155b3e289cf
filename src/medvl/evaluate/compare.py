"""Paired comparison of two stored results on the same samples (``medvl eval compare A B``).

Reads the per-sample predictions saved with each result (:mod:`medvl.evaluate.results`), aligns
them by sample id, refuses to compare different sample sets or different labels, and runs:

* a paired bootstrap (patient-level when patient ids are present) for every metric;
* DeLong's test for AUROC (binary: the positive class; multiclass/multilabel: per class);
* McNemar's test for accuracy (binary/multiclass: per-sample correctness);
* for retrieval results, a paired bootstrap of each per-sample measure (hits@K, ranks).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medvl.errors import MedvlError
from medvl.evaluate.metrics import METRICS, prepare
from medvl.evaluate.results import EvalResult, Predictions, load_results
from medvl.evaluate.stats import (
    DEFAULT_N_BOOT,
    PairedTest,
    delong_test,
    mcnemar_test,
    paired_bootstrap_prepared,
    paired_bootstrap_statistic,
)


@dataclass
class Comparison:
    """All paired tests of A vs B (delta = A - B)."""

    name_a: str
    name_b: str
    n: int
    n_groups: int
    tests: list[PairedTest] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        from medvl.evaluate.results import _clean

        return _clean({"a": self.name_a, "b": self.name_b, "n": self.n, "n_groups": self.n_groups,
                       "notes": self.notes, "tests": [t.__dict__ for t in self.tests]})


def align(a: Predictions, b: Predictions) -> tuple[Predictions, Predictions]:
    """Reorder ``b`` to ``a``'s sample order; error unless both hold exactly the same samples/labels."""
    ida, idb = a.ids.tolist(), b.ids.tolist()
    if set(ida) != set(idb):
        only_a = sorted(set(ida) - set(idb))
        only_b = sorted(set(idb) - set(ida))
        raise MedvlError(
            f"the two results are not on the same samples: {len(ida)} vs {len(idb)} samples, "
            f"{len(only_a)} only in A (e.g. {only_a[:3]}), {len(only_b)} only in B (e.g. {only_b[:3]}); "
            "a paired comparison needs both models evaluated on the same split of the same manifest")
    pos = {s: i for i, s in enumerate(idb)}
    order = np.array([pos[s] for s in ida], dtype=np.int64)
    if list(a.classes) != list(b.classes) or a.label_task != b.label_task:
        raise MedvlError(f"the two results use different label spaces: {a.label_task} {a.classes} vs "
                         f"{b.label_task} {b.classes}")
    lb = b.labels[order]
    if a.labels.shape != lb.shape or not np.array_equal(np.nan_to_num(a.labels, nan=-9),
                                                        np.nan_to_num(lb, nan=-9)):
        bad = int(np.sum(np.any(np.nan_to_num(a.labels, nan=-9) != np.nan_to_num(lb, nan=-9), axis=1)))
        raise MedvlError(f"the two results have different labels for {bad} of {a.n} samples; "
                         "were they evaluated on different manifest versions?")
    b2 = Predictions(ids=b.ids[order], scores=b.scores[order], labels=lb, label_task=b.label_task,
                     classes=list(b.classes), patient_ids=None if b.patient_ids is None else b.patient_ids[order],
                     rows=None if b.rows is None else np.asarray(b.rows)[order], meta=b.meta,
                     extra={k: np.asarray(v)[order] for k, v in b.extra.items()})
    return a, b2


def compare_predictions(a: Predictions, b: Predictions, metrics: Sequence[str] | None = None,
                        n_boot: int = DEFAULT_N_BOOT, seed: int = 0, name_a: str = "A",
                        name_b: str = "B") -> Comparison:
    """Every applicable paired test between two aligned-able prediction sets."""
    a, b = align(a, b)
    groups = a.groups
    comp = Comparison(name_a, name_b, a.n, a.n_groups)
    if groups is None:
        comp.notes.append("no patient ids: samples treated as independent")
    if a.label_task:
        pa = prepare(a.scores, a.labels, a.label_task, a.classes)
        pb = prepare(b.scores, b.labels, b.label_task, b.classes)
        for m in metrics or METRICS:
            comp.tests.append(paired_bootstrap_prepared(pa, pb, m, groups, n_boot, seed))
        if not metrics or "auroc" in metrics:
            comp.tests.extend(_delong_tests(pa, pb))
            if a.n_groups < a.n:
                comp.notes.append("DeLong assumes independent samples; with several images per patient "
                                  "prefer the patient-level paired bootstrap")
        if (not metrics or "accuracy" in metrics) and a.label_task != "multilabel":
            ok_a = pa.s.argmax(1) == pa.y
            ok_b = pb.s.argmax(1) == pb.y
            comp.tests.append(mcnemar_test(ok_a, ok_b))
    if a.meta.get("task") == "reports" and b.meta.get("task") == "reports":  # corpus BLEU / CE from stored stats
        from medvl.evaluate.reports import paired_report_tests

        comp.tests.extend(paired_report_tests(a, b, groups, n_boot, seed, metrics))
    for key in sorted(set(a.extra) & set(b.extra)):
        va, vb = np.asarray(a.extra[key], dtype=float), np.asarray(b.extra[key], dtype=float)
        if va.ndim != 1:
            continue
        comp.tests.append(paired_bootstrap_statistic(va, vb, groups, n_boot=n_boot, seed=seed, name=key))
    return comp


def _delong_tests(pa: Any, pb: Any) -> list[PairedTest]:
    out = []
    if pa.task == "binary":
        try:
            out.append(delong_test(pa.y == 1, pa.s[:, 1], pb.s[:, 1], name="auroc"))
        except ValueError:
            pass  # fewer than 2 positives or negatives: only the bootstrap applies
        return out
    for c, cls in enumerate(pa.class_names):
        if pa.task == "multiclass":
            y, keep = pa.y == c, slice(None)
        else:
            keep = ~np.isnan(pa.y[:, c])
            y = pa.y[keep, c] == 1
        try:
            t = delong_test(y, pa.s[keep, c], pb.s[keep, c], name=f"auroc[{cls}]")
        except ValueError:
            continue
        out.append(t)
    return out


def _pick_run(path: Path, runs: list[EvalResult], index: int | None) -> EvalResult:
    runs = [r for r in runs if r.predictions is not None]
    if not runs:
        raise MedvlError(f"{path} references no stored predictions; re-run the evaluation with --out")
    if index is not None:
        if not 0 <= index < len(runs):
            raise MedvlError(f"{path} holds {len(runs)} runs; run index {index} is out of range")
        return runs[index]
    if len(runs) > 1:
        keys = ("fraction", "seed", "k", "C", "epochs")

        def brief(r: EvalResult) -> str:
            cfg = r.records[0].config if r.records else {}
            return ", ".join(f"{k}={cfg[k]}" for k in keys if k in cfg) or "-"
        listing = "; ".join(f"{i}: {brief(r)}" for i, r in enumerate(runs))
        raise MedvlError(f"{path} holds {len(runs)} runs ({listing}); choose one with --run-a/--run-b "
                         "or pass its .predictions.npz file")
    return runs[0]


def _describe(path: Path, run: EvalResult) -> str:
    meta = run.predictions.meta if run.predictions else {}
    model = meta.get("model") or (run.records[0].model if run.records else path.stem)
    task = meta.get("task") or (run.records[0].task if run.records else "")
    return f"{model} ({task})" if task else str(model)


def compare_files(path_a: str | Path, path_b: str | Path, metrics: Sequence[str] | None = None,
                  n_boot: int = DEFAULT_N_BOOT, seed: int = 0, run_a: int | None = None,
                  run_b: int | None = None) -> Comparison:
    """:func:`compare_predictions` on two stored results (JSON records or ``.npz`` predictions)."""
    pa, pb = Path(path_a), Path(path_b)
    ra = _pick_run(pa, load_results(pa), run_a)
    rb = _pick_run(pb, load_results(pb), run_b)
    assert ra.predictions is not None and rb.predictions is not None
    return compare_predictions(ra.predictions, rb.predictions, metrics, n_boot, seed,
                               name_a=_describe(pa, ra), name_b=_describe(pb, rb))


def comparison_table(comp: Comparison) -> Any:
    """Rich table: one row per test, A, B, delta with CI, p-value."""
    from rich.table import Table

    table = Table(title=f"A = {comp.name_a}  vs  B = {comp.name_b}   (n={comp.n}, groups={comp.n_groups})")
    for col in ("metric", "test", "A", "B", "A - B", "95% CI", "p"):
        table.add_column(col, justify="left" if col in ("metric", "test") else "right")
    for t in comp.tests:
        ci = "" if np.isnan(t.ci_low) else f"[{t.ci_low:+.3f}, {t.ci_high:+.3f}]"
        p = "nan" if np.isnan(t.p_value) else (f"{t.p_value:.2e}" if t.p_value < 1e-3 else f"{t.p_value:.4f}")
        table.add_row(t.metric, t.method, f"{t.value_a:.4f}", f"{t.value_b:.4f}", f"{t.delta:+.4f}", ci, p)
    if comp.notes:
        table.caption = "; ".join(comp.notes)
    return table
