"""Bench tasks ``report_gen`` and ``vqa``: registered, run through the runner's job path into result
files (one run per report system), and skipped with a reason where they do not apply."""

from __future__ import annotations

from pathlib import Path

import pytest

from medvl.bench.jobs import Job
from medvl.bench.suite import suite_from_dict
from medvl.bench.tasks import get_task, run_job
from medvl.evaluate.results import load_records


def _suite(manifest: Path, tasks: list[dict]) -> object:
    return suite_from_dict({"name": "gen", "datasets": {"ph": {"manifest": str(manifest)}},
                            "models": {"cap": {"encoder": "timm:test_resnet"}}, "tasks": tasks, "seeds": [0],
                            "bootstrap": 20})


@pytest.mark.slow
def test_report_gen_and_vqa_tasks_run_and_skip(caption_run: Path, phantoms: Path, tmp_path: Path) -> None:
    from medvl.data.vqa_synth import generate_vqa

    assert get_task("report_gen").deterministic and get_task("vqa").headline == "accuracy_closed"
    suite = _suite(phantoms, [
        {"type": "report_gen", "dataset": "ph", "params": {"systems": ["model", "normal"], "max_tokens": 30}},
        {"type": "vqa", "dataset": "ph", "params": {"answer_type": "closed"}},
    ])
    out = tmp_path / "results" / "rg.json"
    assert run_job(Job("cap", suite.tasks[0], 0), str(caption_run), phantoms, suite, out) is None
    recs = load_records(out)
    assert {r.config.get("variant") for r in recs} == {"model", "normal"}
    assert all(r.model == "cap" for r in recs) and any(r.metric == "bleu4" for r in recs)
    assert (tmp_path / "results" / "rg.reports" / "model.jsonl").is_file()
    assert (tmp_path / "results" / "rg.reports" / "side_by_side.html").is_file()
    assert {r.config.get("side_by_side") for r in recs} == {"results/rg.reports/side_by_side.html"}  # report links it

    vqa_out = tmp_path / "results" / "vqa.json"
    assert run_job(Job("cap", suite.tasks[1], 0), str(caption_run), phantoms, suite, vqa_out).startswith(
        "no VQA questions")
    generate_vqa(phantoms, pairs=0.2)
    assert run_job(Job("cap", suite.tasks[1], 0), str(caption_run), phantoms, suite, vqa_out) is None
    assert any(r.metric == "accuracy_closed" for r in load_records(vqa_out))
