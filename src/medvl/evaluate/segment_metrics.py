"""Segmentation metrics per class: Dice, IoU, 95% Hausdorff distance, normalised surface Dice.

Why written here rather than imported from MONAI: MONAI is medvl's *peer* (a dev dependency), and
these four metrics are a few lines of numpy/scipy each. They are defined exactly as MONAI defines
them, and ``tests/segment/test_segment_metrics.py`` checks equality with ``DiceMetric``,
``MeanIoU``, ``HausdorffDistanceMetric(percentile=95)`` and ``SurfaceDiceMetric`` within 1e-5 on
2D and 3D masks, with and without voxel spacing:

* **boundary** of a mask: the mask XOR its binary erosion (scipy's cross-shaped structuring
  element, outside the array counts as background, so mask pixels on the image border are
  boundary pixels);
* **surface distances**: for every boundary voxel of one mask, the Euclidean distance in
  physical units (``spacing`` per axis, mm) to the nearest boundary voxel of the other mask;
* **HD95** = max(95th percentile of pred->truth distances, 95th percentile of truth->pred
  distances), percentiles by linear interpolation (``torch.quantile``'s rule);
* **NSD** at tolerance ``tau`` = (pred boundary voxels within ``tau`` of the truth boundary +
  truth boundary voxels within ``tau`` of the pred boundary) / (all boundary voxels of both).

Empty-mask conventions (stated because every paper picks its own; a class absent from an image
is common in multi-label chest masks):

* Dice, IoU: truth and prediction both empty -> **1.0** (the model correctly found nothing; as
  MONAI with ``ignore_empty=False``); truth empty but prediction not (or the reverse) -> 0.0.
* NSD: both empty -> **1.0** (same reasoning; MONAI returns NaN there); one empty -> 0.0.
* HD95: both empty -> **NaN** (undefined; left out of means). One empty -> **inf** (MONAI gives
  inf when the truth is empty but NaN when the prediction is, which would silently drop a missed
  structure from a mean; medvl treats both alike). Aggregates replace inf by the image's diagonal in physical units
  (the largest distance possible in the frame), so one missed structure is the worst case, not
  an infinite mean (the evaluation records how many were capped).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from medvl.errors import MedvlError

METRICS = ("dice", "iou", "hd95", "nsd")
DEFAULT_NSD_TOLERANCE = 1.0  # physical units (mm with spacing, else pixels)


def _spacing(spacing: float | Sequence[float] | None, ndim: int) -> np.ndarray:
    if spacing is None:
        return np.ones(ndim)
    s = np.atleast_1d(np.asarray(spacing, dtype=np.float64))
    if s.size == 1:
        s = np.repeat(s, ndim)
    if s.size != ndim:
        raise MedvlError(f"spacing has {s.size} values for a {ndim}D mask")
    if np.any(s <= 0):
        raise MedvlError(f"spacing must be positive, got {s.tolist()}")
    return s


def _check_pair(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, truth = np.asarray(pred), np.asarray(truth)
    if pred.shape != truth.shape:
        raise MedvlError(f"prediction {pred.shape} and truth {truth.shape} masks differ in shape")
    return pred.astype(bool), truth.astype(bool)


def boundary(mask: np.ndarray) -> np.ndarray:
    """Boundary voxels: the mask minus its erosion (border pixels of the array count as boundary)."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return mask.copy()
    return mask ^ ndimage.binary_erosion(mask)


def surface_distances(pred: np.ndarray, truth: np.ndarray,
                      spacing: float | Sequence[float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(pred->truth, truth->pred) distances of each boundary voxel to the other boundary.

    A side whose own boundary is empty gives an empty array; a side facing an empty boundary
    gives ``inf`` for each of its voxels (MONAI's convention).
    """
    pred, truth = _check_pair(pred, truth)
    sp = _spacing(spacing, pred.ndim)
    bp, bt = boundary(pred), boundary(truth)

    def directed(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
        if not src.any():
            return np.zeros(0)
        if not dst.any():
            return np.full(int(src.sum()), np.inf)
        dist = ndimage.distance_transform_edt(~dst, sampling=sp)
        return dist[src]

    return directed(bp, bt), directed(bt, bp)


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """2|P∩T| / (|P|+|T|); 1.0 when both are empty (see module doc)."""
    pred, truth = _check_pair(pred, truth)
    denom = int(pred.sum()) + int(truth.sum())
    return 1.0 if denom == 0 else 2.0 * int((pred & truth).sum()) / denom


def iou(pred: np.ndarray, truth: np.ndarray) -> float:
    """|P∩T| / |P∪T|; 1.0 when both are empty."""
    pred, truth = _check_pair(pred, truth)
    union = int((pred | truth).sum())
    return 1.0 if union == 0 else int((pred & truth).sum()) / union


def hd95(pred: np.ndarray, truth: np.ndarray, spacing: float | Sequence[float] | None = None,
         percentile: float = 95.0) -> float:
    """Symmetric percentile Hausdorff distance; NaN when both are empty, inf when one is."""
    d_pt, d_tp = surface_distances(pred, truth, spacing)
    if d_pt.size == 0 and d_tp.size == 0:
        return float("nan")
    if d_pt.size == 0 or d_tp.size == 0:
        return float("inf")
    return float(max(np.percentile(d_pt, percentile), np.percentile(d_tp, percentile)))


def nsd(pred: np.ndarray, truth: np.ndarray, tolerance: float = DEFAULT_NSD_TOLERANCE,
        spacing: float | Sequence[float] | None = None) -> float:
    """Normalised surface Dice at ``tolerance`` (physical units); 1.0 when both are empty."""
    if tolerance < 0 or not np.isfinite(tolerance):
        raise MedvlError(f"NSD tolerance must be a finite number >= 0, got {tolerance}")
    d_pt, d_tp = surface_distances(pred, truth, spacing)
    total = d_pt.size + d_tp.size
    if total == 0:
        return 1.0
    return float((np.sum(d_pt <= tolerance) + np.sum(d_tp <= tolerance)) / total)


def diagonal(shape: Sequence[int], spacing: float | Sequence[float] | None = None) -> float:
    """The largest distance inside an array of ``shape`` (physical units): the HD cap for a missed mask."""
    sp = _spacing(spacing, len(shape))
    return float(np.sqrt(np.sum(((np.asarray(shape) - 1) * sp) ** 2)))


@dataclass
class CaseScores:
    """Per-class metrics of one image/volume: arrays ``[K]`` (HD95 raw: NaN/inf kept)."""

    dice: np.ndarray
    iou: np.ndarray
    hd95: np.ndarray
    nsd: np.ndarray
    truth_empty: np.ndarray
    pred_empty: np.ndarray
    diagonal: float

    def get(self, metric: str) -> np.ndarray:
        if metric == "hd95":
            return cap_hd95(self.hd95, self.diagonal)
        return getattr(self, metric)


def cap_hd95(values: np.ndarray, cap: float) -> np.ndarray:
    """inf (one mask empty) -> ``cap``; NaN (both empty) stays NaN."""
    v = np.asarray(values, dtype=np.float64).copy()
    v[np.isinf(v)] = cap
    return v


def score_case(pred: np.ndarray, truth: np.ndarray, spacing: float | Sequence[float] | None = None,
               tolerance: float = DEFAULT_NSD_TOLERANCE) -> CaseScores:
    """All four metrics per class for one-hot / multi-label masks ``[K, *spatial]`` (bool or 0/1)."""
    pred, truth = _check_pair(pred, truth)
    if pred.ndim < 3:
        raise MedvlError(f"score_case expects [K, H, W] or [K, D, H, W] masks, got shape {pred.shape}")
    k = pred.shape[0]
    out = {m: np.zeros(k) for m in METRICS}
    for c in range(k):
        out["dice"][c] = dice(pred[c], truth[c])
        out["iou"][c] = iou(pred[c], truth[c])
        d_pt, d_tp = surface_distances(pred[c], truth[c], spacing)
        if d_pt.size == 0 and d_tp.size == 0:
            out["hd95"][c], out["nsd"][c] = np.nan, 1.0
        else:
            out["hd95"][c] = (np.inf if d_pt.size == 0 or d_tp.size == 0
                              else max(np.percentile(d_pt, 95), np.percentile(d_tp, 95)))
            out["nsd"][c] = (np.sum(d_pt <= tolerance) + np.sum(d_tp <= tolerance)) / (d_pt.size + d_tp.size)
    return CaseScores(out["dice"], out["iou"], out["hd95"], out["nsd"],
                      truth_empty=~truth.reshape(k, -1).any(1), pred_empty=~pred.reshape(k, -1).any(1),
                      diagonal=diagonal(pred.shape[1:], spacing))


def labels_to_onehot(label_map: np.ndarray, values: Sequence[int]) -> np.ndarray:
    """Integer label map ``[*spatial]`` -> bool ``[K, *spatial]`` for the given label ``values``."""
    lm = np.asarray(label_map)
    return np.stack([lm == v for v in values]) if len(values) else np.zeros((0,) + lm.shape, bool)
