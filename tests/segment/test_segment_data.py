"""Bad segmentation input is one clear error naming the row and file; sliding windows equal MONAI's."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medvl.data.manifest import load_manifest
from medvl.errors import ManifestError
from medvl.segment.data import CaseCache, label_fraction_subset, seg_cases, seg_layout


def _write(tmp: Path, rows: list[dict], images: dict[str, np.ndarray]) -> Path:
    for name, arr in images.items():
        Image.fromarray(arr).save(tmp / name)
    path = tmp / "manifest.csv"
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["image", "mask", "mask_labels", "split", "patient_id"])
        w.writeheader()
        w.writerows(rows)
    return path


def _load_all(path: Path) -> None:
    m = load_manifest(path)
    layout = seg_layout(m)
    cache = CaseCache(m, seg_cases(m, None, layout), layout)
    for i in range(len(cache)):
        cache[i]


IMG = (np.arange(256, dtype=np.uint8).reshape(16, 16))


def test_mask_of_another_size(tmp_path: Path):
    p = _write(tmp_path, [{"image": "a.png", "mask": "m.png", "mask_labels": "nodule", "split": "train",
                           "patient_id": "p"}], {"a.png": IMG, "m.png": np.zeros((8, 8), np.uint8)})
    with pytest.raises(ManifestError, match=r"row 1: mask .*m\.png is 8x8 but its image .*a\.png is 16x16"):
        _load_all(p)


def test_non_binary_mask(tmp_path: Path):
    m = np.zeros((16, 16), np.uint8)
    m[2:4] = 128
    m[5:7] = 255
    p = _write(tmp_path, [{"image": "a.png", "mask": "m.png", "mask_labels": "nodule", "split": "train",
                           "patient_id": "p"}], {"a.png": IMG, "m.png": m})
    with pytest.raises(ManifestError, match=r"row 1: mask .*m\.png is not binary"):
        _load_all(p)


def test_unknown_label_in_label_map(tmp_path: Path):
    m = np.zeros((16, 16), np.uint8)
    m[2:4] = 1
    m[5:7] = 3
    p = _write(tmp_path, [{"image": "a.png", "mask": "m.png", "mask_labels": "1:lung|2:heart", "split": "train",
                           "patient_id": "p"}], {"a.png": IMG, "m.png": m})
    with pytest.raises(ManifestError, match=r"row 1: label map .*m\.png holds label value\(s\) \[3\] not declared"):
        _load_all(p)


def test_paths_and_labels_must_pair(tmp_path: Path):
    p = _write(tmp_path, [{"image": "a.png", "mask": "m.png", "mask_labels": "nodule|effusion", "split": "train",
                           "patient_id": "p"}], {"a.png": IMG, "m.png": np.zeros((16, 16), np.uint8)})
    with pytest.raises(ManifestError, match="row 1: 1 mask path"):
        _load_all(p)


def test_empty_mask_and_label_fraction(tmp_path: Path):
    rows = [{"image": "a.png", "mask": "m.png" if i == 0 else "", "mask_labels": "nodule" if i == 0 else "",
             "split": "train", "patient_id": f"p{i}"} for i in range(10)]
    p = _write(tmp_path, rows, {"a.png": IMG, "m.png": np.zeros((16, 16), np.uint8)})
    m = load_manifest(p)
    layout = seg_layout(m)
    cases = seg_cases(m, "train", layout)
    case = CaseCache(m, cases, layout)[0]  # an empty (all-zero) mask is a valid all-negative example
    assert case.target.shape == (1, 16, 16) and not case.target.any()
    sub = label_fraction_subset(cases, 0.1, seed=0)
    assert len(sub) == 1 and sub == label_fraction_subset(cases, 0.1, seed=0)


def test_sliding_window_equals_monai():
    inferers = pytest.importorskip("monai.inferers")
    from medvl.segment.infer import sliding_window_logits

    torch.manual_seed(0)
    net = torch.nn.Conv3d(1, 2, 3, padding=1)
    for shape, overlap in (((1, 1, 30, 21, 17), 0.25), ((2, 1, 10, 40, 19), 0.5)):
        v = torch.rand(*shape)
        ours = sliding_window_logits(v, (16, 16, 16), net, overlap=overlap)
        with torch.no_grad():
            ref = inferers.sliding_window_inference(v, (16, 16, 16), 4, net, overlap=overlap, mode="constant")
        assert ours.shape == ref.shape
        assert torch.allclose(ours, ref, atol=1e-6)
