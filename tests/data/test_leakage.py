"""Pretraining-evaluation leakage: a checkpoint records what it trained on (content hashes, patient
ids); ``medvl eval`` warns and writes how many evaluated images/patients were seen into the result
JSON; ``medvl data check A --against B`` reports the overlap of any two manifests."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

import medvl.cli  # noqa: F401  registers the commands
from medvl.cli.app import app
from medvl.data import leakage
from medvl.data.check import check_manifest
from medvl.data.manifest import load_manifest


def _rows(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _write(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """24 phantoms (32 px), a clip-tiny trained 2 steps on their train split."""
    from medvl.data.synthetic import generate_phantoms
    from medvl.train.config import build_train_config
    from medvl.train.trainer import train

    root = tmp_path_factory.mktemp("leak")
    manifest = generate_phantoms(root / "data", n=24, size=32, seed=0)
    cfg = build_train_config({
        "data": {"manifest": str(manifest), "image_size": 32},
        "model": {"name": "clip-tiny", "overrides": {"embed_dim": 16, "image": {"image_size": 32},
                                                     "text": {"width": 16, "layers": 1, "heads": 2,
                                                              "context_length": 16, "vocab_size": 200}}},
        "optim": {"warmup_steps": 1},
        "train": {"max_steps": 2, "batch_size": 8, "device": "cpu", "ckpt_every": 2, "out_dir": str(root / "run"),
                  "threads": 1, "progress": False, "tensorboard": False},
    })
    result = train(cfg)
    return {"root": root, "manifest": manifest, "ckpt": result.last_checkpoint}


def test_checkpoint_records_its_training_data(trained: dict) -> None:
    record = json.loads((trained["ckpt"] / leakage.RECORD_NAME).read_text())
    m = load_manifest(trained["manifest"])
    train_rows = [s for s in m.samples if s.split == "train"]
    expected = {leakage.file_hash(m.image_paths(s)[0])[:32] for s in train_rows}
    assert set(record["image_sha256"]) == expected and record["image_sha256"] == sorted(expected)
    assert record["patient_ids"] == sorted({s.patient_id for s in train_rows})
    assert record["manifests"][0]["split"] == "train" and record["manifests"][0]["rows"] == len(train_rows)


def _eval(model: Path, data: Path, split: str, out: Path) -> dict:
    res = CliRunner().invoke(app, ["eval", "zeroshot", "--model", str(model), "--data", str(data), "--split", split,
                                   "--no-cache", "--n-boot", "0", "--out", str(out)])
    assert res.exit_code == 0, res.output
    return json.loads(out.read_text())[0]["config"]["leakage"]


def test_eval_records_images_and_patients_seen(trained: dict, tmp_path: Path) -> None:
    m = load_manifest(trained["manifest"])
    n_train = sum(s.split == "train" for s in m.samples)
    n_test = sum(s.split == "test" for s in m.samples)
    with pytest.warns(UserWarning, match=rf"leakage: {n_train} of {n_train} evaluated images"):
        seen = _eval(trained["ckpt"], trained["manifest"], "train", tmp_path / "train.json")
    assert seen["checked"] and seen["images_seen"] == seen["of"] == n_train
    clean = _eval(trained["ckpt"], trained["manifest"], "test", tmp_path / "test.json")
    assert clean == {**clean, "checked": True, "images_seen": 0, "patients_seen": 0, "of": n_test}

    # a copy of the dataset whose test rows include one training image under another name
    data = tmp_path / "copy"
    shutil.copytree(trained["manifest"].parent, data)
    rows = _rows(data / "manifest.csv")
    src = next(r for r in rows if r["split"] == "train")
    dst = next(r for r in rows if r["split"] == "test")
    shutil.copy(data / src["image"], data / "images" / "renamed.png")
    dst["image"] = "images/renamed.png"
    _write(data / "manifest.csv", rows)
    with pytest.warns(UserWarning, match=r"leakage: 1 of \d+ evaluated images and 0 of"):
        leaked = _eval(trained["ckpt"], data / "manifest.csv", "test", tmp_path / "copy.json")
    assert leaked["images_seen"] == 1 and leaked["patients_seen"] == 0


def test_models_without_a_record_say_so(trained: dict) -> None:
    m = load_manifest(trained["manifest"])
    assert leakage.model_leakage("timm:resnet18", m, "test")["checked"] is False
    assert "no training-data record" in leakage.model_leakage(trained["root"], m, "test")["reason"]


def test_check_against_reports_overlap_across_splits(trained: dict, tmp_path: Path) -> None:
    a = trained["manifest"]
    b_dir = tmp_path / "b"
    b_dir.mkdir()
    (b_dir / "images").mkdir()
    shutil.copy(a.parent / "card.yaml", b_dir / "card.yaml")
    rows = _rows(a)
    train = [r for r in rows if r["split"] == "train"]
    b_rows = []
    for i, r in enumerate(train[:3]):  # three training images copied into B's test split under new names
        shutil.copy(a.parent / r["image"], b_dir / "images" / f"b{i}.png")
        b_rows.append({**r, "image": f"images/b{i}.png", "split": "test", "patient_id": f"other{i}",
                       "mask": "", "mask_labels": ""})
    shutil.copy(a.parent / train[3]["image"], b_dir / "images" / "same.png")  # same split: a duplicate only
    b_rows.append({**train[3], "image": "images/same.png", "patient_id": "other3", "mask": "", "mask_labels": ""})
    b_rows[0]["patient_id"] = train[5]["patient_id"]  # a shared patient: train in A, test in B
    _write(b_dir / "manifest.csv", b_rows)

    report = check_manifest(a, against=b_dir / "manifest.csv")
    images = [f for f in report.findings if f.code == "overlap_image"]
    patients = [f for f in report.findings if f.code == "overlap_patient"]
    assert sorted(f.severity for f in images) == ["error", "error", "error", "warning"]
    [patient] = patients
    assert patient.severity == "error" and f"patient {train[5]['patient_id']!r}" in patient.message
    assert report.against["shared_images"] == 4
    res = CliRunner().invoke(app, ["data", "check", str(a), "--against", str(b_dir / "manifest.csv")])
    out = " ".join(res.output.split())
    assert res.exit_code == 1 and "4 image(s) with identical content" in out and "train/test leakage" in out


def test_hash_cache_reads_no_bytes_the_second_time(trained: dict, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDVL_CACHE_DIR", str(tmp_path / "cache"))
    calls = []
    real = leakage.file_hash
    monkeypatch.setattr(leakage, "file_hash", lambda p: calls.append(p) or real(p))
    m = load_manifest(trained["manifest"])
    first = leakage.hash_samples(m)
    n = len(calls)
    assert n == len(m)
    again = leakage.hash_samples(m)
    assert len(calls) == n and again.by_row == first.by_row


def test_a_run_from_shards_records_the_same_content_hashes(trained: dict, tmp_path: Path) -> None:
    """Tar shards hold each image file's bytes: their record matches the manifest's."""
    pytest.importorskip("webdataset")
    from medvl.train.config import DataConfig
    from medvl.train.data import build_train_data
    from medvl.train.shards import write_shards

    write_shards(trained["manifest"], tmp_path / "shards", shard_size=5)
    from_shards = build_train_data(DataConfig(shards=str(tmp_path / "shards"), image_size=32)).training_record()
    from_manifest = json.loads((trained["ckpt"] / leakage.RECORD_NAME).read_text())
    assert from_shards["image_sha256"] == from_manifest["image_sha256"]
    assert from_shards["patient_ids"] == from_manifest["patient_ids"]
