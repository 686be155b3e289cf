"""Phantom organ label maps: asked for, they change nothing else; organ segmentation trains on them."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from medvl.cli import app
from medvl.data.synthetic import generate_phantoms

from .conftest import tiny_overrides


def _digest(root: Path, skip: str = "_anatomy") -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((root / "images").iterdir())
            if skip not in p.name}


def test_anatomy_maps_leave_everything_else_identical(tmp_path: Path):
    plain = generate_phantoms(tmp_path / "plain", n=12, size=32)
    organs = generate_phantoms(tmp_path / "organs", n=12, size=32, anatomy=True)
    assert _digest(plain.parent) == _digest(organs.parent)  # images and finding masks byte-identical
    with plain.open(newline="") as f:
        rows_a = list(csv.DictReader(f))
    with organs.open(newline="") as f:
        rows_b = list(csv.DictReader(f))
    for a, b in zip(rows_a, rows_b, strict=True):
        assert {k: v for k, v in b.items() if not k.startswith("anatomy_")} == a
        assert b["anatomy_mask_labels"] == "1:lung|2:heart"
        lm = np.asarray(Image.open(organs.parent / b["anatomy_mask"]))
        assert lm.shape == (32, 32) and set(np.unique(lm).tolist()) == {0, 1, 2}
        assert 0.15 < (lm == 1).mean() < 0.6 and 0.03 < (lm == 2).mean() < 0.3


def test_organ_segmentation_from_the_cli(seg_phantoms: Path, tmp_path: Path):
    runner = CliRunner()
    out = tmp_path / "run"
    res = runner.invoke(app, ["train-seg", *tiny_overrides(seg_phantoms, steps=3), "data.mask_column=anatomy_mask",
                              "--out", str(out)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["eval", "segment", "-m", str(out / "last"), "-d", str(seg_phantoms), "--n-boot", "20",
                              "--per-class", "--out", str(tmp_path / "r.json")])
    assert res.exit_code == 0, res.output
    assert "Dice per class: lung" in res.output
    metrics = {r["metric"]: r for r in json.loads((tmp_path / "r.json").read_text())}
    assert {"dice/lung", "dice/heart", "hd95/heart"} <= set(metrics) and metrics["dice"]["label_task"] == "multiclass"
