"""Confusable pairs in embedding space and MediConfusion pair accuracy of answer files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medvl.errors import ManifestError
from medvl.evaluate.confusable import answer_pair_accuracy, confusable_pairs
from medvl.evaluate.metrics import prepare


def test_finds_the_near_duplicate_pair_with_different_labels() -> None:
    # 0 and 1 are almost the same vector with different labels; 2 and 3 are identical with the same label
    x = np.array([[1, 0, 0], [0.999, 0.04, 0], [0, 1, 0], [0, 1, 0], [0, 0, 1], [0.5, 0.5, 0.7]])
    y = np.array([0, 1, 0, 0, 1, 1])
    scores = np.array([0.2, 0.3, 0.1, 0.2, 0.9, 0.8])  # image 1 is wrong (0.3 for a positive)
    p = prepare(scores, y, "binary")
    r = confusable_pairs(x, p, ids=[f"im{i}" for i in range(6)], threshold=0.99)
    assert r.n_pairs == 1 and r.pairs[0]["a"] == "im0" and r.pairs[0]["b"] == "im1"
    assert r.pair_accuracy == 0.0 and r.pairs[0]["both_right"] is False
    assert r.image_accuracy == pytest.approx(5 / 6)
    auto = confusable_pairs(x, p, quantile=0.9)
    assert "quantile" in auto.threshold_rule and auto.n_pairs >= 1


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_pair_accuracy_needs_both_answers_right(tmp_path: Path) -> None:
    rows = []
    for k in range(10):
        for side in ("a", "b"):
            right = not (k < 4 and side == "b")  # pairs 0-3: one wrong answer each
            rows.append({"image": f"{k}{side}.png", "question": "Is there a mass?", "pair_id": f"p{k}",
                         "prediction": "Yes." if right else "no", "answer": "yes"})
    r = answer_pair_accuracy(_write(tmp_path / "ans.jsonl", rows), n_boot=200)
    assert r.n_pairs == 10 and r.question_accuracy.value == pytest.approx(16 / 20)
    assert r.pair_accuracy.value == pytest.approx(0.6)
    assert r.pair_accuracy.low < 0.6 < r.pair_accuracy.high


def test_bad_answer_files(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="line 1: missing key"):
        answer_pair_accuracy(_write(tmp_path / "a.jsonl", [{"image": "x", "question": "q"}]))
    one = [{"image": "x", "question": "q", "pair_id": "p", "prediction": "a", "answer": "a"}]
    with pytest.raises(ManifestError, match="pair_id 'p' has rows for one image only"):
        answer_pair_accuracy(_write(tmp_path / "b.jsonl", one))
    with pytest.raises(ManifestError, match="already answered on line 1"):
        answer_pair_accuracy(_write(tmp_path / "c.jsonl", one * 2))


def test_pair_accuracy_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from medvl.cli import main

    rows = [{"image": f"{k}{s}", "question": "q", "pair_id": k, "prediction": "a", "answer": "a" if s == "x" else "b"}
            for k in range(3) for s in "xy"]
    with pytest.raises(SystemExit) as exc:
        main(["eval", "pair-accuracy", str(_write(tmp_path / "a.jsonl", rows)), "--n-boot", "20"])
    assert exc.value.code in (0, None)
    out = capsys.readouterr().out
    assert "3 pairs" in out and "pair accuracy 0.000" in out and "question accuracy 0.500" in out
