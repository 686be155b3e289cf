"""The ablation summary of a bench whose suite has model *families* (``train_seeds``).

An ablation asks "does variant B pretrain better than variant A?", and one training run per
variant cannot answer it: two runs of the same recipe with different seeds differ too. So every
family is trained with several training seeds and this module summarises, per family:

* **headline metric per task** (zero-shot AUROC, linear-probe AUROC at the largest label
  fraction, retrieval i2t R@10, grounding pointing game, ...): mean ± sd over the training seeds
  of each seed's point estimate. When a training seed was evaluated with several evaluation seeds
  (linear-probe subsets), those are averaged first, so the sd measures pretraining variance only;
* **training cost**: mean samples/s of the family's training runs relative to the reference
  family, read from each run's own ``metrics.csv`` (see :func:`throughput_from_metrics`);
* **paired comparison vs the reference family**: per training seed ``s`` the difference
  ``family@s - reference@s`` (mean ± sd over seeds) and, for class-prediction metrics (AUROC and
  the other metrics of :mod:`medvl.evaluate.metrics`), the patient-level paired bootstrap of
  :func:`medvl.evaluate.compare.compare_predictions` on the stored per-sample predictions of
  ``family@s`` and ``reference@s``. A t-test over 3 seeds has almost no power; the per-seed
  bootstrap says, for each seed, whether that pair of runs differs beyond sampling noise of the
  test set, and the summary counts in how many seeds it does (and in which direction). Retrieval
  and grounding results carry no class predictions; when they store per-sample values (retrieval
  hits, grounding per-pair scores) those get the same paired bootstrap, else no test ("test –").

The pure functions (:func:`aggregate`, :func:`paired_differences`, :func:`throughput_from_metrics`,
:func:`training_cost`) take plain data so they are unit-tested without any training.
"""

from __future__ import annotations

import csv
import html
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medvl.train.logging import METRICS_CSV

if TYPE_CHECKING:
    from medvl.bench.jobs import Job
    from medvl.bench.suite import Suite
    from medvl.evaluate.results import EvalResult, Predictions

# Headline metric of each task type in the ablation table; the first one a result has is used.
ABLATION_METRICS: dict[str, tuple[str, ...]] = {
    "zeroshot": ("auroc",),
    "linear_probe": ("auroc",),
    "knn": ("auroc",),
    "finetune": ("auroc",),
    "robustness": ("auroc",),
    "retrieval": ("i2t_R@10", "i2t_R@5", "t2i_R@5"),
    "grounding": ("pointing_game", "map_auroc"),
}
ALPHA = 0.05


@dataclass
class Point:
    """One evaluation run's headline value for one family member (the input of the aggregation)."""

    family: str
    train_seed: int
    column: str
    eval_seed: int
    value: float
    predictions: Predictions | None = None


@dataclass
class Column:
    """One column of the ablation table: a task section and its headline metric."""

    id: str
    task: str
    task_type: str
    dataset: str
    split: str
    metric: str

    @property
    def label(self) -> str:
        return f"{self.task} ({self.metric})"


# ------------------------------------------------------------------------------ pure aggregation
def _mean_sd(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return float(np.mean(values)), (float(np.std(values, ddof=1)) if len(values) > 1 else None)


def per_seed_values(points: Iterable[Point]) -> dict[str, dict[str, dict[int, float]]]:
    """family -> column -> training seed -> point estimate, averaged over evaluation seeds first."""
    acc: dict[tuple[str, str, int], list[float]] = defaultdict(list)
    for p in points:
        if p.value is not None and not math.isnan(p.value):
            acc[(p.family, p.column, p.train_seed)].append(float(p.value))
    out: dict[str, dict[str, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    for (fam, col, seed), vals in sorted(acc.items()):
        out[fam][col][seed] = float(np.mean(vals))
    return {f: dict(c) for f, c in out.items()}


def aggregate(points: Iterable[Point]) -> dict[str, dict[str, dict[str, Any]]]:
    """family -> column -> {mean, sd, n_seeds, per_seed}: mean ± sd (ddof 1) over training seeds.

    sd is None with a single training seed (no spread to estimate).
    """
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for fam, cols in per_seed_values(points).items():
        out[fam] = {}
        for col, by_seed in cols.items():
            mean, sd = _mean_sd(list(by_seed.values()))
            out[fam][col] = {"mean": mean, "sd": sd, "n_seeds": len(by_seed),
                             "per_seed": {str(s): v for s, v in sorted(by_seed.items())}}
    return out


def paired_differences(per_seed: Mapping[str, Mapping[str, Mapping[int, float]]], family: str,
                       reference: str, column: str) -> dict[str, Any] | None:
    """Per-seed ``family@s - reference@s`` over the training seeds both have; mean ± sd of them."""
    a = per_seed.get(family, {}).get(column, {})
    b = per_seed.get(reference, {}).get(column, {})
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    diffs = {s: a[s] - b[s] for s in seeds}
    mean, sd = _mean_sd(list(diffs.values()))
    return {"mean_diff": mean, "sd_diff": sd, "n_seeds": len(seeds),
            "per_seed": {str(s): {"diff": d} for s, d in diffs.items()}}


def throughput_from_metrics(path: Path) -> dict[str, Any] | None:
    """Mean ``samples_per_s`` of a training run's ``metrics.csv`` (a run dir or the file itself).

    The first logged line is left out when there are later ones: it covers the first
    ``log_every`` steps, which include warm-up (allocator, lazy init, first data-loader batches)
    and would penalise short runs. A run that logged a single line keeps it (``warmup_dropped``
    False) rather than having no value. None when there is no file or no such column.
    """
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_CSV
    if not path.is_file():
        return None
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    values = []
    for r in rows:
        try:
            v = float(r.get("samples_per_s") or "nan")
        except ValueError:
            continue
        if math.isfinite(v):
            values.append(v)
    if not values:
        return None
    used = values[1:] if len(values) > 1 else values
    return {"samples_per_s": float(np.mean(used)), "n_logged": len(values), "n_used": len(used),
            "warmup_dropped": len(values) > 1}


def training_cost(runs: Mapping[str, Mapping[int, Path]], reference: str | None) -> dict[str, dict[str, Any]]:
    """family -> {samples_per_s (mean over seeds), relative (to the reference family), per_seed}."""
    out: dict[str, dict[str, Any]] = {}
    for fam, by_seed in runs.items():
        per = {s: t["samples_per_s"] for s, p in sorted(by_seed.items()) if (t := throughput_from_metrics(p))}
        mean, sd = _mean_sd(list(per.values()))
        out[fam] = {"samples_per_s": mean, "sd": sd, "n_runs": len(per),
                    "per_seed": {str(s): v for s, v in per.items()}, "relative": None}
    ref = out.get(reference or "", {}).get("samples_per_s")
    for info in out.values():
        if ref and info["samples_per_s"] is not None:
            info["relative"] = info["samples_per_s"] / ref
    return out


# ------------------------------------------------------------------------------ from bench results
def _column_for(job: Job, result: EvalResult) -> tuple[Column, float]:
    """The column a result belongs to and its headline value (the task type's preferred metric, else its first)."""
    rec0 = result.records[0]
    cfg = rec0.config if isinstance(rec0.config, dict) else {}
    variant = cfg.get("variant", "")
    task = job.task.name + (f" [{variant}]" if variant else "")
    metrics = {r.metric: r.value for r in result.records}
    wanted = ABLATION_METRICS.get(job.task.type, ())
    metric = next((m for m in wanted if m in metrics), None)
    if metric is None:
        metric = next(iter(metrics))
    col = Column(id=f"{task}|{job.task.dataset}|{rec0.split}|{metric}", task=task, task_type=job.task.type,
                 dataset=job.task.dataset, split=rec0.split, metric=metric)
    value = metrics[metric]
    return col, (float("nan") if value is None else float(value))


def collect_points(suite: Suite, entries: list[tuple[Job, Path]]) -> tuple[list[Column], list[Point]]:
    """Headline points of every family member; linear probes keep only their largest label fraction.

    The largest fraction is the "linear-probe AUROC at 100 %" of an ablation: smaller fractions
    measure label efficiency, a separate question with its own section in the leaderboard.
    """
    from medvl.evaluate.results import load_results

    columns: dict[str, Column] = {}
    points: list[Point] = []
    fractions: dict[tuple[str, str, str], float] = {}
    raw: list[tuple[Column, Point, tuple[str, str, str], float | None]] = []
    for job, path in entries:
        member = suite.family_of(job.model)
        if member is None:
            continue
        for result in load_results(path):
            if not result.records:
                continue
            col, value = _column_for(job, result)
            key, frac = (job.task.name, col.dataset, col.split), None
            if job.task.type == "linear_probe":
                frac = float((result.records[0].config or {}).get("fraction", 1.0))
                fractions[key] = max(fractions.get(key, frac), frac)
            raw.append((col, Point(member[0], member[1], col.id, job.seed, value, result.predictions), key, frac))
    for col, point, key, frac in raw:
        if frac is not None and frac < fractions[key]:
            continue
        columns.setdefault(col.id, col)
        points.append(point)
    order = {t.name: i for i, t in enumerate(suite.tasks)}
    ordered = sorted(columns.values(), key=lambda c: (order.get(c.task.split(" [")[0], len(order)), c.task, c.dataset))
    return ordered, points


def _predictions_by_seed(points: list[Point], family: str, column: str) -> dict[int, Predictions]:
    """Per training seed, the predictions of its lowest evaluation seed (the paired test needs one set)."""
    out: dict[int, tuple[int, Predictions]] = {}
    for p in points:
        if p.family == family and p.column == column and p.predictions is not None:
            if p.train_seed not in out or p.eval_seed < out[p.train_seed][0]:
                out[p.train_seed] = (p.eval_seed, p.predictions)
    return {s: pred for s, (_, pred) in out.items()}


def paired_tests(points: list[Point], family: str, reference: str, column: Column, n_boot: int,
                 alpha: float = ALPHA) -> dict[int, float]:
    """Per training seed: p-value of the paired bootstrap of ``column.metric``, family@s vs reference@s.

    Class-prediction metrics (AUROC, accuracy, ...) go through
    :func:`~medvl.evaluate.compare.compare_predictions`. A metric stored as a per-sample array in
    the predictions' ``extra`` (retrieval hits, grounding per-pair values) gets the same paired
    bootstrap of its mean that ``compare_predictions`` runs on extras, for that one array only.
    Anything else (no predictions, no per-sample values) gets no test. A seed whose two prediction
    sets cannot be paired (different samples) gets no test rather than failing the report.
    """
    from medvl.evaluate.compare import align, compare_predictions
    from medvl.evaluate.metrics import METRICS
    from medvl.evaluate.stats import paired_bootstrap_statistic

    metric = column.metric
    a = _predictions_by_seed(points, family, column.id)
    b = _predictions_by_seed(points, reference, column.id)
    out: dict[int, float] = {}
    for seed in sorted(set(a) & set(b)):
        pa, pb = a[seed], b[seed]
        try:
            if metric in METRICS and pa.label_task and pb.label_task:
                comp = compare_predictions(pa, pb, metrics=[metric], n_boot=n_boot, seed=seed,
                                           name_a=f"{family}@{seed}", name_b=f"{reference}@{seed}")
                tests = [t for t in comp.tests if t.metric == metric and t.method.startswith("paired")]
            elif metric in pa.extra and metric in pb.extra and np.ndim(pa.extra[metric]) == 1:
                pa, pb = align(pa, pb)
                tests = [paired_bootstrap_statistic(np.asarray(pa.extra[metric], float),
                                                    np.asarray(pb.extra[metric], float), pa.groups,
                                                    n_boot=n_boot, seed=seed, name=metric)]
            else:
                continue
        except Exception:  # noqa: BLE001 - unpairable predictions: no test for this seed
            continue
        for t in tests:
            if not math.isnan(t.p_value):
                out[seed] = float(t.p_value)
    return out


def build_ablation(suite: Suite, entries: list[tuple[Job, Path]],
                   train_runs: Mapping[str, Path] | None = None) -> dict[str, Any] | None:
    """Everything the ablation table shows (and ``ablation.json`` holds); None without families."""
    if not suite.families:
        return None
    reference = suite.reference or next(iter(suite.families))
    columns, points = collect_points(suite, entries)
    cells = aggregate(points)
    per_seed = per_seed_values(points)
    runs = {fam: {s: Path(train_runs[m]) for s, m in members.items() if train_runs and m in train_runs}
            for fam, members in suite.families.items()}
    cost = training_cost(runs, reference)
    families: dict[str, Any] = {}
    for fam, members in suite.families.items():
        paired: dict[str, Any] = {}
        if fam != reference:
            for col in columns:
                diff = paired_differences(per_seed, fam, reference, col.id)
                if diff is None:
                    continue
                pvals = paired_tests(points, fam, reference, col, suite.bootstrap)
                for s, p in pvals.items():
                    diff["per_seed"][str(s)]["p_value"] = p
                sig = {s: p for s, p in pvals.items() if p < ALPHA}
                diffs = {int(s): d["diff"] for s, d in diff["per_seed"].items()}
                diff.update({"n_tested": len(pvals), "n_significant": len(sig),
                             "n_up": sum(1 for s in sig if diffs[s] > 0),
                             "n_down": sum(1 for s in sig if diffs[s] < 0),
                             "test": "paired bootstrap (patient-level)" if pvals else None})
                paired[col.id] = diff
        families[fam] = {"members": {str(s): m for s, m in members.items()}, "train_seeds": list(members),
                         "cells": cells.get(fam, {}), "training": cost.get(fam), "paired_vs_reference": paired}
    several = len({(c.dataset, c.split) for c in columns}) > 1  # then labels must say which data

    def label(c: Column) -> str:
        return f"{c.task} — {c.dataset}/{c.split} ({c.metric})" if several else c.label

    return {"suite": suite.name, "reference": reference, "alpha": ALPHA, "n_boot": suite.bootstrap,
            "columns": [{"id": c.id, "label": label(c), "task": c.task, "task_type": c.task_type,
                         "dataset": c.dataset, "split": c.split, "metric": c.metric} for c in columns],
            "families": families,
            "notes": {"cells": "mean ± sd over training seeds of each seed's point estimate (evaluation seeds "
                               "averaged first)",
                      "training": "samples/s: mean of the logged samples_per_s of each training run after its "
                                  "first log line (warm-up), then mean over the family's seeds; relative = "
                                  "family / reference",
                      "paired": "difference family@s - reference@s per training seed (mean ± sd over seeds); "
                                "per seed a patient-level paired bootstrap on the stored predictions (class "
                                "scores, or per-sample values for retrieval/grounding), counted when "
                                f"p < {ALPHA}; no test where there are neither"}}


# ------------------------------------------------------------------------------ rendering
def _f(v: float | None, digits: int = 3, sign: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:+.{digits}f}" if sign else f"{v:.{digits}f}"


def cell_text(cell: Mapping[str, Any] | None) -> str:
    if not cell or cell.get("mean") is None:
        return "–"
    text = _f(cell["mean"])
    if cell.get("sd") is not None:
        text += f" ± {_f(cell['sd'])}"
    return text + f" (n={cell['n_seeds']})"


def cost_text(info: Mapping[str, Any] | None) -> str:
    if not info or info.get("samples_per_s") is None:
        return "–"
    rel = info.get("relative")
    return (f"{rel:.2f}× " if rel is not None else "") + f"({info['samples_per_s']:.0f} samples/s)"


def paired_text(diff: Mapping[str, Any] | None) -> str:
    """E.g. ``+0.021 ± 0.010, 2/3 seeds p<0.05 (all +)``; ``–`` for the test where none applies."""
    if not diff or diff.get("mean_diff") is None:
        return "–"
    text = _f(diff["mean_diff"], sign=True)
    if diff.get("sd_diff") is not None:
        text += f" ± {_f(diff['sd_diff'])}"
    if not diff.get("n_tested"):
        return text + ", test –"
    n_sig, up, down = diff["n_significant"], diff["n_up"], diff["n_down"]
    text += f", {n_sig}/{diff['n_tested']} seeds p<{ALPHA:g}"
    if n_sig:
        text += " (all +)" if up == n_sig else " (all −)" if down == n_sig else f" ({up} +, {down} −)"
    return text


def ablation_markdown(ab: Mapping[str, Any]) -> list[str]:
    cols = ab["columns"]
    ref = ab["reference"]
    lines = ["## Ablation (training seeds)", "",
             f"Per family: mean ± sd over training seeds (n = seeds) of each seed's headline value; "
             f"training cost = mean samples/s of the family's training runs relative to the reference family "
             f"`{ref}` (first logged interval left out: warm-up). Runs train one after another, so other load "
             f"on the machine skews this ratio; `benchmarks/objective_cost.py` measures it interleaved.", "",
             "| family | training seeds | train samples/s (× ref) | " + " | ".join(c["label"] for c in cols) + " |",
             "|---|---|---|" + "---|" * len(cols)]
    for fam, info in ab["families"].items():
        name = f"{fam} (reference)" if fam == ref else fam
        cells = [cell_text(info["cells"].get(c["id"])) for c in cols]
        seeds = ", ".join(map(str, info["train_seeds"]))
        lines.append(f"| {name} | {seeds} | {cost_text(info['training'])} | " + " | ".join(cells) + " |")
    lines.append("")
    others = [f for f in ab["families"] if f != ref]
    if others and cols:
        lines += [f"### Paired comparison vs `{ref}` (same training seed)", "",
                  f"Δ = family@s − {ref}@s: mean ± sd over seeds; then the number of seeds where a patient-level "
                  f"paired bootstrap on the stored predictions gives p < {ALPHA:g} (sign of those differences). "
                  "\"test –\": no stored per-sample predictions to pair.", "",
                  "| family | " + " | ".join(c["label"] for c in cols) + " |", "|---|" + "---|" * len(cols)]
        for fam in others:
            paired = ab["families"][fam]["paired_vs_reference"]
            lines.append(f"| {fam} | " + " | ".join(paired_text(paired.get(c["id"])) for c in cols) + " |")
        lines.append("")
    return lines


def ablation_html(ab: Mapping[str, Any]) -> str:
    esc = html.escape
    cols = ab["columns"]
    ref = ab["reference"]
    head = "".join(f"<th>{esc(c['label'])}</th>" for c in cols)
    parts = ["<section id='ablation'><h2>Ablation (training seeds)</h2>",
             f"<p class='meta'>Per family: mean ± sd over training seeds (n = seeds) of each seed's headline value; "
             f"training cost = mean samples/s of the family's training runs relative to the reference family "
             f"<b>{esc(ref)}</b> (first logged interval left out: warm-up). Runs train one after another, so "
             f"other load on the machine skews this ratio; <code>benchmarks/objective_cost.py</code> measures it "
             f"interleaved.</p>",
             "<div class='wrap'><table class='ablation'><thead><tr><th>family</th><th>training seeds</th>"
             f"<th>train samples/s (× ref)</th>{head}</tr></thead><tbody>"]
    for fam, info in ab["families"].items():
        name = esc(fam) + (" <i>(reference)</i>" if fam == ref else "")
        seeds = esc(", ".join(map(str, info["train_seeds"])))
        cells = "".join(f"<td>{esc(cell_text(info['cells'].get(c['id'])))}</td>" for c in cols)
        parts.append(f"<tr><td>{name}</td><td>{seeds}</td><td>{esc(cost_text(info['training']))}</td>{cells}</tr>")
    parts.append("</tbody></table></div>")
    others = [f for f in ab["families"] if f != ref]
    if others and cols:
        parts += [f"<h3>Paired comparison vs {esc(ref)} (same training seed)</h3>",
                  f"<p class='meta'>Δ = family@s − {esc(ref)}@s: mean ± sd over seeds; then the number of seeds "
                  f"where a patient-level paired bootstrap on the stored predictions gives p &lt; {ALPHA:g} (sign "
                  "of those differences). “test –”: no stored per-sample predictions to pair.</p>",
                  f"<div class='wrap'><table class='ablation paired'><thead><tr><th>family</th>{head}</tr></thead>"
                  "<tbody>"]
        for fam in others:
            paired = ab["families"][fam]["paired_vs_reference"]
            parts.append(f"<tr><td>{esc(fam)}</td>" + "".join(
                f"<td>{esc(paired_text(paired.get(c['id'])))}</td>" for c in cols) + "</tr>")
        parts.append("</tbody></table></div>")
    parts.append("</section>")
    return "\n".join(parts)
