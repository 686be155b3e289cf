"""A miniature ablation end to end: two families x two training seeds of a tiny CLIP -> zero-shot,
linear probe, retrieval, grounding -> the ablation table in leaderboard.md, report.html and
ablation.json; a re-run does no work; adding a training seed trains and evaluates only that member."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medvl.bench.runner import BenchOutcome, run_suite
from medvl.bench.suite import suite_from_dict

from .test_bench_e2e import mini_suite


def ablation_suite(out: Path) -> dict:
    """The existing miniature bench's data and tiny CLIP (4 steps, 32 px), as two families.

    At 32 px the tiny image tower has a 1x1 patch grid, so grounding maps are constant (pointing
    game 0): this checks the plumbing, not the numbers.
    """
    base = mini_suite(out)
    clip = base["models"]["clip"]
    overrides = [*clip["overrides"], "train.log_every=1"]  # several log lines: the warm-up one is left out
    return {
        "name": "mini-ablation",
        "datasets": base["datasets"],
        "models": {
            "plain": {"train": clip["train"], "overrides": overrides, "train_seeds": [0, 1]},
            "hot": {"train": clip["train"], "overrides": [*overrides, "optim.lr=2e-3"], "train_seeds": [0, 1]},
        },
        "tasks": [
            {"type": "zeroshot", "dataset": "ph", "models": ["plain", "hot"]},
            {"type": "linear_probe", "dataset": "ph", "params": {"fractions": [1.0]}},
            {"type": "retrieval", "dataset": "ph"},
            {"type": "grounding", "dataset": "ph"},
        ],
        "seeds": [0],
        "bootstrap": 30,
        "reference": "plain",
    }


@pytest.fixture(scope="module")
def ablation_bench(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, BenchOutcome]:
    out = tmp_path_factory.mktemp("ablation")
    data = ablation_suite(out)
    return out, data, run_suite(suite_from_dict(data), out)


def test_families_train_per_seed_and_produce_the_ablation_table(
        ablation_bench: tuple[Path, dict, BenchOutcome]) -> None:
    out, _data, outcome = ablation_bench
    assert not outcome.failed, outcome.failed
    runs = sorted(p.name.rsplit("-", 1)[0] for p in (out / "models").iterdir())
    assert runs == ["hot-seed0", "hot-seed1", "plain-seed0", "plain-seed1"]  # one run dir per member
    for run in (out / "models").iterdir():
        cfg = (run / "config.yaml").read_text()
        assert f"seed: {run.name.split('-seed')[1].split('-')[0]}" in cfg

    ab = json.loads((out / "ablation.json").read_text())
    assert ab["reference"] == "plain" and list(ab["families"]) == ["plain", "hot"]
    labels = [c["label"] for c in ab["columns"]]
    assert labels == ["zeroshot (auroc)", "linear_probe [100% labels] (auroc)", "retrieval (i2t_R@10)",
                      "grounding (pointing_game)"]
    for fam in ("plain", "hot"):
        info = ab["families"][fam]
        assert info["members"] == {"0": f"{fam}@0", "1": f"{fam}@1"}
        assert all(info["cells"][c["id"]]["n_seeds"] == 2 for c in ab["columns"])
        assert info["training"]["n_runs"] == 2 and info["training"]["samples_per_s"] > 0
    assert ab["families"]["plain"]["training"]["relative"] == pytest.approx(1.0)
    paired = ab["families"]["hot"]["paired_vs_reference"]
    zs = paired[ab["columns"][0]["id"]]
    assert zs["n_seeds"] == 2 and zs["n_tested"] == 2 and set(zs["per_seed"]) == {"0", "1"}
    assert all(0.0 <= v["p_value"] <= 1.0 for v in zs["per_seed"].values())

    md = (out / "leaderboard.md").read_text()
    assert "## Ablation (training seeds)" in md and "### Paired comparison vs `plain`" in md
    assert "| plain (reference) | 0, 1 | 1.00×" in md and "seeds p<0.05" in md
    assert "At a glance" in md and "plain@1" in md  # the per-model content is still there
    page = (out / "report.html").read_text()
    assert "<section id='ablation'>" in page and "table class='ablation paired'" in page


def test_rerun_does_nothing_and_a_new_training_seed_runs_only_its_jobs(
        ablation_bench: tuple[Path, dict, BenchOutcome]) -> None:
    out, data, first = ablation_bench
    again = run_suite(suite_from_dict(data), out)
    assert again.n_run == 0 and again.n_cached == again.n_jobs == first.n_jobs
    data["models"]["hot"]["train_seeds"] = [0, 1, 2]
    grown = run_suite(suite_from_dict(data), out)
    assert grown.n_run == 4 and grown.n_cached == first.n_jobs and not grown.failed
    assert len(list((out / "models").iterdir())) == 5
    ab = json.loads((out / "ablation.json").read_text())
    assert ab["families"]["hot"]["train_seeds"] == [0, 1, 2]
    assert ab["families"]["hot"]["cells"][ab["columns"][0]["id"]]["n_seeds"] == 3
