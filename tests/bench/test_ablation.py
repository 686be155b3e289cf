"""The ablation summary on synthetic records: no training, no images, known answers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medvl.bench.ablation import (
    Point,
    ablation_markdown,
    aggregate,
    build_ablation,
    paired_differences,
    paired_text,
    per_seed_values,
    throughput_from_metrics,
    training_cost,
)
from medvl.bench.runner import Job
from medvl.bench.suite import suite_from_dict
from medvl.evaluate.results import EvalResult, MetricRecord, Predictions, make_result, save_results


def _metrics_csv(run_dir: Path, samples_per_s: list[float]) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    rows = ["step,loss,lr,samples_per_s"] + [f"{10 * (i + 1)},1.0,0.001,{v}" for i, v in enumerate(samples_per_s)]
    (run_dir / "metrics.csv").write_text("\n".join(rows) + "\n")
    return run_dir


def test_aggregate_averages_evaluation_seeds_then_takes_mean_sd_over_training_seeds() -> None:
    points = [Point("a", 0, "zs", 0, 0.70), Point("a", 1, "zs", 0, 0.80), Point("a", 2, "zs", 0, 0.90),
              # training seed 0 of the probe has two evaluation seeds: 0.6 and 0.8 -> 0.7 first
              Point("a", 0, "lp", 0, 0.60), Point("a", 0, "lp", 1, 0.80), Point("a", 1, "lp", 0, 0.90),
              Point("a", 2, "lp", 0, float("nan")),  # a NaN point (undefined metric) is left out
              Point("b", 0, "zs", 0, 0.75)]
    out = aggregate(points)
    assert out["a"]["zs"]["mean"] == pytest.approx(0.80)
    assert out["a"]["zs"]["sd"] == pytest.approx(0.10)  # sample sd (ddof 1) of 0.7, 0.8, 0.9
    assert out["a"]["zs"]["n_seeds"] == 3
    assert out["a"]["lp"]["per_seed"] == {"0": pytest.approx(0.70), "1": pytest.approx(0.90)}
    assert out["a"]["lp"]["mean"] == pytest.approx(0.80) and out["a"]["lp"]["sd"] == pytest.approx(np.sqrt(0.02))
    assert out["b"]["zs"] == {"mean": 0.75, "sd": None, "n_seeds": 1, "per_seed": {"0": 0.75}}


def test_paired_differences_use_the_seeds_both_families_have() -> None:
    per_seed = per_seed_values([Point("a", s, "zs", 0, v) for s, v in [(0, 0.80), (1, 0.85), (2, 0.90)]] +
                               [Point("ref", s, "zs", 0, v) for s, v in [(0, 0.78), (1, 0.86), (3, 0.5)]])
    d = paired_differences(per_seed, "a", "ref", "zs")
    assert d is not None and d["n_seeds"] == 2
    assert d["mean_diff"] == pytest.approx((0.02 - 0.01) / 2)
    assert d["sd_diff"] == pytest.approx(np.std([0.02, -0.01], ddof=1))
    assert paired_differences(per_seed, "a", "ref", "other") is None


def test_throughput_drops_the_warmup_line_and_cost_is_relative_to_the_reference(tmp_path: Path) -> None:
    a0 = _metrics_csv(tmp_path / "a0", [10.0, 100.0, 120.0])  # 10: the warm-up interval
    a1 = _metrics_csv(tmp_path / "a1", [5.0, 90.0, 90.0])
    b0 = _metrics_csv(tmp_path / "b0", [1.0, 50.0])
    b1 = _metrics_csv(tmp_path / "b1", [55.0])  # a single logged line is kept
    t = throughput_from_metrics(a0)
    assert t == {"samples_per_s": 110.0, "n_logged": 3, "n_used": 2, "warmup_dropped": True}
    assert throughput_from_metrics(b1)["warmup_dropped"] is False  # type: ignore[index]
    assert throughput_from_metrics(tmp_path / "missing") is None
    cost = training_cost({"a": {0: a0, 1: a1}, "b": {0: b0, 1: b1}, "c": {0: tmp_path / "none"}}, reference="a")
    assert cost["a"]["samples_per_s"] == pytest.approx(100.0) and cost["a"]["relative"] == pytest.approx(1.0)
    assert cost["b"]["samples_per_s"] == pytest.approx(52.5) and cost["b"]["relative"] == pytest.approx(0.525)
    assert cost["b"]["per_seed"] == {"0": 50.0, "1": 55.0}
    assert cost["c"]["samples_per_s"] is None and cost["c"]["relative"] is None


def test_paired_text_reports_count_and_sign_of_significant_seeds() -> None:
    base = {"mean_diff": 0.021, "sd_diff": 0.010, "n_seeds": 3}
    assert paired_text({**base, "n_tested": 3, "n_significant": 2, "n_up": 2, "n_down": 0}) == \
        "+0.021 ± 0.010, 2/3 seeds p<0.05 (all +)"
    assert paired_text({**base, "n_tested": 3, "n_significant": 2, "n_up": 1, "n_down": 1}).endswith("(1 +, 1 −)")
    assert paired_text({**base, "n_tested": 3, "n_significant": 0, "n_up": 0, "n_down": 0}).endswith("0/3 seeds p<0.05")
    assert paired_text({**base, "n_tested": 0}) == "+0.021 ± 0.010, test –"
    assert paired_text(None) == "–"


# ------------------------------------------------------------------------------ build_ablation on stored results
def _preds(rng: np.random.Generator, labels: np.ndarray, signal: float) -> Predictions:
    """Binary predictions whose class-1 score separates the labels with strength ``signal``."""
    s1 = 1 / (1 + np.exp(-(signal * (2 * labels - 1) + rng.normal(0, 1, labels.size))))
    onehot = np.stack([1 - labels, labels], 1).astype(np.float32)
    ids = np.array([f"img{i}" for i in range(labels.size)])
    return Predictions(ids=ids, scores=np.stack([1 - s1, s1], 1), labels=onehot, label_task="binary",
                       classes=["normal", "abnormal"], patient_ids=ids)


def _store(tmp: Path, name: str, results: list[EvalResult]) -> Path:
    return save_results(results, tmp / "results" / f"{name}.json")


def test_build_ablation_from_stored_results(tmp_path: Path) -> None:
    data = {"name": "abl", "datasets": {"d": {"manifest": "x.csv"}},
            "models": {"base": {"train": "c.yaml", "train_seeds": [0, 1]},
                       "better": {"train": "c.yaml", "train_seeds": [0, 1]},
                       "rand": {"encoder": "timm:x"}},
            "tasks": [{"type": "zeroshot", "dataset": "d", "models": ["base", "better"]},
                      {"type": "linear_probe", "dataset": "d", "params": {"fractions": [0.1, 1.0]}},
                      {"type": "retrieval", "dataset": "d", "models": ["base", "better"]},
                      {"type": "grounding", "dataset": "d", "models": ["base", "better"]}],
            "bootstrap": 200}
    suite = suite_from_dict(data)
    zs, lp, rt, gr = suite.tasks
    rng = np.random.default_rng(0)
    labels = (rng.random(300) < 0.4).astype(np.float32)
    entries: list[tuple[Job, Path]] = []
    for fam, signal in (("base", 0.3), ("better", 2.0)):
        for seed in (0, 1):
            model = f"{fam}@{seed}"
            res = make_result(_preds(rng, labels, signal), model, "zeroshot", "d", "test", n_boot=0)
            entries.append((Job(model, zs, 0), _store(tmp_path, f"{model}-zs", [res])))
            probe = []
            for frac in (0.1, 1.0):  # only the largest fraction goes into the ablation
                r = make_result(_preds(rng, labels, signal if frac == 1.0 else 0.0), model, "linear-probe", "d",
                                "test", {"fraction": frac, "variant": f"{frac * 100:g}% labels"}, n_boot=0)
                probe.append(r)
            entries.append((Job(model, lp, 0), _store(tmp_path, f"{model}-lp", probe)))
            recall = 0.5 + (0.1 if fam == "better" else 0.0) + 0.01 * seed
            rec = MetricRecord(model=model, task="retrieval", dataset="d", split="test", metric="i2t_R@10",
                               value=recall)
            entries.append((Job(model, rt, 0), _store(tmp_path, f"{model}-rt", [EvalResult([rec])])))
            # grounding-like: no class scores, per-pair values stored as an extra array (pairable)
            hits = (rng.random(300) < (0.9 if fam == "better" else 0.2)).astype(float)
            gp = Predictions(ids=[f"p{i}" for i in range(300)], scores=np.zeros((300, 0)), labels=np.zeros((300, 0)),
                             label_task="", classes=[], extra={"pointing_game": hits})
            grec = MetricRecord(model=model, task="grounding", dataset="d", split="test", metric="pointing_game",
                                value=float(hits.mean()))
            entries.append((Job(model, gr, 0), _store(tmp_path, f"{model}-gr", [EvalResult([grec], gp)])))
    rand_res = make_result(_preds(rng, labels, 0.1), "rand", "linear-probe", "d", "test", {"fraction": 1.0}, n_boot=0)
    entries.append((Job("rand", lp, 0), _store(tmp_path, "rand-lp", [rand_res])))  # not a family: ignored
    runs = {"base@0": _metrics_csv(tmp_path / "r0", [1, 100]), "base@1": _metrics_csv(tmp_path / "r1", [1, 100]),
            "better@0": _metrics_csv(tmp_path / "r2", [1, 50]), "better@1": _metrics_csv(tmp_path / "r3", [1, 50])}

    ab = build_ablation(suite, entries, runs)
    assert ab is not None and ab["reference"] == "base"
    labels_ = [c["label"] for c in ab["columns"]]
    assert labels_ == ["zeroshot (auroc)", "linear_probe [100% labels] (auroc)", "retrieval (i2t_R@10)",
                       "grounding (pointing_game)"]
    better = ab["families"]["better"]
    assert better["members"] == {"0": "better@0", "1": "better@1"}
    assert better["training"]["relative"] == pytest.approx(0.5)
    rt_id = ab["columns"][2]["id"]
    assert better["cells"][rt_id]["mean"] == pytest.approx(0.605)
    assert better["paired_vs_reference"][rt_id]["mean_diff"] == pytest.approx(0.1)
    assert better["paired_vs_reference"][rt_id]["n_tested"] == 0  # no class predictions: no paired test
    zs_id = ab["columns"][0]["id"]
    zs_paired = better["paired_vs_reference"][zs_id]
    assert zs_paired["n_tested"] == 2 and zs_paired["n_significant"] == 2 and zs_paired["n_up"] == 2
    assert all(v["p_value"] < 0.05 for v in zs_paired["per_seed"].values())
    gr_paired = better["paired_vs_reference"][ab["columns"][3]["id"]]  # paired on the per-pair values
    assert gr_paired["n_tested"] == 2 and gr_paired["n_up"] == 2
    assert ab["families"]["base"]["paired_vs_reference"] == {}
    json.dumps(ab)  # ablation.json must be serialisable as is

    md = "\n".join(ablation_markdown(ab))
    assert "## Ablation (training seeds)" in md and "| base (reference) | 0, 1 | 1.00× (100 samples/s) |" in md
    assert "| better | 0, 1 | 0.50× (50 samples/s) |" in md
    assert "2/2 seeds p<0.05 (all +)" in md and "+0.100 ± 0.000, test –" in md
