"""Report-generation evaluation: scores with patient-level CIs, id checks, prediction files, CLI and
paired comparison (`medvl eval compare`) of two prediction files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medvl.cli import main
from medvl.data.manifest import write_manifest
from medvl.errors import ManifestError, MedvlError
from medvl.evaluate.compare import compare_files
from medvl.evaluate.reports import REPORT_METRICS, evaluate_reports, read_predictions
from medvl.text.metrics import bleu, cider_d, rouge_l

REPORTS = [
    "The heart is normal in size. The lungs are clear. No pleural effusion or pneumothorax.",
    "Mild cardiomegaly. Small left pleural effusion with adjacent atelectasis.",
    "No acute cardiopulmonary abnormality.",
    "Right lower lobe consolidation concerning for pneumonia. No pneumothorax.",
    "Stable cardiomegaly with mild pulmonary edema. Small bilateral effusions.",
    "Lungs are hyperinflated. No focal consolidation. Heart size is normal.",
]


def run(args: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code in (0, None)


@pytest.fixture()
def data(tmp_path: Path) -> dict[str, Path]:
    """24 studies of 12 patients (two studies each; study s7 has two views), test and train splits."""
    rows = []
    for i in range(24):
        rows.append({"image": f"img/{i}.png", "text": REPORTS[i % len(REPORTS)], "split": "test" if i < 16 else "train",
                     "patient_id": f"p{i // 2}", "study_id": f"s{i}"})
    rows.append({**rows[7], "image": "img/7b.png"})  # a second view of study s7
    write_manifest(rows, tmp_path / "manifest.csv")
    good = [{"study_id": f"s{i}", "report": REPORTS[i % len(REPORTS)] if i % 3 else REPORTS[(i + 1) % len(REPORTS)]}
            for i in range(16)]
    normal = [{"id": f"s{i}", "text": REPORTS[0]} for i in range(16)]
    for name, items in (("good", good), ("normal", normal)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in items))
    return {"root": tmp_path, "manifest": tmp_path / "manifest.csv", "good": tmp_path / "good.jsonl",
            "normal": tmp_path / "normal.jsonl"}


def test_scores_cis_and_per_sample_values(data: dict[str, Path]) -> None:
    preds = read_predictions(data["good"])
    (res,) = evaluate_reports(preds, data["manifest"], split="test", model_name="m", n_boot=200)
    vals = {r.metric: r for r in res.records}
    assert list(vals) == list(REPORT_METRICS)
    ids = [f"s{i}" for i in range(16)]
    refs = [REPORTS[i % len(REPORTS)] for i in range(16)]
    hyp = [preds[i] for i in ids]
    assert vals["bleu4"].value == pytest.approx(bleu(hyp, refs)["bleu4"])
    assert vals["rouge_l"].value == pytest.approx(rouge_l(hyp, refs)["rouge_l"])
    assert vals["cider_d"].value == pytest.approx(cider_d(hyp, refs)["cider_d"])
    for r in res.records:
        assert r.n == 16 and r.n_groups == 8 and r.split == "test" and r.task == "reports"
        assert r.ci_low is not None and r.ci_high is not None and r.ci_low <= r.value + 1e-9 <= r.ci_high + 2e-9
    assert 0 < vals["ce_f1_micro"].value <= 1 and vals["ce_f1_micro"].per_class is not None
    p = res.predictions
    assert p is not None and p.extra["bleu_stats"].shape == (16, 10) and p.meta["task"] == "reports"
    assert np.array_equal(p.labels, p.scores) is False  # some predictions are wrong


def test_perfect_predictions_score_one(data: dict[str, Path]) -> None:
    preds = {f"s{i}": REPORTS[i % len(REPORTS)] for i in range(16)}
    (res,) = evaluate_reports(preds, data["manifest"], split="test", n_boot=0)
    assert res.value("bleu1") == pytest.approx(1.0) and res.value("rouge_l") == pytest.approx(1.0)
    assert res.value("ce_f1_micro") == pytest.approx(1.0) and res.value("ce_f1_macro") == pytest.approx(1.0)


def test_missing_and_unknown_ids_are_named(data: dict[str, Path]) -> None:
    preds = {f"s{i}": "No effusion." for i in range(16)}
    with pytest.raises(MedvlError, match=r"1 studies of .* have no prediction: s3"):
        evaluate_reports({k: v for k, v in preds.items() if k != "s3"}, data["manifest"], split="test", n_boot=0)
    with pytest.raises(MedvlError, match=r"predicted study ids are not in .*other splits.*s20"):
        evaluate_reports({**preds, "s20": "x"}, data["manifest"], split="test", n_boot=0)
    with pytest.raises(MedvlError, match="not in .*: zz"):
        evaluate_reports({**preds, "zz": "x"}, data["manifest"], split="test", n_boot=0)
    with pytest.raises(ManifestError, match="no rows in split 'val'"):
        evaluate_reports(preds, data["manifest"], split="val", n_boot=0)


def test_rows_without_study_id_use_the_id_column(tmp_path: Path) -> None:
    write_manifest([{"image": "a.png", "text": REPORTS[i], "id": f"r{i}"} for i in range(3)], tmp_path / "m.csv")
    (res,) = evaluate_reports({f"r{i}": REPORTS[i] for i in range(3)}, tmp_path / "m.csv", n_boot=10)
    assert res.value("rouge_l") == pytest.approx(1.0)
    write_manifest([{"image": "a.png", "text": "x", "study_id": "s"}, {"image": "b.png", "text": "y", "study_id": "s"}],
                   tmp_path / "bad.csv")
    with pytest.raises(ManifestError, match="study 's' has a different report"):
        evaluate_reports({"s": "x"}, tmp_path / "bad.csv", n_boot=0)


def test_read_predictions_aliases_and_errors(tmp_path: Path) -> None:
    p = tmp_path / "p.jsonl"
    p.write_text('{"study_id": 1, "report": "a"}\n\n{"id": "2", "prediction": "b"}\n{"id": "3", "text": "c"}\n')
    assert read_predictions(p) == {"1": "a", "2": "b", "3": "c"}
    for body, msg in (('{"study_id": "1"}\n', "needs a study id"), ('{"id": "1", "report": 3}\n', "must be a string"),
                      ('{"id": "1", "report": "a"}\n{"id": "1", "report": "b"}\n', "appears twice"),
                      ("not json\n", "line 1: invalid JSON"), ("", "empty file")):
        p.write_text(body)
        with pytest.raises(MedvlError, match=msg):
            read_predictions(p)
    with pytest.raises(MedvlError, match="not found"):
        read_predictions(tmp_path / "nope.jsonl")


def test_cli_and_paired_compare(data: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    a, b = data["root"] / "a.json", data["root"] / "b.json"
    run(["eval", "reports", "--pred", str(data["good"]), "--data", str(data["manifest"]), "--split", "test",
         "--out", str(a), "--n-boot", "100"])
    run(["eval", "reports", "--pred", str(data["normal"]), "--data", str(data["manifest"]), "--split", "test",
         "--out", str(b), "--n-boot", "100"])
    assert "reports: good.jsonl" in capsys.readouterr().out
    records = json.loads(a.read_text())
    assert {r["metric"] for r in records} == set(REPORT_METRICS) and records[0]["model"] == "good"
    comp = compare_files(a, b, n_boot=100)
    tests = {t.metric: t for t in comp.tests}
    assert {"bleu4", "ce_f1_micro", "rouge_l", "cider_d"} <= set(tests)
    assert tests["bleu4"].value_a == pytest.approx(next(r["value"] for r in records if r["metric"] == "bleu4"))
    assert comp.n_groups == 8
    same = {t.metric: t for t in compare_files(a, a, n_boot=50).tests}
    assert same["bleu4"].delta == 0 and same["rouge_l"].delta == 0
    run(["eval", "compare", str(a), str(b), "--n-boot", "50"])


def test_bad_options_and_meteor_without_java(data: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    preds = {f"s{i}": "No effusion." for i in range(16)}
    with pytest.raises(MedvlError, match="uncertain_as"):
        evaluate_reports(preds, data["manifest"], split="test", uncertain_as="maybe", n_boot=0)
    with pytest.raises(MedvlError, match="section must be"):
        evaluate_reports(preds, data["manifest"], split="test", section="history", n_boot=0)
    import shutil

    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(MedvlError, match="--meteor: METEOR needs"):
        evaluate_reports(preds, data["manifest"], split="test", meteor=True, n_boot=0)


@pytest.mark.slow
def test_meteor_through_pycocoevalcap(data: dict[str, Path]) -> None:
    """METEOR 1.5 (Java, ~30 s to start): the record holds the jar's corpus score and a CI."""
    from medvl.text.metrics import meteor_unavailable

    if meteor_unavailable():
        pytest.skip(meteor_unavailable())
    preds = read_predictions(data["good"])
    (res,) = evaluate_reports(preds, data["manifest"], split="test", meteor=True, n_boot=50)
    rec = next(r for r in res.records if r.metric == "meteor")
    assert 0 < rec.value <= 1 and rec.ci_low is not None and "corpus aggregate" in rec.config["meteor"]
    assert res.predictions is not None and res.predictions.extra["meteor"].shape == (16,)
