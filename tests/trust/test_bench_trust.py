"""``medvl bench`` with a ``trust`` task writes one model card per model and the report links it."""

from __future__ import annotations

import json
from pathlib import Path

from medvl.bench.runner import run_suite
from medvl.bench.suite import suite_from_dict


def test_bench_trust_task_writes_linked_model_cards(toy: dict, tmp_path: Path) -> None:
    suite = suite_from_dict({
        "name": "trust-mini",
        "datasets": {"toy": {"manifest": str(toy["manifest"])}},
        "models": {"clip": {"encoder": str(toy["model"])},
                   "rand": {"encoder": "timm:test_resnet", "options": {"in_chans": 1, "image_size": 28}}},
        "tasks": [{"type": "trust", "dataset": "toy", "models": ["clip", "rand"],
                   "params": {"corruptions": ["gaussian_noise", "bias_field"], "severities": [2, 4],
                              "subgroups": ["sex"], "in_site": "A"}}],
        "seeds": [0],
        "bootstrap": 30,
    }, "test")
    out = tmp_path / "bench"
    outcome = run_suite(suite, out)
    assert not outcome.failed, outcome.failed
    cards = sorted((out / "cards").glob("*.html"))
    assert len(cards) == 2
    md = (out / "leaderboard.md").read_text()
    assert "## Model cards" in md and "cards/clip-trust" in md and "mean_relative_drop" in md
    page = (out / "report.html").read_text()
    assert "id='model-cards'" in page and "href='cards/rand-trust" in page
    rand_card = next(c for c in cards if c.name.startswith("rand")).with_suffix(".md").read_text()
    assert "Not tested: bias_field" in rand_card and "Zero-shot prompt sensitivity" not in rand_card
    recs = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    metrics = {r["metric"] for r in recs if r["bench_model"] == "clip"}
    assert {"auroc", "mean_relative_drop", "worst_site_drop", "ece", "ece_ts", "aurc", "worst_group_gap"} <= metrics
