"""``medvl eval segment --prompt text``: zero-shot text-prompted masks scored like any segmentation.

Pairs are (image, finding) where the finding's mask is non-empty: the question is "given that the
report names it, where is it?" (the MedCLIP-SAM / grounding protocol), so Dice is over present
findings only. The query is the report's own sentence naming the finding (``phrases="report"``,
as ``medvl eval grounding`` picks it: laterality and location words included, negated sentences
never used) or the class name (``phrases="class"``). The threshold is chosen on ``val_split``
(:func:`medvl.segment.prompt.choose_threshold`) and stored with the curve in the record config;
the metrics (Dice, IoU, HD95, NSD; per finding as ``dice/<finding>``) and their patient-level
CIs are those of :mod:`medvl.evaluate.segment`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medvl.errors import ManifestError
from medvl.evaluate import segment_metrics as sm
from medvl.evaluate.results import EvalResult, MetricRecord, Predictions, _clean
from medvl.evaluate.segment import _ci, _nanmean
from medvl.segment.data import CaseCache, open_dataset, seg_cases, seg_layout
from medvl.segment.prompt import choose_threshold, refine, text_heatmaps


def _pairs_and_maps(net: Any, manifest: Any, layout: Any, split: str, phrases: str, temperature: float,
                    batch: int = 32, max_cases: int | None = None) -> list[dict[str, Any]]:
    from medvl.evaluate.grounding import query_phrase

    size = int(net.cfg.image.image_size)
    cases = seg_cases(manifest, split, layout)[:max_cases]
    cache = CaseCache(manifest, cases, layout)
    by_row = {s.row: s for s in manifest.samples}
    todo: list[dict[str, Any]] = []
    for i, case in enumerate(cases):
        loaded = cache[i]
        if loaded.image.ndim != 3:
            raise ManifestError(f"{manifest.path}, row {case.row}: text prompts support 2D images only")
        img = torch.from_numpy(loaded.image)[None]
        img = F.interpolate(img, size=(size, size), mode="bilinear", align_corners=False)[0]
        if img.shape[0] != net.cfg.image.in_chans:
            img = img.expand(net.cfg.image.in_chans, -1, -1) if img.shape[0] == 1 else img.mean(0, keepdim=True)
        for c, name in enumerate(layout.classes):
            if not loaded.target[c].any():
                continue
            phrase = name
            if phrases == "report":
                phrase, _ = query_phrase(by_row[case.row].text, name, manifest.card)
            todo.append({"case": case, "finding": name, "truth": loaded.target[c], "image": img, "phrase": phrase,
                         "spacing": loaded.spacing})
    for j in range(0, len(todo), batch):
        chunk = todo[j:j + batch]
        maps = text_heatmaps(net, torch.stack([p["image"] for p in chunk]), [p["phrase"] for p in chunk],
                             [tuple(p["truth"].shape) for p in chunk], temperature)
        for p, m in zip(chunk, maps, strict=True):
            p["heat"] = m
    return todo


def text_prompt_eval(model: Any, data: str | Path, split: str = "test", *, val_split: str = "val",
                     phrases: str = "report", temperature: float = 10.0, keep: str = "largest", n_boot: int = 1000,
                     seed: int = 0, tolerance: float = sm.DEFAULT_NSD_TOLERANCE, device: str = "cpu",
                     model_name: str | None = None, dataset: str | None = None,
                     mask_column: str = "mask", max_cases: int | None = None) -> EvalResult:
    """Zero-shot text-prompted segmentation of every present finding of ``split`` (see module doc)."""
    from medvl.evaluate.grounding import grounding_encoder

    if phrases not in ("report", "class"):
        raise ManifestError(f"--phrases must be 'report' or 'class', got {phrases!r}")
    enc = grounding_encoder(model, device)
    net = enc.model
    name = model_name or str(getattr(enc, "name", model))
    manifest = open_dataset(data)
    layout = seg_layout(manifest, None, mask_column)
    val = _pairs_and_maps(net, manifest, layout, val_split, phrases, temperature, max_cases=max_cases)
    if not val:
        raise ManifestError(f"{manifest.path}: split {val_split!r} has no present finding masks to choose the "
                            "threshold on")
    threshold, curve = choose_threshold([p["heat"] for p in val], [p["truth"] for p in val], keep)
    test = _pairs_and_maps(net, manifest, layout, split, phrases, temperature, max_cases=max_cases)
    if not test:
        raise ManifestError(f"{manifest.path}: split {split!r} has no present finding masks")
    vals: dict[str, list[float]] = {m: [] for m in sm.METRICS}
    for p in test:
        pred = refine(p["heat"], threshold, keep)[None]
        s = sm.score_case(pred, p["truth"][None], spacing=p["spacing"], tolerance=tolerance)
        for m in sm.METRICS:
            vals[m].append(float(s.get(m)[0]))
    arr = {m: np.asarray(v) for m, v in vals.items()}
    findings = np.array([p["finding"] for p in test])
    pids = np.array([p["case"].patient_id for p in test])
    groups = pids if any(pids) else None
    cfg = {"prompt": "text", "phrases": phrases, "threshold": threshold, "threshold_split": val_split,
           "threshold_curve": curve, "n_val_pairs": len(val), "temperature": temperature, "keep": keep,
           "nsd_tolerance": tolerance, "pairs": "present findings only", "n_boot": n_boot, "bootstrap_seed": seed}
    dataset = dataset or manifest.path.parent.name
    records = []

    def record(metric: str, values: np.ndarray, g: np.ndarray | None, per_class: dict | None = None) -> None:
        lo, hi = _ci(values, g, n_boot, seed)
        records.append(MetricRecord(model=name, task="segment-text", dataset=dataset, split=split, metric=metric,
                                    value=_nanmean(values), ci_low=lo, ci_high=hi, n=len(values),
                                    n_groups=len(set(g.tolist())) if g is not None else len(values), config=cfg,
                                    label_task="multilabel", classes=list(layout.classes),
                                    per_class=_clean(per_class) if per_class is not None else None))

    present = [c for c in layout.classes if (findings == c).any()]
    for m in sm.METRICS:
        record(m, arr[m], groups, {c: _nanmean(arr[m][findings == c]) for c in present})
        for c in present:
            sel = findings == c
            record(f"{m}/{c}", arr[m][sel], None if groups is None else groups[sel])
    ids = [f"{p['case'].id}#{p['finding']}" for p in test]
    preds = Predictions(ids=ids, scores=np.zeros((len(test), 0)), labels=np.zeros((len(test), 0)), label_task="",
                        classes=list(layout.classes), patient_ids=pids, rows=np.array([p["case"].row for p in test]),
                        meta={"model": name, "task": "segment-text", "dataset": dataset, "split": split,
                              "config": cfg},
                        extra={m: arr[m] for m in ("dice", "iou", "nsd")})
    return EvalResult(records=records, predictions=preds)
