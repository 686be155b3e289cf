"""A label the card does not know (``nodul`` for ``nodule``) must stop every entry point with the
same one-line error ``medvl data check`` gives (row, label, known labels), or, with on_error=skip,
be skipped and written to the skip report; a patient in two splits stops evaluation.

Before the fix the typo row was read as negative for every class, silently.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import medvl.cli  # noqa: F401  registers the commands
from medvl.cli.app import app
from medvl.data.check import check_manifest
from medvl.errors import ManifestError

TYPO_ROW = 3  # 1-based data row whose labels become 'nodul'


def _rewrite(path: Path, edit) -> None:
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    edit(rows)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


@pytest.fixture(scope="module")
def typo(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """24 phantoms at 32 px whose row 3 (a train row) says 'nodul'; a random clip-tiny saved beside."""
    import torch

    from medvl.data.manifest import load_manifest
    from medvl.data.synthetic import generate_phantoms
    from medvl.models import create_model, save_model

    root = tmp_path_factory.mktemp("typo")
    manifest = generate_phantoms(root / "data", n=24, size=32, seed=0)

    def edit(rows: list[dict]) -> None:
        rows[TYPO_ROW - 1]["labels"] = "nodul"
        rows[TYPO_ROW - 1]["split"] = "train"

    _rewrite(manifest, edit)
    torch.manual_seed(0)
    model = create_model("clip-tiny", tokenizer_texts=[s.text for s in load_manifest(manifest).samples],
                         pretrained=False)
    save_model(model, root / "model")
    finding = next(f for f in check_manifest(manifest, verify_images=False).errors if f.code == "unknown_label")
    return {"root": root, "manifest": manifest, "model": root / "model", "message": finding.message,
            "row": finding.row}


def _expect(text: str, typo: dict) -> None:
    assert f"row {TYPO_ROW}: {typo['message']}" in text, text


def test_data_check_wording_names_row_label_and_known_labels(typo: dict) -> None:
    assert typo["row"] == TYPO_ROW
    assert "'nodul'" in typo["message"] and "known: nodule, pleural effusion" in typo["message"]


def test_training_data_refuses_and_skip_mode_reports(typo: dict, tmp_path: Path) -> None:
    from medvl.train.config import DataConfig
    from medvl.train.data import build_train_data

    cfg = DataConfig(manifest=str(typo["manifest"]), image_size=32)
    with pytest.raises(ManifestError) as exc:
        build_train_data(cfg, out_dir=tmp_path)
    _expect(str(exc.value), typo)

    cfg.on_error = "skip"
    data = build_train_data(cfg, out_dir=tmp_path)
    assert data.skipped_labels == 1
    assert TYPO_ROW not in [s.row for s in data.dataset.samples]
    entries = [json.loads(line) for line in (tmp_path / "skipped_images.jsonl").read_text().splitlines()]
    assert [(e["row"], e["code"]) for e in entries] == [(TYPO_ROW, "unknown_label")]
    assert entries[0]["reason"] == typo["message"]
    assert data.skipped_images() == 0  # an unknown label is not an unreadable image
    data.report_label_skips()  # idempotent: the row is not written twice
    assert len((tmp_path / "skipped_images.jsonl").read_text().splitlines()) == 1


def test_trainer_skip_mode_keeps_the_row_in_a_fresh_report(typo: dict, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """The trainer starts a fresh skip report after building the data: the label skips must survive it."""
    from medvl.train.config import build_train_config
    from medvl.train.trainer import train

    out = tmp_path / "run"
    out.mkdir()
    (out / "skipped_images.jsonl").write_text('{"row": 999, "reason": "stale"}\n')
    cfg = build_train_config({
        "data": {"manifest": str(typo["manifest"]), "image_size": 32, "on_error": "skip"},
        "model": {"name": "clip-tiny", "overrides": {"embed_dim": 16, "image": {"image_size": 32},
                                                     "text": {"width": 16, "layers": 1, "heads": 2,
                                                              "context_length": 16, "vocab_size": 200}}},
        "optim": {"warmup_steps": 1},
        "train": {"max_steps": 1, "batch_size": 8, "device": "cpu", "ckpt_every": 100, "out_dir": str(out),
                  "threads": 1, "progress": False, "tensorboard": False},
    })
    result = train(cfg)
    assert result.step == 1 and result.skipped_images == 0
    rows = [json.loads(line)["row"] for line in (out / "skipped_images.jsonl").read_text().splitlines()]
    assert rows == [TYPO_ROW]
    assert "data.on_error=skip: 1 row(s) with labels the card does not know are left out" in \
        " ".join(capsys.readouterr().err.split())  # the run log goes to stderr


def test_dataset_refuses_by_default(typo: dict) -> None:
    from medvl.data.dataset import ManifestDataset

    with pytest.raises(ManifestError) as exc:
        ManifestDataset(typo["manifest"], split="train", image_size=32)
    _expect(str(exc.value), typo)


@pytest.mark.parametrize("command", ["zeroshot", "linear-probe"])
def test_eval_commands_refuse(typo: dict, command: str) -> None:
    res = CliRunner().invoke(app, ["eval", command, "--model", str(typo["model"]), "--data", str(typo["manifest"]),
                                   "--no-cache", "--n-boot", "0"])
    assert isinstance(res.exception, ManifestError), res.output  # medvl's main() prints it and exits 2
    _expect(str(res.exception), typo)


def test_eval_refuses_a_patient_in_two_splits(typo: dict, tmp_path: Path) -> None:
    import shutil

    from medvl.evaluate.features import load_eval_inputs

    data = tmp_path / "data"
    shutil.copytree(typo["manifest"].parent, data)
    manifest = data / "manifest.csv"

    def edit(rows: list[dict]) -> None:
        rows[TYPO_ROW - 1]["labels"] = "nodule"
        train = next(r for r in rows if r["split"] == "train")
        test = next(r for r in rows if r["split"] == "test")
        test["patient_id"] = train["patient_id"]

    _rewrite(manifest, edit)
    with pytest.raises(ManifestError, match=r"manifest\.csv, row \d+: patient 'p\d+' appears in splits test, train"):
        load_eval_inputs(str(typo["model"]), manifest)


def test_bench_job_fails_with_the_message(typo: dict, tmp_path: Path) -> None:
    from medvl.bench.runner import run_suite
    from medvl.bench.suite import suite_from_dict

    suite = suite_from_dict({
        "name": "typo", "datasets": {"ph": {"manifest": str(typo["manifest"])}},
        "models": {"clip": {"encoder": str(typo["model"])}},
        "tasks": [{"type": "zeroshot", "dataset": "ph"}], "seeds": [0], "bootstrap": 0,
    })
    outcome = run_suite(suite, tmp_path / "bench")
    assert len(outcome.failed) == 1, outcome
    _expect(str(outcome.failed[0]["reason"]), typo)


def test_index_build_refuses(typo: dict, tmp_path: Path) -> None:
    pytest.importorskip("faiss")
    from medvl.models.encoder import load_encoder
    from medvl.serve.build import build_index

    with pytest.raises(ManifestError) as exc:
        build_index(typo["model"], typo["manifest"], tmp_path / "idx", encoder=load_encoder(typo["model"]))
    _expect(str(exc.value), typo)
    assert not (tmp_path / "idx").exists()


def test_shard_writing_refuses(typo: dict, tmp_path: Path) -> None:
    pytest.importorskip("webdataset")
    from medvl.train.shards import write_shards

    with pytest.raises(ManifestError) as exc:
        write_shards(typo["manifest"], tmp_path / "shards")
    _expect(str(exc.value), typo)
    assert not (tmp_path / "shards").exists()  # refused before anything is written
