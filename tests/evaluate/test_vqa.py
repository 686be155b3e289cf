"""Phantom VQA: the questions agree with the ground truth, twin images differ only where their
answers do, scoring is right on hand-made answers, CLIP-style ranking, generative answering and
external answer files all score through the CLI, paired tests run on stored results, and bad
input fails with one line."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from medvl.cli.app import app
from medvl.data.synthetic import generate_phantoms
from medvl.data.vqa_synth import generate_vqa
from medvl.errors import ManifestError, MedvlError
from medvl.evaluate.vqa import (
    evaluate_vqa,
    load_vqa,
    match_closed,
    normalize_answer,
    read_answer_file,
    token_f1,
    token_recall,
)


@pytest.fixture(scope="module")
def vqa(tmp_path_factory: pytest.TempPathFactory) -> Path:
    manifest = generate_phantoms(tmp_path_factory.mktemp("ph"), n=40, size=32, seed=1)
    return generate_vqa(manifest, pairs=0.5)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory, vqa: Path) -> Path:
    from medvl.models import create_model, save_model

    texts = [r["question"] + " " + r["answer"] for r in csv.DictReader(vqa.open())]
    model = create_model("clip-tiny", pretrained=False, tokenizer_texts=texts, embed_dim=16,
                         **{"image.image_size": 32, "text.width": 16, "text.layers": 1, "text.heads": 2,
                            "text.context_length": 32, "text.vocab_size": 200})
    return save_model(model, tmp_path_factory.mktemp("m") / "ckpt")


def test_questions_agree_with_the_ground_truth_and_twins_differ_only_locally(vqa: Path) -> None:
    rows = list(csv.DictReader(vqa.open()))
    truth = {r["study_id"]: r for r in csv.DictReader((vqa.parent / "manifest.csv").open())}
    kinds = {r["question_type"] for r in rows}
    assert {"presence", "laterality", "size", "count", "change", "finding"} <= kinds
    for r in rows:
        if r["study_id"].endswith("_twin"):
            continue
        gt = truth[r["study_id"]]
        if r["question"] == "Is there a pleural effusion?":
            assert (r["answer"] == "yes") == ("pleural effusion" in gt["labels"].split("|"))
        if r["question"] == "On which side is the pleural effusion?":
            assert r["answer"] == gt["effusion_side"]
        if r["question_type"] == "change":
            assert int(gt["study_index"]) > 1 and r["prior_image"]
    pairs: dict[str, list[dict]] = {}
    for r in rows:
        if r["pair_id"]:
            pairs.setdefault(r["pair_id"], []).append(r)
    assert pairs and all(len(p) == 2 and p[0]["answer"] != p[1]["answer"] and p[0]["question"] == p[1]["question"]
                         for p in pairs.values())
    for p in list(pairs.values())[:5]:
        a = np.asarray(Image.open(vqa.parent / p[0]["image"]), float)
        b = np.asarray(Image.open(vqa.parent / p[1]["image"]), float)
        assert a.shape == b.shape and 0 < np.abs(a - b).mean() < 20  # near-identical, not identical


def test_answer_matching_and_scores() -> None:
    assert normalize_answer("The Left, side.") == "left side"
    assert match_closed("Yes, there is.", ["yes", "no"]) == "yes"
    assert match_closed("yes or no", ["yes", "no"]) is None  # ambiguous answers are wrong
    assert match_closed("Right", ["left", "right"]) == "right"
    assert token_f1("pleural effusion", "nodule, pleural effusion") == pytest.approx(0.8)
    assert token_recall("pleural effusion", "nodule, pleural effusion") == pytest.approx(2 / 3)
    assert token_f1("", "") == 1.0 and token_recall("x", "") == 0.0


def test_evaluate_perfect_and_flipped_answers(vqa: Path) -> None:
    _, items = load_vqa(vqa, "test")
    perfect = evaluate_vqa(items, {it.id: it.answer for it in items}, n_boot=50)
    assert all(r.value == pytest.approx(1.0) for r in perfect.records)
    names = {r.metric for r in perfect.records}
    assert {"accuracy_closed", "exact_match_open", "token_f1_open", "recall_open", "pair_accuracy"} <= names
    flipped = {it.id: ("no" if it.answer == "yes" else "yes") if it.question_type == "presence" else it.answer
               for it in items}
    res = evaluate_vqa(items, flipped, n_boot=50)
    assert res.value("accuracy[presence]") == 0.0
    closed = [it for it in items if it.answer_type == "closed"]
    expected = np.mean([it.question_type != "presence" for it in closed])
    assert res.value("accuracy_closed") == pytest.approx(expected)
    rec = next(r for r in res.records if r.metric == "accuracy_closed")
    assert rec.ci_low <= rec.value <= rec.ci_high and rec.n_groups < rec.n  # patients, not questions
    assert res.predictions.extra["correct"].shape == (len(items),)


def test_external_answers_cli_and_paired_compare(vqa: Path, tiny_model: Path, tmp_path: Path) -> None:
    _, items = load_vqa(vqa, "test")
    good = tmp_path / "medgemma.jsonl"
    lines = [json.dumps({"id": it.id, "answer": it.answer if i % 3 else "unsure"}) for i, it in enumerate(items)]
    lines[0] = json.dumps({"study_id": items[0].study_id, "question": items[0].question, "answer": items[0].answer})
    good.write_text("\n".join(lines) + "\n")
    runner = CliRunner()
    res = runner.invoke(app, ["eval", "vqa", "--data", str(vqa), "--answers", str(good), "--n-boot", "50",
                              "--out", str(tmp_path / "ext.json")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["eval", "vqa", "--data", str(vqa), "--model", str(tiny_model), "--n-boot", "50",
                              "--out", str(tmp_path / "clip.json")])
    assert res.exit_code == 0, res.output
    recs = json.loads((tmp_path / "clip.json").read_text())
    acc = next(r for r in recs if r["metric"] == "accuracy_closed")
    assert 0.0 <= acc["value"] <= 1.0 and acc["config"]["mode"] == "rank"
    res = runner.invoke(app, ["eval", "compare", str(tmp_path / "ext.json"), str(tmp_path / "clip.json"),
                              "--n-boot", "50", "--out", str(tmp_path / "cmp.json")])
    assert res.exit_code == 0, res.output
    tests = {t["metric"] for t in json.loads((tmp_path / "cmp.json").read_text())["tests"]}
    assert {"correct", "token_f1", "recall"} <= tests


def test_bad_answer_files_and_manifests_fail_with_one_line(vqa: Path, tmp_path: Path) -> None:
    _, items = load_vqa(vqa, "test")
    f = tmp_path / "a.jsonl"
    f.write_text(json.dumps({"id": "nope", "answer": "yes"}) + "\n")
    with pytest.raises(MedvlError, match="line 1: unknown question id 'nope'"):
        read_answer_file(f, items)
    f.write_text(json.dumps({"id": items[0].id}) + "\n")
    with pytest.raises(MedvlError, match="line 1: no 'answer'"):
        read_answer_file(f, items)
    f.write_text("{not json\n")
    with pytest.raises(MedvlError, match="line 1: not valid JSON"):
        read_answer_file(f, items)
    f.write_text(json.dumps({"id": items[0].id, "answer": "yes"}) + "\n")
    with pytest.raises(MedvlError, match=f"{len(items) - 1} of {len(items)} questions unanswered"):
        read_answer_file(f, items)
    rows = list(csv.DictReader(vqa.open()))
    rows[3]["answer"] = ""
    bad = tmp_path / "vqa.csv"
    with bad.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with pytest.raises(ManifestError, match="row 4: question .* has no answer"):
        load_vqa(bad)
    rows[3]["answer"], rows[3]["answer_type"] = "yes", "multiple"
    with bad.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with pytest.raises(ManifestError, match="row 4: answer_type must be closed or open"):
        load_vqa(bad)


def test_statement_prompts_read_like_reports() -> None:
    from medvl.evaluate.vqa import statement_prompt

    assert statement_prompt("Is there a pleural effusion?", "no") == "no pleural effusion"
    assert statement_prompt("Is there an enlarged heart?", "yes") == "enlarged heart"
    assert statement_prompt("On which side is the nodule?", "left") == "left nodule"
    assert statement_prompt("Compared with the prior study, is the consolidation new, unchanged or resolved?",
                            "resolved") == "resolved consolidation"
    assert statement_prompt("How many abnormal findings are there?", "2") == "How many abnormal findings are there? 2"
