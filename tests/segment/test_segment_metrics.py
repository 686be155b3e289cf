"""Segmentation metrics equal MONAI's (DiceMetric, MeanIoU, HausdorffDistanceMetric(95), SurfaceDiceMetric)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medvl.errors import MedvlError
from medvl.evaluate import segment_metrics as sm

monai_metrics = pytest.importorskip("monai.metrics")


def _blobs(rng: np.random.Generator, shape: tuple[int, ...], k: int) -> np.ndarray:
    """Random smooth-ish blobs: thresholded smoothed noise, one channel per class."""
    from scipy import ndimage

    noise = rng.normal(size=(k, *shape))
    out = np.stack([ndimage.gaussian_filter(n, 2.0) > 0.05 for n in noise])
    return out


def _monai(pred: np.ndarray, truth: np.ndarray, spacing, tol: float) -> dict[str, np.ndarray]:
    p = torch.from_numpy(pred[None].astype(np.float32))
    t = torch.from_numpy(truth[None].astype(np.float32))
    out = {}
    out["dice"] = monai_metrics.DiceMetric(include_background=True, reduction="none", ignore_empty=False)(p, t)
    out["iou"] = monai_metrics.MeanIoU(include_background=True, reduction="none", ignore_empty=False)(p, t)
    out["hd95"] = monai_metrics.HausdorffDistanceMetric(include_background=True, percentile=95,
                                                        reduction="none")(p, t, spacing=spacing)
    out["nsd"] = monai_metrics.SurfaceDiceMetric([tol] * pred.shape[0], include_background=True,
                                                 reduction="none")(p, t, spacing=spacing)
    return {k: v[0].double().numpy() for k, v in out.items()}


@pytest.mark.parametrize("shape,spacing", [((48, 40), None), ((48, 40), (0.7, 1.3)),
                                           ((20, 24, 18), None), ((20, 24, 18), (2.0, 1.0, 1.5))])
def test_metrics_equal_monai(shape, spacing):
    rng = np.random.default_rng(0)
    truth = _blobs(rng, shape, 3)
    pred = _blobs(rng, shape, 3) | truth & (rng.random((3, *shape)) > 0.3)
    tol = 1.5
    ours = sm.score_case(pred, truth, spacing=spacing, tolerance=tol)
    ref = _monai(pred, truth, spacing, tol)
    for m in sm.METRICS:
        np.testing.assert_allclose(getattr(ours, m), ref[m], atol=1e-5, rtol=1e-6, err_msg=m)
    # The single-mask functions agree with the per-case scorer.
    assert sm.hd95(pred[1], truth[1], spacing) == pytest.approx(ours.hd95[1])
    assert sm.nsd(pred[1], truth[1], tol, spacing) == pytest.approx(ours.nsd[1])


def test_empty_mask_conventions():
    truth = np.zeros((2, 16, 16), bool)
    truth[1, 4:8, 4:8] = True
    pred = np.zeros_like(truth)  # class 0: both empty; class 1: prediction misses it
    s = sm.score_case(pred, truth)
    assert s.dice.tolist() == [1.0, 0.0] and s.iou.tolist() == [1.0, 0.0] and s.nsd.tolist() == [1.0, 0.0]
    assert np.isnan(s.hd95[0]) and np.isinf(s.hd95[1])
    assert s.get("hd95")[1] == pytest.approx(np.hypot(15, 15))  # capped at the frame diagonal
    ref = _monai(pred, truth, None, 1.0)
    assert ref["dice"].tolist() == [1.0, 0.0]  # MONAI ignore_empty=False: the same convention
    # MONAI's HD is NaN for a missed structure too (an empty prediction has no distances), which would drop
    # the miss from a mean; medvl keeps it as inf (capped at the diagonal in aggregates).
    assert np.isnan(ref["hd95"][0]) and np.isnan(ref["hd95"][1])
    assert np.isnan(ref["nsd"][0])  # MONAI leaves NSD undefined there; medvl says 1.0 (documented)


def test_bad_input_is_refused():
    with pytest.raises(MedvlError, match="differ in shape"):
        sm.dice(np.zeros((4, 4)), np.zeros((4, 5)))
    with pytest.raises(MedvlError, match="spacing"):
        sm.hd95(np.ones((4, 4)), np.ones((4, 4)), spacing=(1, 2, 3))
