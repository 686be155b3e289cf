"""Segmentation thumbnails for the bench report: where do the predicted masks fall against the truth?

For a few cases of a split, chosen deterministically (the first ``n`` rows in manifest order with
a non-empty true mask, topped up with mask rows whose truth is empty when there are fewer),
:func:`segment_examples` re-runs the trained segmentation checkpoint exactly as
:func:`medvl.evaluate.segment.segment_eval` scored it (same case loading, same
:func:`~medvl.segment.infer.predict_logits` / :func:`~medvl.segment.infer.to_masks` at the
image's own size, same per-structure prompting for prompted heads) and draws one small PNG per
(case, class) where the truth or the prediction is non-empty: the image in grey, the TRUE mask's
outline in cyan just outside it and the PREDICTED mask's outline in magenta just inside it (so a
perfect prediction shows both lines side by side instead of one hiding the other). Each thumbnail
carries the class and the case's Dice for that class (:func:`medvl.evaluate.segment_metrics.dice`,
the value the metric averaged). Volumes show the slice (last axis) with the largest true-mask
area of the class (the largest predicted area when the truth is empty).

:func:`bench_segment_examples` runs this for every ``segment`` section of a finished bench (the
task records its checkpoint as ``config.seg_checkpoint``, relative to the bench folder), and
:func:`segment_examples_html` renders the rows as self-contained HTML (base64 PNG data URIs).
"""

from __future__ import annotations

import base64
import html
import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medvl.errors import MedvlError

if TYPE_CHECKING:
    from medvl.bench.suite import Suite

log = logging.getLogger(__name__)

THUMB_SIZE = 96  # px, the longest side; as the grounding thumbnails
N_EXAMPLES = 4
TRUTH_RGB = (0, 229, 255)  # cyan
PRED_RGB = (255, 0, 255)  # magenta


@dataclass
class SegExample:
    """One thumbnail: the case and class it shows, that case's Dice for the class, the PNG bytes."""

    image: str  # the image path as written in the manifest
    row: int
    cls: str
    dice: float
    truth_empty: bool
    pred_empty: bool
    slice_index: int | None  # volumes: the slice shown (last axis); None for 2D images
    png: bytes


# ----------------------------------------------------------------------------- drawing
def pick_slice(truth: np.ndarray, pred: np.ndarray) -> int:
    """Index along the last axis of the largest true-mask area (of the predicted one if the truth is empty)."""
    src = truth if truth.any() else pred
    area = np.asarray(src, bool).reshape(-1, src.shape[-1]).sum(0)
    return int(np.argmax(area)) if area.any() else src.shape[-1] // 2


def outline_png(grey: np.ndarray, truth: np.ndarray, pred: np.ndarray, size: int = THUMB_SIZE) -> bytes:
    """PNG bytes (RGB, longest side ``size``) of ``grey`` ``[H, W]`` (floats in [0, 1] or uint8) with outlines.

    The true mask's outline is the 1 px ring just outside it (cyan), the predicted mask's the 1 px
    ring just inside it (magenta), both at the thumbnail's resolution (masks resized nearest).
    """
    from PIL import Image
    from scipy import ndimage

    g = np.asarray(grey)
    if g.ndim != 2 or g.shape != np.shape(truth) or g.shape != np.shape(pred):
        raise ValueError(f"image {g.shape}, truth {np.shape(truth)} and prediction {np.shape(pred)} must be one 2D "
                         "shape")
    if g.dtype != np.uint8:
        g = np.clip(np.rint(g.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    h, w = g.shape
    scale = size / max(h, w)
    th, tw = max(1, round(h * scale)), max(1, round(w * scale))
    base = np.asarray(Image.fromarray(g).resize((tw, th), Image.BILINEAR), np.uint8)
    rgb = np.repeat(base[..., None], 3, axis=-1)

    def resized(mask: np.ndarray) -> np.ndarray:
        m = Image.fromarray(np.asarray(mask, bool).astype(np.uint8) * 255)
        return np.asarray(m.resize((tw, th), Image.NEAREST)) > 127

    t, p = resized(truth), resized(pred)
    rgb[ndimage.binary_dilation(t) & ~t] = TRUTH_RGB
    rgb[p & ~ndimage.binary_erosion(p, border_value=0)] = PRED_RGB
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


# ----------------------------------------------------------------------------- model and data
def segment_examples(checkpoint: str | Path, manifest: str | Path, split: str = "test", *, n: int = N_EXAMPLES,
                     size: int = THUMB_SIZE, threshold: float = 0.5, overlap: float = 0.25,
                     device: str = "cpu") -> list[SegExample]:
    """Thumbnails of the first ``n`` mask cases of ``split`` (non-empty truth first), one per shown class.

    A class is shown for a case when its true or predicted mask is non-empty there (both empty:
    nothing to see). ``threshold`` and ``overlap``: as :func:`~medvl.evaluate.segment.segment_eval`.
    """
    import torch

    from medvl.evaluate import segment_metrics as sm
    from medvl.segment.data import CaseCache, open_dataset, seg_cases, seg_layout
    from medvl.segment.infer import predict_logits, to_masks
    from medvl.segment.model import load_seg_model
    from medvl.segment.train import bbox_map

    net = load_seg_model(checkpoint, device=device)
    net.eval()
    man = open_dataset(manifest)
    layout = seg_layout(man, None, str(net.cfg.get("mask_column", "mask")))
    if layout.task != net.task or any(c not in layout.classes for c in net.classes):
        raise MedvlError(f"model {checkpoint} segments {net.task} classes {net.classes} but {man.path} has "
                         f"{layout.task} classes {layout.classes}")
    layout.classes = list(net.classes)  # as segment_eval: the model's classes, in its order
    if layout.task == "multiclass":
        layout.values = {c: layout.values[c] for c in net.classes}
    cases = [c for c in seg_cases(man, split, layout) if c.masks]
    cache = CaseCache(man, cases, layout)
    full: list[int] = []
    empty: list[int] = []
    for i in range(len(cases)):
        if len(full) >= n:
            break
        has_truth = bool(cache[i].target.any())
        (full if has_truth else empty).append(i)
        if not has_truth:
            cache._store.pop(i, None)  # re-read only if it is needed to top up
    chosen = sorted(full + empty[:max(0, n - len(full))])
    prompt = str(getattr(net, "prompt", "none"))
    text_emb = net.embed_text(list(net.classes)) if prompt == "text" else None
    out: list[SegExample] = []
    with torch.no_grad():
        for i in chosen:
            loaded = cache[i]
            if prompt == "none":
                logits = predict_logits(net, loaded.image, overlap=overlap, device=device)
                pred = to_masks(net, logits[None], threshold)[0].numpy()
            else:  # as segment_eval: one pass per present structure, prompted by its box / class name
                pred = np.zeros_like(loaded.target)
                for c in range(len(net.classes)):
                    if loaded.target[c].any():
                        logits = predict_logits(net, loaded.image, overlap=overlap, device=device,
                                                box_map=bbox_map(loaded.target[c]) if prompt == "box" else None,
                                                text_embedding=text_emb[c:c + 1] if prompt == "text" else None)
                        pred[c] = (logits[0].sigmoid() > threshold).numpy()
            grey = loaded.image.mean(0)
            for c, name in enumerate(net.classes):
                truth, p = loaded.target[c], pred[c]
                if not truth.any() and not p.any():
                    continue
                k = None
                if grey.ndim == 3:
                    k = pick_slice(truth, p)
                    g2, t2, p2 = grey[..., k], truth[..., k], p[..., k]
                else:
                    g2, t2, p2 = grey, truth, p
                out.append(SegExample(image=cases[i].id.split("#")[0], row=cases[i].row, cls=name,
                                      dice=float(sm.dice(p, truth)), truth_empty=not truth.any(),
                                      pred_empty=not p.any(), slice_index=k,
                                      png=outline_png(g2, t2, p2, size)))
    return out


# ----------------------------------------------------------------------------- bench report
def _is_segment(task: str) -> bool:
    return task.split(" [")[0] == "segment"


def _checkpoint(runs: list[tuple[int, Any]], out_dir: Path) -> tuple[int, Path]:
    """(seed, checkpoint dir) of the first seed whose result names its ``seg_checkpoint``."""
    for seed, r in sorted(runs, key=lambda sr: sr[0]):
        for rec in r.records:
            ck = rec.config.get("seg_checkpoint") if isinstance(rec.config, dict) else None
            if ck:
                path = Path(ck) if Path(ck).is_absolute() else out_dir / ck
                if not path.is_dir():
                    raise MedvlError(f"seed {seed}: the scored checkpoint {path} is gone")
                return seed, path
    raise MedvlError("its results name no seg_checkpoint (cached before thumbnails existed: delete its segment "
                     "result files under results/ and re-run the suite)")


SegRows = list[tuple[str, "tuple[int, list[SegExample]] | str"]]


def bench_segment_examples(suite: Suite, sections: Sequence[tuple], manifests: dict[str, Path], out_dir: Path,
                           n: int = N_EXAMPLES) -> dict[tuple[str, str, str], SegRows]:
    """Per segment section ``(task, dataset, split)``: (model, (seed, its examples) or why there are none).

    ``sections`` as built by the report (key first, then ``{model: [(seed, result)]}``); one model
    per family, its first seed. Nothing here fails the report: an error becomes the row's reason.
    """
    from medvl.bench.grounding_figures import shown_models

    out: dict[tuple[str, str, str], SegRows] = {}
    for key, models, *_ in sections:
        task, dataset, split = key
        if not _is_segment(task) or dataset not in manifests:
            continue
        rows: SegRows = []
        for name in shown_models(suite, list(models)):
            try:
                seed, ckpt = _checkpoint(models[name], Path(out_dir))
                rows.append((name, (seed, segment_examples(ckpt, manifests[dataset], split, n=n,
                                                           device=suite.device))))
            except Exception as exc:  # noqa: BLE001 - a missing thumbnail must not break the report
                log.warning("segmentation examples for %s (%s): %s", name, task, exc)
                rows.append((name, str(exc) if isinstance(exc, MedvlError) else f"{type(exc).__name__}: {exc}"))
        if rows:
            out[tuple(key)] = rows
    return out


def segment_examples_html(rows: SegRows, split: str = "test") -> str:
    """The report fragment: a legend, then per model a row of captioned thumbnails (empty without rows)."""
    esc = html.escape
    if not rows:
        return ""
    out = [f"<h3>Segmentation examples ({esc(split)} split)</h3>",
           "<p class='meta'>Grey: the image as scored (volumes: the slice with the largest true area); "
           "<span style='color:#00a5b8'>cyan line</span>: the true mask (drawn just outside it); "
           "<span style='color:#c000c0'>magenta line</span>: the predicted mask (drawn just inside it). "
           f"First {N_EXAMPLES} cases of the split with a non-empty true mask, one thumbnail per class present; "
           "Dice of that case and class. One model per family, its first seed.</p><div class='gcases'>"]
    for name, got in rows:
        out.append(f"<div class='gcase'><b>{esc(name)}</b>")
        if isinstance(got, str):
            out.append(f"<div class='meta'>no examples: {esc(got[:200])}</div></div>")
            continue
        seed, examples = got
        if not examples:
            out.append("<div class='meta'>no case with a mask in this split</div></div>")
            continue
        out.append(f"<div class='meta'>seed {seed}</div><div class='gfigs'>")
        for ex in examples:
            where = Path(ex.image).name + (f", slice {ex.slice_index}" if ex.slice_index is not None else "")
            note = " (no true mask)" if ex.truth_empty else " (nothing predicted)" if ex.pred_empty else ""
            alt = (f"{name}: {ex.cls} on {where}; true outline cyan, predicted outline magenta; "
                   f"Dice {ex.dice:.2f}{note}")
            src = base64.b64encode(ex.png).decode()
            out.append(f"<figure class='gfig'><img alt='{esc(alt)}' title='{esc(where)}' "
                       f"src='data:image/png;base64,{src}'><figcaption><b>{esc(ex.cls)}</b> — Dice "
                       f"{ex.dice:.2f}{esc(note)}<br><span class='meta'>{esc(where)}</span></figcaption></figure>")
        out.append("</div></div>")
    out.append("</div>")
    return "\n".join(out)
