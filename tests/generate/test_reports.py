"""Report writing from a checkpoint trained with the caption objective: batched greedy equals one
by one on the real decoder, beam and sampling run, the CLI writes JSONL keyed by study id for a
manifest or one image, and bad requests fail with one line. Baselines write a report per study."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from medvl.cli.app import app
from medvl.data.manifest import load_manifest
from medvl.errors import CheckpointError, ConfigError
from medvl.generate import DecodeConfig, GenerationError, generate_reports, load_captioner
from medvl.generate.baselines import most_frequent_normal_report, render_labels
from medvl.generate.reports import Generation, ReportRun, finish_reports
from medvl.generate.run import run_system


def test_captioner_batched_greedy_equals_single_and_reports_are_keyed_by_study(caption_run: Path,
                                                                               phantoms: Path) -> None:
    cap = load_captioner(caption_run)
    manifest = load_manifest(phantoms)
    run = generate_reports(cap, manifest, "test", DecodeConfig(max_new_tokens=24), batch_size=8)
    test_ids = [s.study_id for s in manifest.samples if s.split == "test"]
    assert list(run.reports) == test_ids
    assert all(r.strip() for r in run.reports.values())
    one = generate_reports(cap, manifest, "test", DecodeConfig(max_new_tokens=24), batch_size=1)
    assert one.reports == run.reports
    words = " ".join(run.reports.values()).lower()
    assert "findings" in words or "impression" in words or "no" in words  # it learned the report vocabulary
    beams = generate_reports(cap, manifest, "test", DecodeConfig(method="beam", num_beams=2, max_new_tokens=24))
    sampled = generate_reports(cap, manifest, "test", DecodeConfig(method="sample", top_p=0.9, max_new_tokens=24))
    assert list(beams.reports) == list(sampled.reports) == test_ids
    images = torch.rand(2, 1, 32, 32)
    g_beam = cap.generate(images, DecodeConfig(method="beam", num_beams=3, max_new_tokens=20))
    g_greedy = cap.generate(images, DecodeConfig(max_new_tokens=20))
    assert all(b.score >= g.score - 1e-4 for b, g in zip(g_beam, g_greedy, strict=True))


@pytest.mark.slow
def test_generate_cli_manifest_and_single_image(caption_run: Path, phantoms: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "pred.jsonl"
    res = runner.invoke(app, ["generate", "--model", str(caption_run), "--data", str(phantoms), "--out", str(out),
                              "--method", "beam", "--beams", "2", "--max-tokens", "30"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    manifest = load_manifest(phantoms)
    assert [r["study_id"] for r in rows] == [s.study_id for s in manifest.samples if s.split == "test"]
    image = phantoms.parent / manifest.samples[0].image[0]
    res = runner.invoke(app, ["generate", "--model", str(caption_run), "--image", str(image)])
    assert res.exit_code == 0, res.output
    row = json.loads(res.stdout.strip().splitlines()[-1])
    assert row["study_id"] == image.stem and row["report"]
    res = runner.invoke(app, ["generate", "--model", str(caption_run), "--data", str(phantoms), "--system",
                              "normal", "--out", str(tmp_path / "normal.jsonl")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["generate", "--model", str(caption_run), "--image", str(image), "--system", "retrieval",
                              "--train-data", str(phantoms)])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout.strip().splitlines()[-1])["report"] in {s.text for s in manifest.samples}
    res = runner.invoke(app, ["generate", "--model", str(caption_run), "--image", str(image), "--system", "retrieval"])
    assert res.exit_code != 0 and "--train-data" in str(res.exception)


def test_baselines_write_one_report_per_study(caption_run: Path, phantoms: Path) -> None:
    manifest = load_manifest(phantoms)
    test_ids = [s.study_id for s in manifest.samples if s.split == "test"]
    train_reports = {s.text for s in manifest.samples if s.split == "train"}
    retrieval = run_system("retrieval", caption_run, data=phantoms, split="test")
    assert list(retrieval.reports) == test_ids
    assert set(retrieval.reports.values()) <= train_reports  # copied from a training study
    normal = run_system("normal", caption_run, data=phantoms)
    assert len(set(normal.reports.values())) == 1
    text = most_frequent_normal_report(manifest)
    normals = [s for s in manifest.samples if s.split == "train" and s.positive_labels in ([], ["no finding"])]
    assert sum(" ".join(s.text.split()) == text for s in normals) >= 1
    template = run_system("template", caption_run, data=phantoms)
    assert list(template.reports) == test_ids
    assert all(r.startswith("FINDINGS:") for r in template.reports.values())
    assert render_labels(["nodule"], ["nodule", "pneumothorax", "no finding"]) == \
        "FINDINGS: Nodule is present. No pneumothorax. IMPRESSION: Nodule."


def test_bad_requests_fail_with_one_line(caption_run: Path, phantoms: Path, tmp_path: Path) -> None:
    cap = load_captioner(caption_run)
    with pytest.raises(ConfigError, match="longer than this decoder"):
        generate_reports(cap, phantoms, "test", DecodeConfig(max_new_tokens=500))
    run = ReportRun({})
    with pytest.raises(GenerationError, match="study s9: the generated report is empty"):
        finish_reports(["s9"], [Generation([], -1.0, True)], lambda toks: "", run)
    finish_reports(["s1"], [Generation([5, 6], -1.0, False)], lambda toks: "cut off", run)
    assert run.truncated == ["s1"]
    with pytest.raises(CheckpointError, match="without the 'caption' objective"):
        from medvl.train.config import build_train_config
        from medvl.train.trainer import train

        cfg = {"data": {"manifest": str(phantoms), "image_size": 32, "channels": 1},
               "model": {"name": "clip-tiny", "overrides": {"embed_dim": 16, "text": {"width": 16, "layers": 1,
                                                                                      "heads": 2}}},
               "objectives": [{"name": "infonce"}],
               "train": {"max_steps": 1, "batch_size": 8, "device": "cpu", "out_dir": str(tmp_path / "plain"),
                         "threads": 1, "progress": False, "tensorboard": False}}
        train(build_train_config(cfg))
        load_captioner(tmp_path / "plain")
    with pytest.raises(CheckpointError, match="not found"):
        load_captioner(tmp_path / "nope")
    runner = CliRunner()
    res = runner.invoke(app, ["generate", "--model", str(caption_run)])
    assert res.exit_code != 0 and "exactly one of --data" in str(res.exception or res.output)


@pytest.mark.slow
def test_caption_decoder_answers_questions_generatively(caption_run: Path, phantoms: Path) -> None:
    from medvl.data.vqa_synth import generate_vqa
    from medvl.evaluate.vqa import answer_with_captioner, evaluate_vqa, load_vqa

    manifest, items = load_vqa(generate_vqa(phantoms, pairs=0.0), "test")
    items = items[:40]
    answers = answer_with_captioner(load_captioner(caption_run), manifest, items)
    assert set(answers) == {it.id for it in items}
    res = evaluate_vqa(items, answers, n_boot=20, config={"mode": "generate"})
    assert 0.0 <= res.value("accuracy_all") <= 1.0


def test_normal_baseline_on_real_iu_xray_reports(shared_data: Path, tmp_path: Path) -> None:
    """Report-only real data (no labels, no images): the labeler picks a normal report; it is scored."""
    import csv

    from medvl.evaluate.reports import evaluate_reports
    from medvl.generate.baselines import normal_reports, reads_normal

    data = json.loads((shared_data / "real" / "iu_xray_reports" / "reports.json").read_text())
    rows = [{"image": "none.png", "text": r["report"], "split": split, "patient_id": r["id"], "study_id": r["id"]}
            for split, n in (("train", 300), ("val", 40)) for r in data[split][:n]]
    path = tmp_path / "iu.csv"
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    run = normal_reports(load_manifest(path), "val", "train")
    texts = set(run.reports.values())
    assert len(run.reports) == 40 and len(texts) == 1 and reads_normal(texts.pop())
    res = evaluate_reports(run.reports, path, split="val", n_boot=20)[0]
    assert 0 < res.value("rouge_l") < 1
