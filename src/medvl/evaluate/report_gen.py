"""``medvl eval report-gen``: generate reports with a model *and* the baselines, score them all
with the report metrics, and test every system against the retrieval baseline.

Why one command: a generated-report table means little without the baselines beside it
(nearest-neighbour retrieval, the most frequent normal report, label templates; see
:mod:`medvl.generate.baselines`), and a difference means little without a paired test on the same
studies. External systems (a MedGemma or CheXagent run) join through their JSONL prediction files
and are scored under the same protocol.

Metrics and their patient-level CIs come from :func:`medvl.evaluate.reports.evaluate_reports`
(BLEU-1..4, ROUGE-L, CIDEr-D, clinical efficacy); paired tests from
:func:`medvl.evaluate.compare.compare_predictions` (paired patient bootstrap of corpus BLEU/CE and
of per-study ROUGE-L/CIDEr-D).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medvl.errors import ConfigError

HEADLINE = ("bleu4", "rouge_l", "cider_d", "ce_f1_micro")
REFERENCE_SYSTEM = "retrieval"


@dataclass
class ReportGenResult:
    """Scored runs by system name, paired tests vs the reference system, where predictions went."""

    runs: dict[str, Any]  # name -> EvalResult
    comparisons: dict[str, Any] = field(default_factory=dict)  # name -> Comparison (name vs reference)
    prediction_files: dict[str, Path] = field(default_factory=dict)
    speed: dict[str, float] = field(default_factory=dict)  # name -> reports/s
    reference: str = REFERENCE_SYSTEM
    reports: dict[str, dict[str, str]] = field(default_factory=dict)  # name -> study id -> generated report


def parse_external(specs: list[str]) -> dict[str, Path]:
    """``["medgemma=preds.jsonl"]`` -> ``{"medgemma": Path("preds.jsonl")}``."""
    out: dict[str, Path] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise ConfigError(f"--external expects NAME=FILE.jsonl, got {spec!r}")
        if name in out:
            raise ConfigError(f"--external name {name!r} given twice")
        out[name.strip()] = Path(path.strip())
    return out


def evaluate_report_generation(model: str | Path | None, data: str | Path, *, systems: tuple[str, ...] = (
        "model", "retrieval", "normal", "template"), external: dict[str, Path] | None = None,
        split: str = "test", train_split: str = "train", cfg: Any = None, batch_size: int = 16,
        n_boot: int = 1000, seed: int = 0, device: str = "cpu", pred_dir: str | Path | None = None,
        classes: list[str] | None = None) -> ReportGenResult:
    """Generate (or read) each system's reports for ``split``, score them, pair-test them vs retrieval."""
    from medvl.evaluate.compare import compare_predictions
    from medvl.evaluate.reports import evaluate_reports, read_predictions
    from medvl.generate.reports import write_predictions
    from medvl.generate.run import SYSTEMS, run_system

    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown:
        raise ConfigError(f"unknown report system(s) {', '.join(unknown)}; valid: {', '.join(SYSTEMS)}")
    if systems and model is None:
        raise ConfigError(f"systems {', '.join(systems)} need --model (a medvl checkpoint)")
    external = dict(external or {})
    clash = sorted(set(external) & set(systems))
    if clash:
        raise ConfigError(f"--external name(s) {', '.join(clash)} clash with built-in systems")
    if not systems and not external:
        raise ConfigError("nothing to evaluate: give --systems and/or --external")
    result = ReportGenResult(runs={})
    dataset = Path(data).parent.name
    kw = {"split": split, "dataset": dataset, "n_boot": n_boot, "seed": seed, "classes": classes}
    for name in systems:
        run = run_system(name, str(model), data=data, split=split, cfg=cfg, batch_size=batch_size,
                         train_split=train_split, device=device)
        result.speed[name] = run.reports_per_s
        if pred_dir is not None:
            result.prediction_files[name] = write_predictions(run, Path(pred_dir) / f"{name}.jsonl")
        result.runs[name] = evaluate_reports(run.reports, data, model_name=name, **kw)[0]
        result.reports[name] = run.reports
    for name, path in external.items():
        result.reports[name] = read_predictions(path)
        result.runs[name] = evaluate_reports(result.reports[name], data, model_name=name, **kw)[0]
        result.prediction_files[name] = path
    ref = REFERENCE_SYSTEM if REFERENCE_SYSTEM in result.runs else next(iter(result.runs))
    result.reference = ref
    for name, run in result.runs.items():
        if name != ref:
            result.comparisons[name] = compare_predictions(run.predictions, result.runs[ref].predictions,
                                                           n_boot=n_boot, seed=seed, name_a=name, name_b=ref)
    return result


def summary_rows(result: ReportGenResult, metrics: tuple[str, ...] = HEADLINE) -> list[dict[str, Any]]:
    """One row per system: each headline metric with its CI and the paired delta/p vs the reference."""
    rows = []
    for name, run in result.runs.items():
        row: dict[str, Any] = {"system": name}
        for m in metrics:
            rec = next((r for r in run.records if r.metric == m), None)
            if rec is not None:
                row[m] = (rec.value, rec.ci_low, rec.ci_high)
        comp = result.comparisons.get(name)
        if comp is not None:
            for t in comp.tests:
                if t.metric in metrics:
                    row[f"delta_{t.metric}"] = (t.delta, t.ci_low, t.ci_high, t.p_value)
        if name in result.speed:
            row["reports_per_s"] = result.speed[name]
        rows.append(row)
    return rows


def _thumbnail(path: Path, size: int = 96) -> str:
    """``data:`` URI of a small PNG of the first image (empty when it cannot be read: the page still renders)."""
    import base64
    import io

    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("L")
            im.thumbnail((size, size))
            buf = io.BytesIO()
            im.save(buf, format="PNG")
    except (OSError, ValueError):
        return ""
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _findings(labels: dict[str, float | None]) -> set[str]:
    return {c for c, v in labels.items() if v == 1.0 and c != "No Finding"}


_CSS = """body{font:14px/1.45 system-ui,sans-serif;margin:1.5rem;color:#222}table{border-collapse:collapse;width:100%}
td,th{border-top:1px solid #ddd;padding:.5rem;vertical-align:top;text-align:left}th{background:#f4f4f4}
img{width:96px;image-rendering:pixelated}.chip{display:inline-block;border-radius:3px;padding:0 .3rem;margin:.1rem;
font-size:12px}.ok{background:#d7f0d9}.fp{background:#f8d0d0}.fn{background:#fde7c2}.sys{font-weight:600}
.legend span{margin-right:1rem}"""


def side_by_side_html(result: ReportGenResult, data: str | Path, split: str | None = "test", max_studies: int = 100,
                      classes: list[str] | None = None) -> str:
    """A self-contained page: per study a thumbnail, the reference and every system's report, with the
    report labeler's findings as chips -- agreed (green), only in the generated report (red: a false
    positive), only in the reference (orange: missed). Every text is HTML-escaped."""
    import html

    from medvl.evaluate.reports import report_references
    from medvl.text.labeler import label_reports

    ids, refs, _, rows, m = report_references(data, split)
    by_row = {s.row: s for s in m.samples}
    shown = list(zip(ids, refs, rows, strict=True))[:max_studies]
    names = list(result.reports)
    ref_labels = label_reports([r for _, r, _ in shown], classes)
    sys_labels = {n: label_reports([result.reports[n].get(i, "") for i, _, _ in shown], classes) for n in names}
    out = ["<!doctype html><html lang=en><head><meta charset=utf-8><title>generated vs reference reports</title>",
           f"<style>{_CSS}</style></head><body><h1>Generated vs reference reports</h1>",
           f"<p>{html.escape(str(data))} / {html.escape(str(split))}: {len(shown)} of {len(ids)} studies. Chips: the "
           "report labeler's positive findings.</p><p class=legend><span class='chip ok'>agrees</span>"
           "<span class='chip fp'>only generated (false positive)</span><span class='chip fn'>only reference "
           "(missed)</span></p><table><tr><th>study</th><th>reference</th>"
           + "".join(f"<th>{html.escape(n)}</th>" for n in names) + "</tr>"]
    for k, (sid, ref, row) in enumerate(shown):
        sample = by_row[row]
        thumb = _thumbnail(m.resolve(sample.image[0])) if sample.image else ""
        img = f"<br><img alt='study {html.escape(sid)}' src='{thumb}'>" if thumb else ""
        truth = _findings(ref_labels[k])
        cells = [f"<td>{html.escape(sid)}{img}</td>",
                 f"<td>{html.escape(ref)}<br>" + "".join(f"<span class='chip ok'>{html.escape(c)}</span>"
                                                        for c in sorted(truth)) + "</td>"]
        for n in names:
            got = _findings(sys_labels[n][k])
            chips = [f"<span class='chip ok'>{html.escape(c)}</span>" for c in sorted(got & truth)]
            chips += [f"<span class='chip fp'>{html.escape(c)}</span>" for c in sorted(got - truth)]
            chips += [f"<span class='chip fn'>{html.escape(c)}</span>" for c in sorted(truth - got)]
            cells.append(f"<td>{html.escape(result.reports[n].get(sid, ''))}<br>{''.join(chips)}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table></body></html>")
    return "\n".join(out)
