"""``medvl eval segment``: Dice, IoU, HD95 and NSD per class with patient-level bootstrap CIs.

Every image (2D, scored at its own size) or volume (3D, sliding-window inference, distances in
mm from the NIfTI header's voxel spacing) of the split is predicted and scored per class with
:mod:`medvl.evaluate.segment_metrics` (its module doc states the empty-mask conventions). Records:

* ``dice``, ``iou``, ``hd95``, ``nsd``: mean over cases of the case's mean over classes, with a
  95% bootstrap CI resampling *patients*; ``per_class`` holds each class's mean over cases;
* ``dice/<class>`` etc.: each class on its own, with its CI;
* prompted models (``train-seg model.prompt=box|text``): one pass per *present* structure, prompted by
  its bounding box (the MedSAM protocol) or its class name; absent structures are not scored (NaN);
* ``dice_present/<class>`` (multilabel, unprompted only): Dice over the cases where the class is present --
  for findings absent from most images, the headline Dice is dominated by correct empty
  predictions (1.0 each); this one is not.

HD95 of a missed (or hallucinated) structure is capped at the image diagonal (in mm) before
averaging; ``config.hd95_capped`` counts them. Per-case values are stored as the predictions'
``extra`` arrays (``dice``, ``dice/<class>``...), so ``medvl eval compare A.json B.json`` runs
paired bootstraps on them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medvl.evaluate import segment_metrics as sm
from medvl.evaluate.results import EvalResult, MetricRecord, Predictions, _clean
from medvl.evaluate.stats import bootstrap_statistic
from medvl.segment.data import CaseCache, open_dataset, seg_cases, seg_layout


def _nanmean(v: np.ndarray) -> float:
    v = np.asarray(v, dtype=np.float64)
    ok = v[~np.isnan(v)]
    return float(ok.mean()) if ok.size else float("nan")


def _ci(values: np.ndarray, groups: np.ndarray | None, n_boot: int, seed: int) -> tuple[float | None, float | None]:
    if not n_boot or np.all(np.isnan(values)):
        return None, None
    ci = bootstrap_statistic(values, statistic=_nanmean, groups=groups, n_boot=n_boot, seed=seed)
    return ci.low, ci.high


def segment_eval(model: Any, data: str | Path, split: str = "test", *, n_boot: int = 1000, seed: int = 0,
                 tolerance: float = sm.DEFAULT_NSD_TOLERANCE, overlap: float = 0.25, device: str = "cpu",
                 threshold: float = 0.5, masks_out: str | Path | None = None, model_name: str | None = None,
                 dataset: str | None = None, max_cases: int | None = None) -> EvalResult:
    """Score a segmentation checkpoint (dir or :class:`SegModel`) on the masks of ``split``.

    ``masks_out``: also write each predicted mask (2D: PNG label map; 3D: NIfTI with the input's
    affine) under this folder, named after the image.
    """

    import torch

    from medvl.models.seg_heads import SegModel
    from medvl.segment.infer import masks_to_label_map, predict_logits, to_masks, write_nifti_mask
    from medvl.segment.model import load_seg_model
    from medvl.segment.train import bbox_map

    # Any nn.Module with SegModel's attributes (task, dims, in_chans, classes, cfg) is scored the same
    # way: the benchmark wraps MONAI's UNet so both are predicted and scored by one code path.
    is_module = isinstance(model, (SegModel, torch.nn.Module))
    net = model if is_module else load_seg_model(model, device=device)
    name = model_name or (type(model).__name__ if is_module else str(model))
    manifest = open_dataset(data)
    layout = seg_layout(manifest, None, str(net.cfg.get("mask_column", "mask")))
    if layout.task != net.task or any(c not in layout.classes for c in net.classes):
        from medvl.errors import ConfigError

        raise ConfigError(f"model {name} segments {net.task} classes {net.classes} but {manifest.path} has "
                          f"{layout.task} classes {layout.classes}")
    layout.classes = list(net.classes)
    if layout.task == "multiclass":
        layout.values = {c: layout.values[c] for c in net.classes}
    cases = seg_cases(manifest, split, layout)
    if max_cases:
        cases = cases[:max_cases]
    cache = CaseCache(manifest, cases, layout)
    k = len(net.classes)
    prompt = str(getattr(net, "prompt", "none"))
    text_emb = net.embed_text(list(net.classes)) if prompt == "text" else None
    scores: dict[str, list[np.ndarray]] = {m: [] for m in sm.METRICS}
    present = []
    capped = 0
    net.eval()
    for i, case in enumerate(cases):
        loaded = cache[i]
        if prompt == "none":
            logits = predict_logits(net, loaded.image, overlap=overlap, device=device)
            pred = to_masks(net, logits[None], threshold)[0].numpy()
        else:  # one pass per present structure, prompted by its box / its class name
            pred = np.zeros_like(loaded.target)
            for c in range(k):
                if loaded.target[c].any():
                    logits = predict_logits(net, loaded.image, overlap=overlap, device=device,
                                            box_map=bbox_map(loaded.target[c]) if prompt == "box" else None,
                                            text_embedding=text_emb[c:c + 1] if prompt == "text" else None)
                    pred[c] = (logits[0].sigmoid() > threshold).numpy()
        s = sm.score_case(pred, loaded.target, spacing=loaded.spacing, tolerance=tolerance)
        capped += int(np.isinf(s.hd95).sum())
        for m in sm.METRICS:
            v = s.get(m)
            scores[m].append(np.where(s.truth_empty, np.nan, v) if prompt != "none" else v)
        present.append(~s.truth_empty)
        if masks_out is not None:
            lm = masks_to_label_map(pred)
            stem = Path(case.id).name.split(".")[0] + (f"_{i}" if "#" in case.id else "")
            if net.dims == 3:
                write_nifti_mask(lm, loaded.affine, Path(masks_out) / f"{stem}_mask.nii.gz")
            else:
                from PIL import Image

                Path(masks_out).mkdir(parents=True, exist_ok=True)
                Image.fromarray(lm).save(Path(masks_out) / f"{stem}_mask.png")
        cache._store.pop(i, None)  # volumes: keep memory flat
    per_case = {m: np.stack(v) if v else np.zeros((0, k)) for m, v in scores.items()}  # [N, K]
    pres = np.stack(present) if present else np.zeros((0, k), bool)
    pids = np.array([c.patient_id for c in cases])
    groups = pids if any(pids) else None
    cfg = {"split": split, "nsd_tolerance": tolerance, "threshold": threshold, "overlap": overlap,
           "task": net.task, "dims": net.dims, "hd95_capped": capped, "prompt": prompt, "n_boot": n_boot,
           "bootstrap_seed": seed,
           "empty_convention": "both empty: Dice/IoU/NSD 1, HD95 undefined; one empty: HD95 = image diagonal"}
    dataset = dataset or manifest.path.parent.name
    records: list[MetricRecord] = []
    extra: dict[str, np.ndarray] = {}

    def record(metric: str, values: np.ndarray, per_class: dict[str, float] | None = None) -> None:
        lo, hi = _ci(values, groups, n_boot, seed)
        records.append(MetricRecord(model=name, task="segment", dataset=dataset, split=split, metric=metric,
                                    value=_nanmean(values), ci_low=lo, ci_high=hi, n=len(cases),
                                    n_groups=len(set(pids.tolist())) if groups is not None else len(cases),
                                    config=cfg, label_task=net.task, classes=list(net.classes),
                                    per_class=_clean(per_class) if per_class is not None else None))

    for m in sm.METRICS:
        vals = per_case[m]
        case_mean = np.array([_nanmean(r) for r in vals])
        record(m, case_mean, {c: _nanmean(vals[:, j]) for j, c in enumerate(net.classes)})
        # Stored for paired tests only where defined for every case (HD95 is NaN where both masks are empty,
        # and a paired bootstrap of means over NaNs is undefined).
        if not np.isnan(case_mean).any():
            extra[m] = case_mean
        for j, c in enumerate(net.classes):
            record(f"{m}/{c}", vals[:, j])
            if not np.isnan(vals[:, j]).any():
                extra[f"{m}/{c}"] = vals[:, j]
    if net.task == "multilabel" and prompt == "none":
        for j, c in enumerate(net.classes):
            v = np.where(pres[:, j], per_case["dice"][:, j], np.nan)
            record(f"dice_present/{c}", v)
    preds = Predictions(ids=[c.id for c in cases], scores=np.zeros((len(cases), 0)),
                        labels=np.zeros((len(cases), 0)), label_task="", classes=list(net.classes),
                        patient_ids=pids, rows=np.array([c.row for c in cases]),
                        meta={"model": name, "task": "segment", "dataset": dataset, "split": split, "config": cfg},
                        extra=extra)
    return EvalResult(records=records, predictions=preds)
