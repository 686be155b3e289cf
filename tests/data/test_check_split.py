"""``medvl data check`` finds every kind of error with its row; ``medvl data split`` never leaks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import medvl.cli  # noqa: F401  registers the commands
from medvl.cli.app import app
from medvl.data.card import ClassInfo, DatasetCard
from medvl.data.check import check_manifest
from medvl.data.manifest import load_manifest, write_manifest
from medvl.data.split import assign_patient_splits, parse_fractions
from medvl.errors import ManifestError


def _png(path: Path, value: int) -> str:
    rng = np.random.default_rng(value)
    Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(path)
    return path.name


def _dataset(tmp_path: Path) -> Path:
    DatasetCard(name="toy", task="multiclass", classes=[ClassInfo("a"), ClassInfo("b")]).save(tmp_path / "card.yaml")
    rows = [
        {"image": _png(tmp_path / "1.png", 1), "text": "a", "labels": "a", "split": "train", "patient_id": "p1"},
        {"image": _png(tmp_path / "2.png", 2), "text": "b", "labels": "b", "split": "train", "patient_id": "p2"},
        {"image": _png(tmp_path / "3.png", 3), "text": "a", "labels": "a", "split": "test", "patient_id": "p3"},
        {"image": _png(tmp_path / "4.png", 4), "text": "b", "labels": "b", "split": "test", "patient_id": "p4"},
    ]
    write_manifest(rows, tmp_path / "manifest.csv")
    return tmp_path / "manifest.csv"


def test_clean_manifest_passes(tmp_path: Path) -> None:
    report = check_manifest(_dataset(tmp_path))
    assert report.ok, [str(f) for f in report.findings]
    assert report.split_counts == {"test": 2, "train": 2}
    assert report.class_balance["train"] == {"a": 1, "b": 1}


def test_every_kind_of_error_is_found_with_its_row(tmp_path: Path) -> None:
    path = _dataset(tmp_path)
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    Image.open(tmp_path / "1.png").save(tmp_path / "copy_of_1.png")  # same pixels, same PNG bytes
    (tmp_path / "dup.png").write_bytes((tmp_path / "3.png").read_bytes())
    rows = [
        {"image": "1.png", "text": "a", "labels": "a", "split": "train", "patient_id": "p1"},
        {"image": "missing.png", "text": "a", "labels": "a", "split": "train", "patient_id": "p5"},   # row 2
        {"image": "corrupt.png", "text": "a", "labels": "a", "split": "train", "patient_id": "p6"},   # row 3
        {"image": "2.png", "text": "", "labels": "pneumonia", "split": "train", "patient_id": "p2"},  # row 4
        {"image": "4.png", "text": "b", "labels": "b", "split": "test", "patient_id": "p1"},         # row 5 leak
        {"image": "dup.png", "text": "b", "labels": "a|b", "split": "train", "patient_id": "p7"},    # row 6
        {"image": "3.png", "text": "a", "labels": "a", "split": "test", "patient_id": "p3"},         # row 7
        {"image": "", "text": "a", "labels": "a", "split": "holdout", "patient_id": "p8"},           # row 8
    ]
    write_manifest(rows, path)
    report = check_manifest(path)
    by_code = {}
    for f in report.findings:
        by_code.setdefault(f.code, []).append(f)
    assert not report.ok
    assert by_code["missing_file"][0].row == 2 and by_code["missing_file"][0].file.endswith("missing.png")
    assert by_code["unreadable"][0].row == 3 and "corrupt.png" in by_code["unreadable"][0].file
    assert by_code["unknown_label"][0].row == 4 and "pneumonia" in by_code["unknown_label"][0].message
    assert by_code["empty_text"][0].row == 4 and by_code["empty_text"][0].severity == "warning"
    assert by_code["patient_leak"][0].row == 1 and "'p1'" in by_code["patient_leak"][0].message
    assert by_code["label_count"][0].row == 6
    assert {f.row for f in by_code["duplicate_across_splits"]} == {6}
    assert by_code["missing_image_path"][0].row == 8
    assert by_code["unknown_split"][0].row == 8


def test_cli_check_exit_codes_and_report(tmp_path: Path) -> None:
    runner = CliRunner()
    path = _dataset(tmp_path)
    ok = runner.invoke(app, ["data", "check", str(path)])
    assert ok.exit_code == 0, ok.output
    assert "OK" in ok.output
    (tmp_path / "2.png").unlink()
    report = tmp_path / "report.json"
    bad = runner.invoke(app, ["data", "check", str(path), "--report", str(report)])
    assert bad.exit_code == 1
    assert "missing_file" in bad.output
    data = json.loads(report.read_text())
    assert data["n_errors"] == 1 and data["findings"][0]["row"] == 2


def test_patient_split_never_leaks_and_is_stratified(tmp_path: Path) -> None:
    DatasetCard(name="t", task="binary", classes=[ClassInfo("pos"), ClassInfo("neg")]).save(tmp_path / "card.yaml")
    rng = np.random.default_rng(0)
    rows = []
    for p in range(200):
        label = "pos" if p % 5 == 0 else "neg"
        for k in range(int(rng.integers(1, 4))):
            rows.append({"image": f"{p}_{k}.png", "text": label, "labels": label, "patient_id": f"p{p}"})
    write_manifest(rows, tmp_path / "all.csv")
    m = load_manifest(tmp_path / "all.csv")
    assignment = assign_patient_splits(m, {"train": 0.7, "val": 0.1, "test": 0.2}, seed=1)
    assert len(assignment) == 200
    counts = {s: sum(1 for v in assignment.values() if v == s) for s in ("train", "val", "test")}
    assert counts == {"train": 140, "val": 20, "test": 40}
    pos = [g for g in assignment if int(g[1:]) % 5 == 0]
    assert sum(assignment[g] == "test" for g in pos) == 8  # 20 % of the 40 positive patients
    assert assignment == assign_patient_splits(m, {"train": 0.7, "val": 0.1, "test": 0.2}, seed=1)
    assert assignment != assign_patient_splits(m, {"train": 0.7, "val": 0.1, "test": 0.2}, seed=2)

    out = tmp_path / "sub" / "split.csv"
    result = CliRunner().invoke(app, ["data", "split", str(tmp_path / "all.csv"), "--out", str(out), "--seed", "3"])
    assert result.exit_code == 0, result.output
    m2 = load_manifest(out)
    assert m2.card is not None  # card copied beside the new manifest
    assert m2.resolve(m2.samples[0].image[0]).resolve() == (tmp_path / m.samples[0].image[0]).resolve()
    splits_by_patient: dict[str, set[str]] = {}
    for s in m2.samples:
        splits_by_patient.setdefault(s.patient_id, set()).add(s.split)
    assert all(len(v) == 1 for v in splits_by_patient.values())


@pytest.mark.parametrize("text", ["0.5,0.5", "0.7,0.2,0.2", "a,b,c", "-0.1,0.6,0.5"])
def test_bad_fractions(text: str) -> None:
    with pytest.raises(ManifestError):
        parse_fractions(text)


def test_split_refuses_to_overwrite_input(tmp_path: Path) -> None:
    path = _dataset(tmp_path)
    result = CliRunner().invoke(app, ["data", "split", str(path), "--out", str(path)])
    assert result.exit_code != 0
