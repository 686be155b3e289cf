"""Render a finished bench: ``results.jsonl``, ``leaderboard.md`` and a self-contained ``report.html``.

The HTML embeds its plots as base64 PNG (matplotlib, Agg) and its CSS inline, so one file can be
mailed, archived or opened on a phone with no server and no network. Numbers always come with
their 95% bootstrap CI; a marker shows where a paired test (patient-level paired bootstrap on the
stored predictions) says a model differs from the best one.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medvl.evaluate.metrics import higher_is_better

if TYPE_CHECKING:
    from medvl.bench.jobs import BenchOutcome, Job
    from medvl.bench.suite import Suite
    from medvl.evaluate.results import EvalResult, Predictions

ALPHA = 0.05


# ------------------------------------------------------------------------------ collection
def _group_key(job: Job, result: EvalResult) -> tuple[str, str, str]:
    rec = result.records[0]
    variant = rec.config.get("variant", "") if isinstance(rec.config, dict) else ""
    task = job.task.name + (f" [{variant}]" if variant else "")
    return task, job.task.dataset, rec.split


def collect(entries: list[tuple[Job, Path]]) -> dict[tuple[str, str, str], dict[str, list[tuple[int, EvalResult]]]]:
    """(task, dataset, split) -> model -> [(seed, result)]."""
    from medvl.evaluate.results import load_results

    table: dict[tuple[str, str, str], dict[str, list[tuple[int, EvalResult]]]] = defaultdict(lambda: defaultdict(list))
    for job, path in entries:
        for result in load_results(path):
            if result.records:
                table[_group_key(job, result)][job.model].append((job.seed, result))
    return table


def _fmt(v: float | None, digits: int = 3) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _summary(runs: list[tuple[int, EvalResult]], metric: str) -> dict[str, Any] | None:
    vals, lows, highs, n = [], [], [], 0
    for _, r in runs:
        for rec in r.records:
            if rec.metric == metric and rec.value is not None and not math.isnan(rec.value):
                vals.append(rec.value)
                lows.append(rec.ci_low)
                highs.append(rec.ci_high)
                n = rec.n
    if not vals:
        return None
    lows_ok = [x for x in lows if x is not None]
    highs_ok = [x for x in highs if x is not None]
    return {"mean": float(np.mean(vals)), "sd": float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0,
            "ci_low": float(np.mean(lows_ok)) if lows_ok else None,
            "ci_high": float(np.mean(highs_ok)) if highs_ok else None, "seeds": len(vals), "n": n,
            # seeds that changed nothing (a deterministic task on one trained model) give no spread to show
            "varies": len(set(vals)) > 1}


def _has_spread(s: dict[str, Any]) -> bool:
    """A ± is shown for two or more seeds that gave different values (identical values: nothing varied)."""
    return s["seeds"] > 1 and s.get("varies", True)


def _cell(s: dict[str, Any] | None) -> str:
    if s is None:
        return "–"
    text = _fmt(s["mean"])
    if _has_spread(s):
        text += f" ± {_fmt(s['sd'])}"
    if s["ci_low"] is not None:
        text += f" [{_fmt(s['ci_low'])}, {_fmt(s['ci_high'])}]"
    return text


def _metrics_of(models: dict[str, list[tuple[int, EvalResult]]]) -> list[str]:
    seen: dict[str, None] = {}
    for runs in models.values():
        for _, r in runs:
            for rec in r.records:
                seen.setdefault(rec.metric, None)
    return list(seen)


def _headline(task: str, metrics: list[str]) -> str:
    from medvl.bench.tasks import TASKS  # each task type declares its headline metric when it registers

    base = task.split(" [")[0]
    for key, spec in TASKS.items():
        if spec.headline and base.startswith(key) and spec.headline in metrics:
            return spec.headline
    return metrics[0]


def _first_predictions(runs: list[tuple[int, EvalResult]]) -> Predictions | None:
    for _, r in sorted(runs, key=lambda x: x[0]):
        if r.predictions is not None:
            return r.predictions
    return None


def paired_markers(models: dict[str, list[tuple[int, EvalResult]]], metric: str,
                   n_boot: int = 1000) -> tuple[str | None, dict[str, float]]:
    """Best model by mean ``metric`` and the paired-bootstrap p-value of every other model vs it."""
    from medvl.evaluate.compare import compare_predictions

    means = {m: s["mean"] for m, runs in models.items() if (s := _summary(runs, metric)) is not None}
    if len(means) < 2:
        return None, {}
    lower_better = not higher_is_better(metric)
    best = (min if lower_better else max)(means, key=means.get)
    pb = _first_predictions(models[best])
    pvalues: dict[str, float] = {}
    if pb is None or not pb.label_task:
        return best, pvalues
    for name in means:
        if name == best:
            continue
        pa = _first_predictions(models[name])
        if pa is None:
            continue
        try:
            comp = compare_predictions(pb, pa, metrics=[metric], n_boot=n_boot, name_a=best, name_b=name)
        except Exception:  # noqa: BLE001 - different samples: no paired test, no marker
            continue
        for t in comp.tests:
            if t.metric == metric and t.method.startswith("paired"):
                pvalues[name] = t.p_value
    return best, pvalues


def per_class_auroc(p: Predictions, n_boot: int = 1000, seed: int = 0) -> list[tuple[str, float, float, float, int]]:
    """(class, AUROC, CI low, CI high, positives) per class, patient-level bootstrap (percentile 95%)."""
    from medvl.evaluate.metrics import binary_auroc
    from medvl.evaluate.stats import GroupResampler

    if not p.label_task or p.labels.ndim != 2:
        return []
    classes = list(p.classes)
    ks = [1] if p.label_task == "binary" and len(classes) == 2 else list(range(len(classes)))
    resampler = GroupResampler(p.n, p.groups)
    draws = list(resampler.replicates(n_boot, seed))
    out = []
    for k in ks:
        y = _binary_labels(p, k)
        ok = ~np.isnan(y)
        yk, sk = y[ok], p.scores[ok, k]
        if len(np.unique(yk)) < 2:
            out.append((classes[k], float("nan"), float("nan"), float("nan"), int(yk.sum())))
            continue
        value = binary_auroc(yk, sk)
        idx_ok = np.flatnonzero(ok)
        pos = np.full(p.n, -1)
        pos[idx_ok] = np.arange(idx_ok.size)
        reps = []
        for d in draws:
            sel = pos[d]
            sel = sel[sel >= 0]
            reps.append(binary_auroc(yk[sel], sk[sel]))
        reps_arr = np.array(reps, dtype=float)
        reps_arr = reps_arr[~np.isnan(reps_arr)]
        lo, hi = (np.percentile(reps_arr, [2.5, 97.5]) if reps_arr.size else (float("nan"), float("nan")))
        out.append((classes[k], value, float(lo), float(hi), int(yk.sum())))
    return out


def _per_class_rows(models: dict[str, list[tuple[int, EvalResult]]], n_boot: int) -> list[tuple[str, list]]:
    rows = []
    for m, runs in models.items():
        p = _first_predictions(runs)
        if p is not None:
            rows.append((m, per_class_auroc(p, n_boot)))
    return rows


# ------------------------------------------------------------------------------ plots
def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def roc_figure(models: dict[str, list[tuple[int, EvalResult]]], title: str) -> str | None:
    """One panel per class (at most 6), one ROC curve per model (seed with the lowest number)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    preds = {m: p for m, runs in models.items() if (p := _first_predictions(runs)) is not None and p.label_task}
    if not preds:
        return None
    first = next(iter(preds.values()))
    classes = list(first.classes)
    if first.label_task == "binary" and len(classes) == 2:
        panels = [1]
    else:
        panels = list(range(len(classes)))[:6]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.2), squeeze=False)
    for ax, k in zip(axes[0], panels, strict=False):
        for name, p in preds.items():
            y = _binary_labels(p, k)
            ok = ~np.isnan(y)
            if ok.sum() == 0 or len(np.unique(y[ok])) < 2:
                continue
            fpr, tpr, _ = roc_curve(y[ok], p.scores[ok, k])
            ax.plot(fpr, tpr, label=name, lw=1.4)
        ax.plot([0, 1], [0, 1], ls=":", c="grey", lw=0.8)
        ax.set_title(classes[k] if k < len(classes) else str(k), fontsize=9)
        ax.set_xlabel("1 - specificity", fontsize=8)
        ax.set_ylabel("sensitivity", fontsize=8)
        ax.tick_params(labelsize=7)
    if axes[0][0].get_legend_handles_labels()[0]:
        axes[0][0].legend(fontsize=7, loc="lower right")
    fig.suptitle(title, fontsize=10)
    return _png(fig)


def _binary_labels(p: Predictions, k: int) -> np.ndarray:
    labels = p.labels
    if labels.ndim == 1:
        return (labels == k).astype(float)
    y = labels[:, k].astype(float).copy()
    y[(y != 0) & (y != 1)] = np.nan
    return y


def reliability_figure(models: dict[str, list[tuple[int, EvalResult]]], title: str, bins: int = 10) -> str | None:
    """Top-label confidence vs accuracy per model (multilabel: pooled over classes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    preds = {m: p for m, runs in models.items() if (p := _first_predictions(runs)) is not None and p.label_task}
    if not preds:
        return None
    fig, ax = plt.subplots(figsize=(3.6, 3.4))
    for name, p in preds.items():
        conf, correct = _confidence(p)
        edges = np.linspace(0, 1, bins + 1)
        idx = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
        xs, ys = [], []
        for b in range(bins):
            sel = idx == b
            if sel.sum() >= 3:
                xs.append(conf[sel].mean())
                ys.append(correct[sel].mean())
        ax.plot(xs, ys, marker="o", ms=3, lw=1.2, label=name)
    ax.plot([0, 1], [0, 1], ls=":", c="grey", lw=0.8)
    ax.set_xlabel("confidence", fontsize=8)
    ax.set_ylabel("observed accuracy", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=10)
    return _png(fig)


def _confidence(p: Predictions) -> tuple[np.ndarray, np.ndarray]:
    s = p.scores
    if p.label_task == "multilabel":
        y = p.labels
        ok = (y == 0) | (y == 1)
        prob = s[ok]
        truth = y[ok]
        conf = np.maximum(prob, 1 - prob)
        return conf, ((prob >= 0.5) == (truth == 1)).astype(float)
    y = p.labels.argmax(1) if p.labels.ndim == 2 else p.labels.astype(int)
    return s.max(1), (s.argmax(1) == y).astype(float)


def _thumbnail(path: Path, size: int = 72) -> str | None:
    try:
        from PIL import Image

        from medvl.data.io import read_image, to_uint8

        arr = to_uint8(read_image(path))
        if arr.ndim == 3 and arr.shape[-1] not in (3, 4):
            arr = arr[arr.shape[0] // 2]
        img = Image.fromarray(arr)
        img.thumbnail((size, size))
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        return base64.b64encode(buf.getvalue()).decode()
    except Exception:  # noqa: BLE001 - a missing thumbnail must not break the report
        return None


# ------------------------------------------------------------------------------ writers
def write_reports(suite: Suite, entries: list[tuple[Job, Path]], outcome: BenchOutcome,
                  manifests: dict[str, Path], out_dir: Path,
                  train_runs: dict[str, Path] | None = None) -> tuple[Path, Path, Path]:
    """Write results.jsonl, leaderboard.md, report.html (and ablation.json when the suite has families).

    ``train_runs``: run directory of each trained family member, where the ablation reads the
    training throughput.
    """
    from medvl.bench.ablation import build_ablation

    table = collect(entries)
    ablation = build_ablation(suite, entries, train_runs)
    ablation_path = out_dir / "ablation.json"
    if ablation is not None:
        tmp = ablation_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(ablation, indent=1))
        tmp.replace(ablation_path)
    else:
        ablation_path.unlink(missing_ok=True)  # a suite that dropped its families must not leave a stale one
    results_path = out_dir / "results.jsonl"
    with results_path.open("w") as f:
        for job, path in entries:
            for rec in json.loads(path.read_text()):
                rec.update({"bench_model": job.model, "seed": job.seed, "bench_task": job.task.name})
                f.write(json.dumps(rec) + "\n")
    sections = _sections(table, suite.bootstrap)  # paired tests run once, for both renderings
    md = render_markdown(suite, table, outcome, sections, ablation)
    (out_dir / "leaderboard.md").write_text(md)
    from medvl.bench.grounding_figures import bench_grounding_examples

    grounding = bench_grounding_examples(suite, sections, manifests, out_dir)  # maps recomputed from the models
    from medvl.bench.segment_figures import bench_segment_examples

    segment = bench_segment_examples(suite, sections, manifests, out_dir)  # masks re-predicted by the heads
    page = render_html(suite, table, outcome, manifests, sections, ablation, grounding, segment)
    (out_dir / "report.html").write_text(page)
    return results_path, out_dir / "leaderboard.md", out_dir / "report.html"


Section = tuple[tuple[str, str, str], dict, list[str], str, "str | None", dict[str, float]]


def _sections(table: dict, n_boot: int = 1000) -> list[Section]:
    """Per (task, dataset, split): the models, metric columns, headline metric, best model and p-values."""
    out = []
    for key in sorted(table):
        models = table[key]
        metrics = _metrics_of(models)
        head = _headline(key[0], metrics)
        best, pvals = paired_markers(models, head, n_boot)
        out.append((key, models, metrics, head, best, pvals))
    return out


def _ranked(models: dict[str, list[tuple[int, EvalResult]]], metric: str) -> list[str]:
    """Models best first on ``metric`` (ascending for ranks and calibration error); missing values last."""
    sign = -1.0 if higher_is_better(metric) else 1.0

    def key(m: str) -> float:
        s = _summary(models[m], metric)
        return sign * s["mean"] if s else float("inf")

    return sorted(models, key=key)


def _marker(name: str, best: str | None, pvals: dict[str, float]) -> str:
    if best is None:
        return ""
    if name == best:
        return " ★"
    p = pvals.get(name)
    if p is None:
        return ""
    return " †" if p < ALPHA else ""


def summary_rows(sections: list[Section]) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """The at-a-glance table: one column per section (its headline metric), one row per model."""
    columns = [f"{key[0]} ({head})" for key, _m, _metrics, head, _b, _p in sections]
    models: list[str] = []
    for _key, ms, *_ in sections:
        models += [m for m in ms if m not in models]
    rows = []
    for m in models:
        cells = []
        for _key, ms, _metrics, head, best, pvals in sections:
            s = _summary(ms[m], head) if m in ms else None
            cells.append(("–" if s is None else _fmt(s["mean"]) + (f" ± {_fmt(s['sd'])}" if _has_spread(s) else ""))
                         + (_marker(m, best, pvals) if s is not None else ""))
        rows.append((m, cells))
    return columns, rows


def render_markdown(suite: Suite, table: dict, outcome: BenchOutcome, sections: list[Section] | None = None,
                    ablation: dict[str, Any] | None = None) -> str:
    lines = [f"# Leaderboard — suite `{suite.name}`", "",
             "Values: mean ± sd over seeds [95% bootstrap CI, patient-level, averaged over seeds]. "
             "★ best on the headline metric; † differs from ★ (paired bootstrap p < 0.05).", ""]
    sections = sections if sections is not None else _sections(table, suite.bootstrap)
    columns, rows = summary_rows(sections)
    if rows:
        lines += ["## At a glance (headline metric per task)", "", "| model | " + " | ".join(columns) + " |",
                  "|---|" + "---|" * len(columns)]
        lines += [f"| {m} | " + " | ".join(cells) + " |" for m, cells in rows] + [""]
    if ablation is not None:
        from medvl.bench.ablation import ablation_markdown

        lines += ablation_markdown(ablation)
    for (task, dataset, split), models, metrics, head, best, pvals in sections:
        lines += [f"## {task} — {dataset} / {split} (headline: {head})", ""]
        lines.append("| model | " + " | ".join(metrics) + " |")
        lines.append("|---|" + "---|" * len(metrics))
        for m in _ranked(models, head):
            cells = [_cell(_summary(models[m], k)) for k in metrics]
            lines.append(f"| {m}{_marker(m, best, pvals)} | " + " | ".join(cells) + " |")
        lines.append("")
        if task.startswith("zeroshot"):
            for m, per in _per_class_rows(models, suite.bootstrap):
                lines += [f"Per-finding AUROC, {m} (95% CI, patient-level bootstrap):", "",
                          "| class | AUROC [95% CI] | positives |", "|---|---|---|"]
                lines += [f"| {c} | {_fmt(v)} [{_fmt(lo)}, {_fmt(hi)}] | {n} |" for c, v, lo, hi, n in per]
                lines.append("")
    lines += _robustness_md(table)
    cards = model_card_links(table)
    if cards:
        lines += ["## Model cards", ""] + [f"- [{m} — {t} on {d}]({href})" for t, d, m, href in cards] + [""]
    pages = model_card_links(table, "side_by_side")
    if pages:
        lines += ["## Generated vs reference reports", ""] + [
            f"- [{m} — {t} on {d}]({href})" for t, d, m, href in pages] + [""]
    if outcome.failed:
        lines += ["## Failed jobs", ""] + [f"- {f['job']}: {f['reason']}" for f in outcome.failed] + [""]
    if outcome.skipped:
        lines += ["## Skipped jobs", ""] + [f"- {s['job']}: {s['reason']}" for s in outcome.skipped] + [""]
    return "\n".join(lines)


def robustness_rows(table: dict) -> list[tuple[str, str, str, float, float]]:
    """(task, dataset, model, in-distribution value, shifted value) for robustness tasks."""
    rows = []
    groups: dict[tuple[str, str], dict[str, dict[str, float]]] = defaultdict(dict)
    for (task, dataset, split), models in table.items():
        if not task.startswith("robustness"):
            continue
        base = task.split(" [")[0]
        variant = task[len(base):].strip(" []")
        for m, runs in models.items():
            s = _summary(runs, "auroc")
            if s:
                groups[(base, dataset)].setdefault(m, {})[variant or split] = s["mean"]
    for (task, dataset), models in groups.items():
        for m, vals in models.items():
            ind = [v for k, v in vals.items() if k.startswith("in:")]
            shift = [v for k, v in vals.items() if k.startswith("shift:")]
            if ind and shift:
                rows.append((task, dataset, m, ind[0], float(np.mean(shift))))
    return rows


def model_card_links(table: dict, key: str = "model_card") -> list[tuple[str, str, str, str]]:
    """(task, dataset, model, href) of every page a task wrote and named in its records' ``config[key]``
    (relative to the bench): model cards (``model_card``), generated-vs-reference reports (``side_by_side``)."""
    out: dict[str, tuple[str, str, str, str]] = {}
    for (task, dataset, _split), models in table.items():
        for m, runs in models.items():
            for _, r in runs:
                for rec in r.records:
                    href = (rec.config or {}).get(key)
                    if href:
                        out.setdefault(href, (task, dataset, m, href))
    return list(out.values())


def _robustness_md(table: dict) -> list[str]:
    rows = robustness_rows(table)
    if not rows:
        return []
    lines = ["## Robustness: in-distribution site vs shifted site (AUROC)", "",
             "| task | dataset | model | in-site | shifted site | drop |", "|---|---|---|---|---|---|"]
    for task, dataset, m, a, b in rows:
        lines.append(f"| {task} | {dataset} | {m} | {_fmt(a)} | {_fmt(b)} | {_fmt(a - b)} |")
    return lines + [""]


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;padding:0 1rem 2rem;color:#1d2330;
background:#fafbfc;line-height:1.45}
header{padding:1rem 0;border-bottom:1px solid #dde}h1{font-size:1.4rem;margin:.2rem 0}
h2{font-size:1.1rem;margin-top:2rem}
.meta{color:#556;font-size:.9rem}.wrap{overflow-x:auto;-webkit-overflow-scrolling:touch}
table{border-collapse:collapse;margin:.5rem 0;font-size:.85rem;min-width:100%}
th,td{border-bottom:1px solid #e3e6ea;padding:.35rem .5rem;text-align:right;white-space:nowrap}
th:first-child,td:first-child{text-align:left}thead th{background:#eef1f5;position:sticky;top:0}
td.best{font-weight:600}.mark{color:#b3261e}.figs{display:flex;flex-wrap:wrap;gap:.8rem}
.figs img{max-width:100%;height:auto;background:#fff;border:1px solid #e3e6ea;border-radius:4px}
.cases{display:grid;grid-template-columns:repeat(auto-fill,minmax(220px,1fr));gap:.6rem}
.case{background:#fff;border:1px solid #e3e6ea;border-radius:6px;padding:.5rem;font-size:.8rem}
.case img{width:64px;height:64px;image-rendering:pixelated;margin-right:2px}.fail{color:#b3261e}
.gcases{display:grid;gap:.6rem}.gcase{background:#fff;border:1px solid #e3e6ea;border-radius:6px;padding:.5rem}
.gfigs{display:flex;flex-wrap:wrap;gap:.6rem;margin-top:.3rem}.gfig{margin:0;width:120px;font-size:.75rem}
.gfig img{width:96px;height:96px;display:block}.gfig q{color:#445;word-break:break-word}.ghit{color:#1b6e3a}
@media (max-width:600px){body{padding:0 .5rem 1rem}th,td{padding:.3rem}}
"""


def render_html(suite: Suite, table: dict, outcome: BenchOutcome, manifests: dict[str, Path],
                sections: list[Section] | None = None, ablation: dict[str, Any] | None = None,
                grounding: dict[tuple[str, str, str], list] | None = None,
                segment: dict[tuple[str, str, str], list] | None = None) -> str:
    """The self-contained page; ``grounding``: per grounding section, the example rows of
    :func:`medvl.bench.grounding_figures.bench_grounding_examples` (none: no thumbnails);
    ``segment``: likewise per segment section, :func:`medvl.bench.segment_figures.bench_segment_examples`."""
    esc = html.escape
    parts = ["<!doctype html><html lang='en'><head><meta charset='utf-8'>",
             "<meta name='viewport' content='width=device-width, initial-scale=1'>",
             f"<title>medvl bench — {esc(suite.name)}</title><style>{CSS}</style></head><body>",
             f"<header><h1>medvl bench — {esc(suite.name)}</h1><div class='meta'>{outcome.n_jobs} jobs "
             f"({outcome.n_cached} cached, {outcome.n_run} run, {len(outcome.failed)} failed). Values: mean ± sd over "
             "seeds [95% patient-level bootstrap CI]. ★ best on the headline metric; "
             "<span class='mark'>†</span> differs from ★ (paired bootstrap p &lt; 0.05).</div></header>"]
    sections = sections if sections is not None else _sections(table, suite.bootstrap)
    columns, rows = summary_rows(sections)
    if rows:
        parts.append("<section id='summary'><h2>At a glance</h2><div class='wrap'><table class='results summary'>"
                     "<thead><tr><th>model</th>" + "".join(f"<th>{esc(c)}</th>" for c in columns) +
                     "</tr></thead><tbody>")
        for m, cells in rows:
            parts.append(f"<tr><td>{esc(m)}</td>" + "".join(
                f"<td>{esc(c).replace('†', '<span class=mark>†</span>')}</td>" for c in cells) + "</tr>")
        parts.append("</tbody></table></div></section>")
    if ablation is not None:
        from medvl.bench.ablation import ablation_html

        parts.append(ablation_html(ablation))
    for (task, dataset, split), models, metrics, head, best, pvals in sections:
        sec_id = esc(f"{task}-{dataset}-{split}".replace(" ", "_"))
        parts.append(f"<section id='{sec_id}'><h2>{esc(task)} — {esc(dataset)} / {esc(split)}</h2>")
        parts.append("<div class='wrap'><table class='results'><thead><tr><th>model</th>" +
                     "".join(f"<th>{esc(m)}</th>" for m in metrics) + "</tr></thead><tbody>")
        for m in _ranked(models, head):
            mark = _marker(m, best, pvals).replace("†", "<span class='mark'>†</span>")
            cells = "".join(
                f"<td{' class=best' if (k == head and m == best) else ''}>{esc(_cell(_summary(models[m], k)))}</td>"
                for k in metrics)
            parts.append(f"<tr><td>{esc(m)}{mark}</td>{cells}</tr>")
        parts.append("</tbody></table></div>")
        if task.startswith("zeroshot"):
            for m, per in _per_class_rows(models, suite.bootstrap):
                parts.append(f"<h3>Per-finding AUROC — {esc(m)}</h3><div class='wrap'><table class='perclass'>"
                             "<thead><tr><th>class</th><th>AUROC [95% CI]</th><th>positives</th></tr></thead><tbody>")
                parts += [f"<tr><td>{esc(c)}</td><td>{_fmt(v)} [{_fmt(lo)}, {_fmt(hi)}]</td><td>{n}</td></tr>"
                          for c, v, lo, hi, n in per]
                parts.append("</tbody></table></div>")
        figs = []
        base = task.split(" [")[0]
        if not base.startswith("retrieval"):
            roc = roc_figure(models, f"ROC — {task}")
            rel = reliability_figure(models, f"Reliability — {task}")
            figs += [(roc, "ROC curves"), (rel, "reliability diagram")]
        figs = [(f, alt) for f, alt in figs if f]
        if figs:
            parts.append("<div class='figs'>" + "".join(
                f"<img alt='{esc(alt)} {esc(task)}' src='data:image/png;base64,{f}'>" for f, alt in figs) + "</div>")
        if base.startswith("retrieval"):
            parts.append(_retrieval_examples(models, manifests.get(dataset)))
        if base.startswith("grounding") and grounding and (task, dataset, split) in grounding:
            from medvl.bench.grounding_figures import examples_html

            parts.append(examples_html(grounding[(task, dataset, split)], split))
        if segment and (task, dataset, split) in segment:
            from medvl.bench.segment_figures import segment_examples_html

            parts.append(segment_examples_html(segment[(task, dataset, split)], split))
        parts.append("</section>")
    rob = robustness_rows(table)
    if rob:
        parts.append("<section id='robustness'><h2>Robustness: in-distribution vs shifted site (AUROC)</h2>"
                     "<div class='wrap'><table><thead><tr><th>model</th><th>task</th><th>in-site</th>"
                     "<th>shifted</th><th>drop</th></tr></thead><tbody>")
        for task, _dataset, m, a, b in rob:
            parts.append(f"<tr><td>{esc(m)}</td><td>{esc(task)}</td><td>{_fmt(a)}</td><td>{_fmt(b)}</td>"
                         f"<td>{_fmt(a - b)}</td></tr>")
        parts.append("</tbody></table></div></section>")
    pages = model_card_links(table, "side_by_side")
    if pages:
        parts.append("<section id='report-pages'><h2>Generated vs reference reports</h2><p class='meta'>Thumbnail, "
                     "reference and every system's report per study, the labeler's findings marked as agreeing, "
                     "false positive or missed.</p><ul>" + "".join(
                         f"<li><a href='{esc(href)}'>{esc(m)} — {esc(t)} on {esc(d)}</a></li>"
                         for t, d, m, href in pages) + "</ul></section>")
    cards = model_card_links(table)
    if cards:
        parts.append("<section id='model-cards'><h2>Model cards</h2><ul>" + "".join(
            f"<li><a href='{esc(href)}'>{esc(m)} — {esc(t)} on {esc(d)}</a></li>" for t, d, m, href in cards)
            + "</ul></section>")
    if outcome.failed or outcome.skipped:
        parts.append("<section id='problems'><h2>Failed and skipped jobs</h2><ul>")
        parts += [f"<li class='fail'>{esc(f['job'])}: {esc(f['reason'])}</li>" for f in outcome.failed]
        parts += [f"<li>{esc(s['job'])}: {esc(s['reason'])}</li>" for s in outcome.skipped]
        parts.append("</ul></section>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _retrieval_examples(models: dict[str, list[tuple[int, EvalResult]]], manifest: Path | None, n: int = 4) -> str:
    """For a few report queries: the top-3 images each model retrieves (✓ = same label set)."""
    if manifest is None:
        return ""
    from medvl.data.manifest import load_manifest

    m = load_manifest(manifest)
    by_row = {s.row: s for s in m.samples}
    out = ["<h3>Retrieval examples (text → image, top 3)</h3><div class='cases'>"]
    for name, runs in models.items():
        p = _first_predictions(runs)
        if p is None or "t2i_top" not in p.extra or p.rows is None:
            continue
        top = np.asarray(p.extra["t2i_top"])
        for q in range(min(n, len(top))):
            query = by_row.get(int(p.rows[q]))
            if query is None:
                continue
            imgs = []
            for j in top[q][:3]:
                s = by_row.get(int(p.rows[int(j)]))
                if s is None:
                    continue
                thumb = _thumbnail(m.image_paths(s)[0])
                same = "✓" if set(s.positive_labels) == set(query.positive_labels) else "✗"
                if thumb:
                    title = html.escape(f"{same} {', '.join(s.positive_labels)}")
                    imgs.append(f"<img alt='retrieved {same}' title='{title}' src='data:image/png;base64,{thumb}'>")
            text = html.escape(query.text[:160] + ("…" if len(query.text) > 160 else ""))
            out.append(f"<div class='case'><b>{html.escape(name)}</b><div>{''.join(imgs)}</div><div>{text}</div></div>")
    out.append("</div>")
    return "\n".join(out)
