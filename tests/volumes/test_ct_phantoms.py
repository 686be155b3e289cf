"""Synthetic chest CT phantoms: geometry and ground truth, and 3D CLIP end to end through the evaluators."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from medvl.data.io import read_image
from medvl.data.synthetic3d import FIELD_OF_VIEW_MM, HU, generate_ct_phantoms
from medvl.errors import ConfigError, MedvlError


@pytest.fixture(scope="module")
def ct(tmp_path_factory) -> Path:
    return generate_ct_phantoms(tmp_path_factory.mktemp("ct"), n=30, size=32, seed=0)


def _rows(manifest: Path) -> list[dict[str, str]]:
    with manifest.open() as f:
        return list(csv.DictReader(f))


def test_volumes_are_hu_ras_nifti_with_spacing(ct):
    row = _rows(ct)[0]
    img = read_image(ct.parent / row["image"])
    assert img.array.shape == (32, 32, 32) and img.meta.orientation == "RAS"
    assert img.meta.spacing == pytest.approx((FIELD_OF_VIEW_MM / 32,) * 3)
    organs = read_image(ct.parent / row["anatomy_mask"]).array
    assert set(np.unique(organs)) == {0, 1, 2} and row["anatomy_mask_labels"] == "1:lung|2:heart"
    lung = img.array[organs == 1]
    assert abs(np.median(lung) - HU["lung"]) < 60 or row["effusion_side"]
    assert abs(np.median(img.array[organs == 2]) - HU["blood"]) < 30
    assert img.array.min() <= -1000  # air outside the body


def test_findings_masks_match_the_report(ct):
    rows = _rows(ct)
    nodules = [r for r in rows if r["nodule_lobe"]]
    effusions = [r for r in rows if r["effusion_side"]]
    assert nodules and effusions
    spacing = FIELD_OF_VIEW_MM / 32
    for r in nodules:
        assert r["nodule_lobe"] in r["text"] and f"{round(float(r['nodule_size_mm']))} mm" in r["text"]
        labels = r["mask_labels"].split("|")
        mask = read_image(ct.parent / r["mask"].split("|")[labels.index("nodule")]).array.astype(bool)
        side = r["nodule_lobe"].split()[0]
        xs = np.argwhere(mask)[:, 0]
        assert ((xs >= 16) if side == "right" else (xs < 16)).all()  # RAS: first axis increases to the right
        ball = 4 / 3 * np.pi * (float(r["nodule_size_mm"]) / 2 / spacing) ** 3
        assert 0 < mask.sum() <= max(2 * ball, 8)
    for r in effusions:
        assert f"{r['effusion_side']} pleural effusion" in r["text"]
        labels = r["mask_labels"].split("|")
        mask = read_image(ct.parent / r["mask"].split("|")[labels.index("pleural effusion")]).array.astype(bool)
        xs, ys = np.argwhere(mask)[:, 0], np.argwhere(mask)[:, 1]
        assert ((xs >= 16) if r["effusion_side"] == "right" else (xs < 16)).all()
        assert ys.mean() < 16  # layers posteriorly (supine)
    for r in rows:
        if r["labels"] == "no finding":
            assert r["mask"] == "" and "No pleural" in r["text"] or "No pleural fluid" in r["text"]


def test_same_seed_same_bytes_and_bad_arguments(tmp_path):
    a = generate_ct_phantoms(tmp_path / "a", n=3, size=16, seed=4)
    b = generate_ct_phantoms(tmp_path / "b", n=3, size=16, seed=4)
    assert a.read_text() == b.read_text()
    img_a = read_image(a.parent / "images/ct00000.nii.gz").array
    assert np.array_equal(img_a, read_image(b.parent / "images/ct00000.nii.gz").array)
    with pytest.raises(ConfigError, match="size"):
        generate_ct_phantoms(tmp_path / "c", n=3, size=8)
    with pytest.raises(MedvlError, match="not empty"):
        generate_ct_phantoms(tmp_path / "a", n=3, size=16)


@pytest.mark.slow
def test_clip3d_trains_and_every_evaluator_runs(ct, tmp_path):
    from typer.testing import CliRunner

    from medvl.cli import app
    from medvl.evaluate.grounding import grounding_eval

    cfg = {"data": {"manifest": str(ct), "split": "train", "image_size": 32, "channels": 1},
           "model": {"name": "clip3d-tiny"}, "objectives": [{"name": "infonce", "weight": 1.0}],
           "optim": {"lr": 5e-4, "warmup_steps": 1},
           "train": {"max_steps": 3, "batch_size": 8, "seed": 0, "device": "cpu", "ckpt_every": 3,
                     "log_every": 1, "out_dir": str(tmp_path / "run")}}
    (tmp_path / "cfg.yaml").write_text(json.dumps(cfg))  # JSON is YAML
    runner = CliRunner()
    res = runner.invoke(app, ["train", "--config", str(tmp_path / "cfg.yaml")])
    assert res.exit_code == 0, res.output
    model = tmp_path / "run" / "last"
    for task in ("zeroshot", "retrieval", "linear-probe"):
        out = tmp_path / f"{task}.json"
        res = runner.invoke(app, ["eval", task, "-m", str(model), "-d", str(ct), "--n-boot", "0", "--no-cache",
                                  "--out", str(out)])
        assert res.exit_code == 0, (task, res.output)
        assert json.loads(out.read_text())
    g = grounding_eval(str(model), ct, "test", n_boot=0)
    assert len(g.records[0].config["patch_grid"]) == 3  # word-to-voxel maps on a (d, h, w) grid
    assert 0.0 <= g.value("map_auroc") <= 1.0


def test_grounding_map_is_trilinear_on_a_3d_grid():
    import torch

    from medvl.evaluate.grounding import grounding_map, pointing_game

    patches = torch.eye(8)  # 2x2x2 cells, one-hot features
    word = torch.eye(8)[[7]]  # attends to the last cell: (1, 1, 1)
    heat = grounding_map(patches, (2, 2, 2), word, (8, 8, 8), temperature=20.0).numpy()
    mask = np.zeros((8, 8, 8), bool)
    mask[4:, 4:, 4:] = True
    assert heat.shape == (8, 8, 8) and pointing_game(heat, mask) == 1.0
