"""The ``segment`` bench task: a suite model's tower + trained head, scored like ``medvl eval segment``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medvl.bench.runner import run_suite
from medvl.bench.suite import suite_from_dict


@pytest.mark.slow
def test_segment_task_in_a_suite(tmp_path: Path):
    manifest = str(tmp_path / "ph" / "manifest.csv")
    suite = {
        "name": "seg",
        "datasets": {"ph": {"manifest": manifest, "synth": {"n": 30, "size": 32, "seed": 0}}},
        "models": {"rand": {"encoder": "timm:test_resnet", "options": {"in_chans": 1, "image_size": 32}}},
        "tasks": [{"type": "segment", "dataset": "ph", "params": {"steps": 2, "batch_size": 4, "width": 8}}],
        "seeds": [0],
        "bootstrap": 20,
    }
    outcome = run_suite(suite_from_dict(suite), tmp_path / "bench")
    assert not outcome.failed, outcome.failed
    records = [json.loads(line) for line in (tmp_path / "bench" / "results.jsonl").read_text().splitlines()]
    metrics = {r["metric"] for r in records if r["bench_task"] == "segment"}
    assert {"dice", "iou", "hd95", "nsd"} <= metrics
