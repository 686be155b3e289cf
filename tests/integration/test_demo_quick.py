"""`medvl demo --quick`: the main job's whole path in miniature (phantoms -> CLIP -> bench -> report + cards)."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

import medvl.cli  # noqa: F401  registers the commands
from medvl.cli.app import app


def test_quick_demo_runs_every_task_and_links_the_model_cards(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--quick", "--out", str(out)])
    assert result.exit_code == 0, result.output
    failed = out / "failed.json"
    assert not failed.exists() or not json.loads(failed.read_text()), failed.read_text()
    tasks = {json.loads(line)["task"] for line in (out / "results.jsonl").read_text().splitlines() if line.strip()}
    assert {"zeroshot", "retrieval", "linear-probe", "knn", "finetune"} <= tasks, tasks
    cards = sorted((out / "cards").glob("*.html"))
    assert len(cards) == 2, cards  # one model card per model (clip-tiny, random-init)
    # the trained model's evaluations know what it was pretrained on (leakage record carried into `final`)
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line.strip()]
    leak = [r["config"].get("leakage", {}) for r in records if r["model"] == "clip-tiny" and r["task"] != "trust"]
    assert leak and all(x.get("checked") for x in leak), leak[:2]
    report = (out / "report.html").read_text()
    for card in cards:
        assert card.name in report
