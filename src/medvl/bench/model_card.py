"""A model card per evaluated model (Markdown + HTML) from a :class:`~medvl.evaluate.robustness.RobustnessReport`.

Why generated, not written: a card that a person writes after the fact tends to keep the good
numbers; this one is rendered from the measurements, every number with its CI, and its
caveats are sentences *computed* from those numbers ("AUROC drops 0.11 [0.07, 0.15] on site
B"), so a claim never outlives its evidence. Both formats come from one list of blocks
(heading, paragraph, bullets, table, image), so they always say the same thing.

Sections: what was evaluated; training data (manifest hash, sizes, sites, the pretraining
manifest when the checkpoint records one, pretraining–evaluation overlap); caveats; clean
performance; corruptions; site shift; subgroups; calibration (reliability diagram,
risk–coverage curve); zero-shot prompt sensitivity; confusable pairs (thumbnails); the WiSE-FT
curve when the report carries one.
"""

from __future__ import annotations

import html
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

Block = tuple[str, Any]  # ("h2", text) | ("p", text) | ("ul", [text]) | ("table", (header, rows)) | ("img", (src, alt))


def _f(v: float | None, digits: int = 3) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _iv(iv: Any, digits: int = 3) -> str:
    return iv.fmt(digits) if iv is not None else "n/a"


def _ci_excludes_zero(iv: Any) -> bool:
    return iv is not None and not math.isnan(iv.low) and (iv.low > 0 or iv.high < 0)


def slug(text: str) -> str:
    """File-system friendly name of a model ("runs/x/ckpt" -> "runs-x-ckpt")."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(text)).strip("-")[:80] or "model"


# ------------------------------------------------------------------ training data
def data_summary(manifest_path: str | Path, model: str, split: str = "test") -> dict[str, Any]:
    """Manifest hash, rows per split, sites per split, modality, and the pretraining record of the model."""
    from medvl.data.manifest import load_manifest
    from medvl.evaluate.features import manifest_fingerprint

    m = load_manifest(manifest_path)
    splits = {s: sum(1 for x in m.samples if x.split == s) for s in m.splits}
    sites: dict[str, dict[str, int]] = {}
    for x in m.samples:
        sites.setdefault(x.site or "(blank)", {}).setdefault(x.split, 0)
        sites[x.site or "(blank)"][x.split] += 1
    out: dict[str, Any] = {"manifest": str(m.path), "manifest_hash": manifest_fingerprint(m), "splits": splits,
                           "sites": sites, "patients": len({x.group_id for x in m.samples}),
                           "modality": getattr(m.card, "modality", "unknown"), "classes": list(m.classes)}
    out.update(pretraining_record(model, m, split))
    return out


def pretraining_record(model: str, eval_manifest: Any, split: str = "test") -> dict[str, Any]:
    """What the checkpoint says about its pretraining data and its overlap with the evaluation manifest.

    The trainer writes ``train_config.yaml`` (with ``data.manifest``) beside each checkpoint;
    overlap comes from the checkpoint's training-data record (:func:`medvl.data.leakage.model_leakage`:
    identical image content and shared patient ids); without a record it is "not recorded", never guessed.
    """
    import yaml

    rec: dict[str, Any] = {"pretraining_manifest": None, "overlap": "not recorded"}
    folder = Path(model)
    if not folder.is_dir():
        rec["pretraining_manifest"] = f"not recorded ({model} is not a medvl checkpoint folder)"
        return rec
    for cand in (folder / "train_config.yaml", folder.parent / "train_config.yaml"):
        if cand.is_file():
            try:
                cfg = yaml.safe_load(cand.read_text()) or {}
            except yaml.YAMLError:
                continue
            path = (cfg.get("data") or {}).get("manifest") if isinstance(cfg, dict) else None
            if path:
                rec["pretraining_manifest"] = str(path)
                if Path(path).resolve() == Path(eval_manifest.path).resolve():
                    rec["overlap"] = ("pretrained on this very manifest (the trainer reads its train split): "
                                      "evaluation splits are disjoint only if the manifest's splits are")
            break
    try:
        from medvl.data.leakage import model_leakage
    except ImportError:  # an older build without leakage records
        return rec
    info = model_leakage(model, eval_manifest, split, warn=False)
    if info.get("checked"):
        rec["overlap"] = (f"{info['images_seen']} of {info['of']} evaluated images (identical content) and "
                          f"{info['patients_seen']} of {info['patients_of']} patients (ids; an upper bound) "
                          f"of split {split!r} were in the pretraining data")
        rec["leakage"] = info
    else:
        rec["overlap"] = f"not recorded ({info.get('reason', 'no record')})"
    if rec["pretraining_manifest"] is None:
        rec["pretraining_manifest"] = "not recorded (no train_config.yaml beside the checkpoint)"
    return rec


# ------------------------------------------------------------------ caveats
def caveats(report: Any) -> list[str]:
    """Plain-language sentences computed from the report's numbers (each with its CI)."""
    m = report.metric.upper() if report.metric == "auroc" else report.metric
    out = [f"Clean {m} on {report.dataset}/{report.split} ({report.protocol}): {_iv(report.clean)} "
           f"(n={report.n}, {report.n_groups} patients; 95% CI, patient bootstrap)."]
    for s in report.sites:
        if s.role != "shift" or s.drop is None:
            continue
        if math.isnan(s.drop.low):
            out.append(f"On site {s.site} {m} is {_f(s.value.value)} vs {_f(s.value.value + s.drop.value)} on "
                       f"the training site {report.in_site}; too few samples for a CI ({s.note}).")
        elif _ci_excludes_zero(s.drop) and s.drop.value > 0:
            out.append(f"{m} drops {_iv(s.drop, 2)} on site {s.site} (trained on site {report.in_site}).")
        else:
            out.append(f"No clear change on site {s.site}: difference {_iv(s.drop, 2)} (CI includes 0).")
    sens = [c for c in report.cells if _ci_excludes_zero(c.drop) and c.drop.value > 0]
    if report.cells:
        worst = report.worst_cell()
        out.append(f"Corruptions: mean relative drop {report.mean_relative_drop:.1%} over {len(report.cells)} "
                   f"corruption x severity cells; worst {worst.corruption} at severity {worst.severity}: "
                   f"{m} drops {_iv(worst.drop, 2)}." if worst else "Corruptions: no defined cell.")
        first = {}
        for c in sorted(sens, key=lambda c: c.severity):
            first.setdefault(c.corruption, c.severity)
        if first:
            out.append("Significant drops start at: " + ", ".join(f"{k} (severity {v})" for k, v in first.items())
                       + ".")
    for name, why in report.skipped.items():
        out.append(f"Not tested: {name} ({why}).")
    for sg in report.subgroups:
        if sg.note and sg.gap is None:
            out.append(f"Subgroups by {sg.column}: {sg.note}.")
            continue
        if sg.gap is None:
            continue
        worst = next(g for g in sg.groups if g.group == sg.worst)
        verdict = ("significantly worse" if _ci_excludes_zero(sg.gap) else "not significantly worse")
        ci = f"gap {_iv(sg.gap, 2)}" if not math.isnan(sg.gap.low) else f"gap {_f(sg.gap.value, 2)}, no CI ({sg.note})"
        out.append(f"Worst {sg.column} group: {worst.group} ({m} {_f(worst.value.value)}, n={worst.n}), "
                   f"{verdict} than {sg.best}: {ci}.")
        small = [g.group for g in sg.groups if g.note]
        if small:
            out.append(f"{sg.column} groups without a CI: " + ", ".join(f"{g.group} ({g.note})" for g in sg.groups
                                                                         if g.note) + ".")
    cal = report.calibration
    if cal is not None:
        e0, ch = cal.before["ece"], cal.change["ece"]
        rb = cal.reliability_before
        over = float(np.sum(rb.count * (rb.confidence - rb.accuracy)) / max(rb.n, 1))
        kind = "over-confident" if over > 0.01 else ("under-confident" if over < -0.01 else "close to calibrated")
        out.append(f"Calibration: ECE {_iv(e0)} ({kind}: mean confidence - accuracy = {over:+.3f}).")
        if cal.notes:
            out += [f"Calibration: {n}." for n in cal.notes]
        else:
            sig = "significantly" if _ci_excludes_zero(ch) else "not significantly"
            out.append(f"Temperature scaling (T = {cal.temperature:.3g}, fitted on validation) changes test ECE by "
                       f"{_iv(ch)} ({sig}).")
        rc = cal.risk_coverage
        out.append(f"Selective prediction: abstaining on the 20% least confident cases changes the error rate from "
                   f"{rc.risk_at(1.0):.3f} to {rc.risk_at(0.8):.3f} "
                   f"(AURC {rc.aurc:.3f}; optimal {rc.optimal_aurc:.3f}).")
    ps = report.extras.get("prompt_sensitivity")
    if ps:
        out.append(f"Zero-shot prompt sensitivity: {m} ranges {_f(ps.get('min'))}-{_f(ps.get('max'))} (sd "
                   f"{_f(ps.get('sd'))}) over {ps.get('n_variants')} prompt variants; a zero-shot claim should "
                   "state this spread.")
    cp = report.extras.get("confusable_pairs")
    if cp:
        out.append(f"Confusable pairs: {cp.get('n_pairs')} image pairs with near-identical embeddings (cosine >= "
                   f"{_f(cp.get('threshold'), 4)}) but different labels; both right in {_f(cp.get('pair_accuracy'))} "
                   "of them.")
    wc = report.extras.get("wise_curve")
    if wc:
        key = "shifted_sites" if any(r.get("shifted_sites") is not None for r in wc) else "corrupted"
        best = max(wc, key=lambda r: r.get(key) if r.get(key) is not None else -1)
        worst = min(wc, key=lambda r: r.get(key) if r.get(key) is not None else 2)
        cis = [r.get(f"{key}_ci") for r in (best, worst)]
        overlap = all(cis) and cis[0][0] <= cis[1][1]
        what = "other-site" if key == "shifted_sites" else "mean corrupted"
        if overlap:
            out.append(f"Weight interpolation: {what} {m} moves only from {_f(worst.get(key))} (alpha = "
                       f"{worst['alpha']:g}) to {_f(best.get(key))} (alpha = {best['alpha']:g}), inside overlapping "
                       "CIs: no mix is clearly more robust.")
        else:
            out.append(f"Weight interpolation: the most robust mix on {what} {m} is alpha = {best['alpha']:g} "
                       f"({_f(best.get(key))}; in-distribution {_f(best['in_distribution'])}).")
    return out


# ------------------------------------------------------------------ blocks
def card_blocks(report: Any, data: dict[str, Any] | None, figures: dict[str, str]) -> list[Block]:
    """The card as renderer-neutral blocks."""
    m = report.metric
    b: list[Block] = [("h1", f"Model card: {report.model}")]
    b.append(("p", f"Evaluated on {report.dataset} ({report.label_task}, modality {report.modality}), split "
                   f"{report.split}, protocol {report.protocol}, {report.config.get('n_boot')} patient-level "
                   f"bootstrap replicates. Wall time {report.seconds.get('total', 0):.1f} s."))
    if data:
        b.append(("h2", "Training and evaluation data"))
        b.append(("ul", [f"evaluation manifest: {data['manifest']} (hash {data['manifest_hash']})",
                         "rows per split: " + ", ".join(f"{k} {v}" for k, v in data["splits"].items()),
                         f"patients: {data['patients']}; classes: {', '.join(data['classes'])}",
                         "sites: " + "; ".join(f"{s}: " + ", ".join(f"{k} {v}" for k, v in d.items())
                                               for s, d in data["sites"].items()),
                         f"pretraining manifest: {data['pretraining_manifest']}",
                         f"pretraining-evaluation overlap: {data['overlap']}"]))
    b.append(("h2", "Caveats (computed from the numbers below)"))
    b.append(("ul", caveats(report)))
    b.append(("h2", "Corruptions"))
    rows = [[c.corruption, str(c.severity), _iv(c.value), _iv(c.drop),
             "" if math.isnan(c.relative_drop) else f"{c.relative_drop:.1%}"] for c in report.cells]
    rows += [[n, "-", "skipped", why, ""] for n, why in report.skipped.items()]
    mrd = "n/a" if math.isnan(report.mean_relative_drop) else f"{report.mean_relative_drop:.1%}"
    b.append(("p", f"Clean {m}: {_iv(report.clean)}; mean relative drop {mrd}. "
                   "Drops are paired (same resampled patients, clean minus corrupted)."))
    b.append(("table", (["corruption", "severity", m, "drop [95% CI]", "relative"], rows)))
    b.append(("h2", "Site shift"))
    b.append(("p", report.site_note))
    if report.sites:
        b.append(("table", (["site", "role", "n (patients)", m, "drop vs in-site", "note"],
                            [[s.site, s.role, f"{s.n} ({s.n_groups})", _iv(s.value), _iv(s.drop) if s.drop else "",
                              s.note] for s in report.sites])))
    if report.subgroups:
        b.append(("h2", "Subgroups"))
        for sg in report.subgroups:
            b.append(("p", f"By {sg.column}: worst {sg.worst or '-'}, best {sg.best or '-'}, gap "
                           f"{_iv(sg.gap) if sg.gap else 'n/a'}. {sg.note}"))
            b.append(("table", (["group", "n (patients)", m, "note"],
                                [[g.group, f"{g.n} ({g.n_groups})", _iv(g.value), g.note] for g in sg.groups])))
    cal = report.calibration
    if cal is not None:
        b.append(("h2", "Calibration and selective prediction"))
        b.append(("p", f"Temperature {cal.temperature:.3g} fitted on validation (NLL, L-BFGS), applied to test. "
                       + " ".join(cal.notes)))
        b.append(("table", (["metric", "before", "after scaling", "change"],
                            [[k, _iv(cal.before[k]), _iv(cal.after[k]), _iv(cal.change[k])] for k in cal.before])))
        for key, alt in (("reliability", "reliability diagram"), ("risk_coverage", "risk-coverage curve")):
            if key in figures:
                b.append(("img", (figures[key], alt)))
    ps = report.extras.get("prompt_sensitivity")
    if ps:
        b.append(("h2", "Zero-shot prompt sensitivity"))
        b.append(("p", f"{m} over {ps['n_variants']} prompt variants: mean {_f(ps['mean'])}, sd {_f(ps['sd'])}, "
                       f"range {_f(ps['min'])}-{_f(ps['max'])} (the card's ensemble: {_f(ps.get('ensemble'))})."))
        b.append(("table", (["variant", m], [[v["name"], _f(v["value"])] for v in ps["variants"]])))
    cp = report.extras.get("confusable_pairs")
    if cp:
        b.append(("h2", "Confusable pairs"))
        b.append(("p", f"{cp['n_pairs']} pairs of test images whose embeddings have cosine >= {_f(cp['threshold'], 4)} "
                       f"({cp.get('threshold_rule', '')}) "
                       f"but different labels; pair accuracy (both right) {_f(cp['pair_accuracy'])}."))
        if cp.get("pairs"):
            b.append(("table", (["image A", "label A", "image B", "label B", "cosine", "both right"],
                                [[p["a"], p["label_a"], p["b"], p["label_b"], _f(p["cosine"]), str(p["both_right"])]
                                 for p in cp["pairs"][:10]])))
        if "confusable" in figures:
            b.append(("img", (figures["confusable"], "worst confusable pairs")))
    wc = report.extras.get("wise_curve")
    if wc:
        b.append(("h2", "Weight interpolation (WiSE-FT)"))
        def with_ci(r: dict[str, Any], key: str) -> str:
            ci = r.get(f"{key}_ci")
            return _f(r.get(key)) + (f" [{_f(ci[0])}, {_f(ci[1])}]" if ci else "")

        b.append(("table", (["alpha", "in-distribution", "other sites", "corrupted (mean)"],
                            [[f"{r['alpha']:g}", with_ci(r, "in_distribution"), with_ci(r, "shifted_sites"),
                              _f(r.get("corrupted"))] for r in wc])))
        if "wise" in figures:
            b.append(("img", (figures["wise"], "in-distribution vs shifted over alpha")))
    return b


def to_markdown(blocks: Sequence[Block]) -> str:
    out = []
    for kind, v in blocks:
        if kind in ("h1", "h2"):
            out.append(("# " if kind == "h1" else "## ") + v)
        elif kind == "p":
            out.append(v)
        elif kind == "ul":
            out.append("\n".join(f"- {x}" for x in v))
        elif kind == "table":
            head, rows = v
            esc = [[str(c).replace("|", "\\|") for c in r] for r in rows]
            out.append("\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
                                 + ["| " + " | ".join(r) + " |" for r in esc]))
        elif kind == "img":
            out.append(f"![{v[1]}]({v[0]})")
    return "\n\n".join(out) + "\n"


def to_html(blocks: Sequence[Block], title: str) -> str:
    e = html.escape
    parts = ["<!doctype html><html lang='en'><head><meta charset='utf-8'>", f"<title>{e(title)}</title>",
             "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.2em .5em;"
             "text-align:right}td:first-child,th:first-child{text-align:left}img{max-width:28em}</style></head><body>"]
    for kind, v in blocks:
        if kind in ("h1", "h2"):
            parts.append(f"<{kind}>{e(v)}</{kind}>")
        elif kind == "p":
            parts.append(f"<p>{e(v)}</p>")
        elif kind == "ul":
            parts.append("<ul>" + "".join(f"<li>{e(x)}</li>" for x in v) + "</ul>")
        elif kind == "table":
            head, rows = v
            parts.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>"
                         + "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in r) + "</tr>" for r in rows)
                         + "</table>")
        elif kind == "img":
            parts.append(f"<p><img src='{e(v[0])}' alt='{e(v[1])}'></p>")
    parts.append("</body></html>")
    return "\n".join(parts)


# ------------------------------------------------------------------ figures + writing
def _figures(report: Any, out_dir: Path, stem: str) -> dict[str, str]:
    """PNG figures next to the card; skipped (and said so in the card's absence of the image) without matplotlib."""
    figs: dict[str, str] = {}
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return figs
    from medvl.evaluate.calibration import plot_reliability, plot_risk_coverage

    cal = report.calibration
    if cal is not None:
        plot_reliability([("before", cal.reliability_before), (f"T={cal.temperature:.2g}", cal.reliability_after)],
                         out_dir / f"{stem}.reliability.png", f"Reliability: {report.model}")
        figs["reliability"] = f"{stem}.reliability.png"
        plot_risk_coverage(cal.risk_coverage, out_dir / f"{stem}.risk_coverage.png", "Risk-coverage (clean test)")
        figs["risk_coverage"] = f"{stem}.risk_coverage.png"
    wc = report.extras.get("wise_curve")
    if wc:
        _wise_plot(wc, out_dir / f"{stem}.wise.png")
        figs["wise"] = f"{stem}.wise.png"
    cp = report.extras.get("confusable_pairs")
    if cp and cp.get("pairs") and report.config.get("manifest"):
        path = _pairs_figure(cp["pairs"][:6], Path(report.config["manifest"]), out_dir / f"{stem}.confusable.png")
        if path is not None:
            figs["confusable"] = f"{stem}.confusable.png"
    return figs


def _wise_plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 3.5), dpi=100)
    al = [r["alpha"] for r in rows]
    ax.plot(al, [r["in_distribution"] for r in rows], "o-", label="in-distribution")
    for key, lab in (("shifted_sites", "other sites"), ("corrupted", "corrupted")):
        if any(r.get(key) is not None for r in rows):
            ax.plot(al, [r.get(key) if r.get(key) is not None else float("nan") for r in rows], "s--", label=lab)
    ax.set_xlabel("alpha (weight of B)")
    ax.set_ylabel(rows[0].get("metric", "metric"))
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _pairs_figure(pairs: list[dict[str, Any]], manifest: Path, path: Path) -> Path | None:
    """Thumbnails of the worst confusable pairs, side by side, labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    root = manifest.parent
    fig, axes = plt.subplots(len(pairs), 2, figsize=(3.2, 1.6 * len(pairs)), dpi=100, squeeze=False)
    for i, p in enumerate(pairs):
        for j, key in enumerate(("a", "b")):
            ax = axes[i][j]
            ax.axis("off")
            f = root / str(p[key]).split("|")[0]
            try:
                ax.imshow(np.asarray(Image.open(f).convert("L")), cmap="gray")
            except Exception:  # a non-2D or unreadable image: keep the label, drop the picture
                ax.text(0.5, 0.5, "(no thumbnail)", ha="center", va="center", fontsize=6)
            ax.set_title(f"{p['label_' + key]}" + (f" cos {p['cosine']:.3f}" if j == 0 else ""), fontsize=6)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_model_card(report: Any, out_dir: str | Path, stem: str | None = None,
                     data: dict[str, Any] | None = None) -> list[Path]:
    """Write ``<stem>.md``, ``<stem>.html``, ``<stem>.json`` (the report) and the PNG figures into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = "-".join(Path(report.model).parts[-2:]) if Path(report.model).exists() else report.model
    stem = stem or slug(f"{name}-{report.dataset}-{report.protocol}")
    if data is None and report.config.get("manifest"):
        data = data_summary(report.config["manifest"], report.config.get("model_spec", report.model), report.split)
    figs = _figures(report, out_dir, stem)
    blocks = card_blocks(report, data, figs)
    md, page, js = out_dir / f"{stem}.md", out_dir / f"{stem}.html", out_dir / f"{stem}.json"
    md.write_text(to_markdown(blocks))
    page.write_text(to_html(blocks, f"Model card: {report.model}"))
    js.write_text(json.dumps({"report": report.to_dict(), "data": data}, indent=1))
    return [md, page, js]
