"""Result records round-trip through JSON + npz; compare works from the files alone."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medvl.errors import MedvlError
from medvl.evaluate.compare import compare_files, comparison_table
from medvl.evaluate.results import Predictions, load_results, make_result, save_results
from medvl.evaluate.stats import delong_test, mcnemar_test


def _preds(signal: float, seed: int, n: int = 200, ids: list[str] | None = None) -> Predictions:
    rng = np.random.default_rng(100)  # same labels and patients for every model
    y = rng.integers(0, 2, n)
    patients = np.array([f"p{i // 2}" for i in range(n)])
    noise = np.random.default_rng(seed).normal(size=n)
    p1 = 1 / (1 + np.exp(-(signal * (2 * y - 1) + noise)))
    return Predictions(ids=ids or [f"img{i}.png" for i in range(n)], scores=np.stack([1 - p1, p1], 1),
                       labels=np.eye(2)[y], label_task="binary", classes=["benign", "malignant"],
                       patient_ids=patients, rows=np.arange(1, n + 1))


def test_records_and_predictions_round_trip(tmp_path: Path) -> None:
    preds = _preds(1.5, seed=0)
    res = make_result(preds, model="m1", task="zeroshot", dataset="toy", split="test", n_boot=100)
    out = save_results(res, tmp_path / "r.json")
    rows = json.loads(out.read_text())
    assert {r["metric"] for r in rows} == {"auroc", "accuracy", "balanced_accuracy", "f1", "ece"}
    for key in ("model", "task", "dataset", "split", "metric", "value", "ci_low", "ci_high", "n", "n_groups",
                "config", "created", "predictions"):
        assert key in rows[0]
    assert rows[0]["n"] == 200 and rows[0]["n_groups"] == 100
    assert (tmp_path / rows[0]["predictions"]).is_file()
    [back] = load_results(out)
    assert back.predictions is not None
    np.testing.assert_array_equal(back.predictions.scores, preds.scores)
    np.testing.assert_array_equal(back.predictions.patient_ids, preds.patient_ids)
    assert back.predictions.classes == ["benign", "malignant"]
    assert back.value("auroc") == pytest.approx(res.value("auroc"))
    auc = next(r for r in back.records if r.metric == "auroc")
    assert auc.ci_low < auc.value < auc.ci_high
    assert set(auc.per_class) == {"benign", "malignant"}


def test_compare_from_files(tmp_path: Path) -> None:
    a, b = _preds(2.0, seed=1), _preds(0.3, seed=2)
    save_results(make_result(a, "strong", "zeroshot", "toy", "test", n_boot=0), tmp_path / "a.json")
    # B stored in a different sample order: compare must align by id
    order = np.random.default_rng(0).permutation(b.n)
    b_shuffled = Predictions(ids=b.ids[order], scores=b.scores[order], labels=b.labels[order], label_task="binary",
                             classes=b.classes, patient_ids=b.patient_ids[order])
    save_results(make_result(b_shuffled, "weak", "zeroshot", "toy", "test", n_boot=0), tmp_path / "b.json")
    comp = compare_files(tmp_path / "a.json", tmp_path / "b.json", n_boot=300)
    by = {(t.metric, t.method): t for t in comp.tests}
    boot = by[("auroc", "paired bootstrap")]
    assert boot.delta > 0.2 and boot.p_value < 0.01
    y = a.labels[:, 1] == 1
    ref = delong_test(y, a.scores[:, 1], b.scores[:, 1])
    assert by[("auroc", "DeLong")].p_value == pytest.approx(ref.p_value)
    mc = [t for t in comp.tests if t.method.startswith("McNemar")][0]
    ref_mc = mcnemar_test(a.scores.argmax(1) == a.labels.argmax(1), b.scores.argmax(1) == b.labels.argmax(1))
    assert mc.p_value == pytest.approx(ref_mc.p_value)
    assert comp.n_groups == 100
    assert comparison_table(comp).row_count == len(comp.tests)
    # comparing against the npz directly works too
    comp2 = compare_files(tmp_path / "a.predictions.npz", tmp_path / "b.json", n_boot=50, metrics=["auroc"])
    assert any(t.method == "DeLong" for t in comp2.tests)


def test_compare_refuses_different_samples(tmp_path: Path) -> None:
    a = _preds(1.0, seed=1)
    b = _preds(1.0, seed=2, ids=[f"other{i}.png" for i in range(200)])
    save_results(make_result(a, "a", "zeroshot", "toy", "test", n_boot=0), tmp_path / "a.json")
    save_results(make_result(b, "b", "zeroshot", "toy", "test", n_boot=0), tmp_path / "b.json")
    with pytest.raises(MedvlError, match="not on the same samples"):
        compare_files(tmp_path / "a.json", tmp_path / "b.json")


def test_compare_refuses_different_labels(tmp_path: Path) -> None:
    a = _preds(1.0, seed=1)
    b = _preds(1.0, seed=2)
    b.labels[:5] = b.labels[:5, ::-1]
    save_results(make_result(a, "a", "zeroshot", "toy", "test", n_boot=0), tmp_path / "a.json")
    save_results(make_result(b, "b", "zeroshot", "toy", "test", n_boot=0), tmp_path / "b.json")
    with pytest.raises(MedvlError, match="different labels for 5"):
        compare_files(tmp_path / "a.json", tmp_path / "b.json")


def test_multi_run_file_needs_a_choice(tmp_path: Path) -> None:
    runs = [make_result(_preds(1.0, seed=s), "m", "linear-probe", "toy", "test", config={"fraction": f}, n_boot=0)
            for s, f in ((1, 0.1), (2, 1.0))]
    out = save_results(runs, tmp_path / "lp.json")
    assert len(load_results(out)) == 2
    with pytest.raises(MedvlError, match="holds 2 runs"):
        compare_files(out, out)
    comp = compare_files(out, out, run_a=1, run_b=0, n_boot=50)
    assert comp.n == 200
