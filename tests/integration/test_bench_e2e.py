"""A miniature bench end to end: phantoms -> train a tiny CLIP -> every task -> report; a re-run
does no work; a failing task is recorded and the rest still runs; the HTML renders in Chromium."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import medvl.cli  # noqa: F401  registers the commands
from medvl.bench.runner import run_suite
from medvl.bench.suite import suite_from_dict
from medvl.cli.app import app

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")


def mini_suite(out: Path, extra_tasks: list[dict] | None = None) -> dict:
    manifest = str(out / "phantoms" / "manifest.csv")
    return {
        "name": "mini",
        "datasets": {"ph": {"manifest": manifest, "synth": {"n": 80, "size": 32, "seed": 0}}},
        "models": {
            "clip": {"train": str(ROOT / "configs" / "clip-tiny-synth.yaml"),
                     "overrides": [f"data.manifest={manifest}", "data.image_size=32",
                                   "model.overrides.image.image_size=32", "train.max_steps=4",
                                   "train.batch_size=16", "train.progress=false", "train.tensorboard=false",
                                   "train.ckpt_every=4", "optim.warmup_steps=1"]},
            "rand": {"encoder": "timm:test_resnet", "options": {"in_chans": 1, "image_size": 32}},
        },
        "tasks": [
            {"type": "zeroshot", "dataset": "ph"},  # skipped for 'rand': no text tower
            {"type": "retrieval", "dataset": "ph", "models": ["clip"]},
            {"type": "linear_probe", "dataset": "ph", "params": {"fractions": [0.5, 1.0]}},
            {"type": "knn", "dataset": "ph"},
            {"type": "finetune", "name": "supervised", "dataset": "ph", "models": ["rand"],
             "params": {"epochs": 1, "batch_size": 32, "torch_init": True, "normalise": [0.5, 0.5]}},
            {"type": "robustness", "dataset": "ph", "params": {"in_site": "site_a"}},
            *(extra_tasks or []),
        ],
        "seeds": [0],
        "bootstrap": 30,
    }


@pytest.fixture(scope="module")
def finished_bench(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("bench")
    bad = {"type": "robustness", "name": "broken", "dataset": "ph", "models": ["rand"],
           "params": {"in_site": "site_z"}}
    data = mini_suite(out, [bad])
    outcome = run_suite(suite_from_dict(data), out)
    return out, {"outcome": outcome, "data": data}


def test_bench_runs_every_task_and_records_failures(finished_bench: tuple[Path, dict]) -> None:
    out, ctx = finished_bench
    outcome = ctx["outcome"]
    assert [f["task"] for f in outcome.failed] == ["broken"]
    assert "site_z" in outcome.failed[0]["reason"] and "site_a" in outcome.failed[0]["reason"]
    assert any("no text tower" in s["reason"] for s in outcome.skipped)
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    tasks = {(r["bench_model"], r["bench_task"]) for r in records}
    assert tasks == {("clip", "zeroshot"), ("clip", "retrieval"), ("clip", "linear_probe"), ("rand", "linear_probe"),
                     ("clip", "knn"), ("rand", "knn"), ("rand", "supervised"), ("clip", "robustness"),
                     ("rand", "robustness")}
    auroc = [r for r in records if r["metric"] == "auroc"]
    assert all(r["ci_low"] is None or r["ci_low"] <= r["value"] <= r["ci_high"] for r in auroc if r["value"])
    md = (out / "leaderboard.md").read_text()
    for heading in ("At a glance", "zeroshot", "Per-finding AUROC", "linear_probe [50% labels]", "supervised",
                    "Robustness", "Failed jobs"):
        assert heading in md
    assert json.loads((out / "failed.json").read_text())[0]["task"] == "broken"


def test_rerun_does_no_work_and_changed_config_reruns_only_what_changed(finished_bench: tuple[Path, dict]) -> None:
    out, ctx = finished_bench
    data = ctx["data"]
    data["tasks"] = [t for t in data["tasks"] if t.get("name") != "broken"]
    again = run_suite(suite_from_dict(data), out)
    assert again.n_run == 0 and again.n_cached == again.n_jobs and not again.failed
    data["tasks"][3] = {"type": "knn", "dataset": "ph", "params": {"ks": [5]}}  # one task changed
    changed = run_suite(suite_from_dict(data), out)
    assert changed.n_run == 2 and changed.n_cached == changed.n_jobs - 2


def test_cli_bench_validates_before_running(tmp_path: Path) -> None:
    suite = tmp_path / "s.yaml"
    suite.write_text("name: x\ndatasets: {d: {manifest: m.csv}}\nmodels: {m: {encoder: 'timm:x'}}\n"
                     "tasks: [{type: knn, dataset: e}]\n")
    result = CliRunner().invoke(app, ["bench", str(suite), "--out", str(tmp_path / "o")])
    assert result.exit_code != 0
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(not CHROMIUM.exists(), reason=f"needs headless Chromium at {CHROMIUM} (Debian 'chromium')")
def test_report_renders_in_headless_chromium(finished_bench: tuple[Path, dict]) -> None:
    out, _ = finished_bench
    sync_api = pytest.importorskip("playwright.sync_api", reason="the 'playwright' Python package is not installed")
    errors: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--no-first-run", "--disable-sync"])
        for viewport in ({"width": 390, "height": 844}, {"width": 1280, "height": 900}):  # phone, desktop
            page = browser.new_page(viewport=viewport)
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto((out / "report.html").as_uri())
            assert page.locator("table.results").count() >= 8
            assert page.locator("#summary table").count() == 1
            images = page.locator("img[src^='data:image/png;base64,']")
            assert images.count() >= 6  # ROC + reliability plots and retrieval thumbnails
            widths = page.evaluate("Array.from(document.images).map(i => i.naturalWidth)")
            assert all(w > 0 for w in widths)  # every embedded image decodes
            assert "no text tower" in page.inner_text("#problems")
            page.close()
        browser.close()
    assert errors == []
