"""``medvl eval report-gen``: model + baselines + an external system scored with CIs and paired
tests vs retrieval; prediction files with missing or unknown studies fail with one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medvl.cli.app import app
from medvl.errors import ConfigError, MedvlError
from medvl.evaluate.report_gen import evaluate_report_generation, parse_external, side_by_side_html, summary_rows
from medvl.generate import DecodeConfig


def test_report_gen_scores_systems_and_external_files(caption_run: Path, phantoms: Path, tmp_path: Path) -> None:
    from medvl.data.manifest import load_manifest

    test = [s for s in load_manifest(phantoms).samples if s.split == "test"]
    ext = tmp_path / "other.jsonl"
    ext.write_text("".join(json.dumps({"study_id": s.study_id, "report": s.text}) + "\n" for s in test))
    res = evaluate_report_generation(caption_run, phantoms, systems=("model", "retrieval", "normal"),
                                     external={"oracle": ext}, cfg=DecodeConfig(max_new_tokens=40), n_boot=30,
                                     pred_dir=tmp_path / "preds")
    assert list(res.runs) == ["model", "retrieval", "normal", "oracle"]
    assert res.reference == "retrieval" and set(res.comparisons) == {"model", "normal", "oracle"}
    assert res.runs["oracle"].value("bleu4") == pytest.approx(1.0)  # references scored against themselves
    rows = {r["system"]: r for r in summary_rows(res)}
    assert rows["oracle"]["delta_bleu4"][0] > 0 and "delta_bleu4" not in rows["retrieval"]
    assert (tmp_path / "preds" / "model.jsonl").is_file()
    assert res.speed["model"] > 0

    first = test[0].study_id
    res.reports["oracle"][first] = "<script>alert(1)</script> Large pneumothorax. Cardiomegaly."
    page = side_by_side_html(res, phantoms, "test", max_studies=5)
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert page.count("<img") == 5 and "data:image/png;base64," in page
    assert "chip fp" in page or "chip ok" in page  # the labeler's findings are shown per system

    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps({"study_id": s.study_id, "report": s.text}) + "\n" for s in test[1:]))
    with pytest.raises(MedvlError, match="have no prediction"):
        evaluate_report_generation(None, phantoms, systems=(), external={"x": bad}, n_boot=10)
    bad.write_text(ext.read_text() + json.dumps({"study_id": "ghost", "report": "x"}) + "\n")
    with pytest.raises(MedvlError, match="not in .*ghost"):
        evaluate_report_generation(None, phantoms, systems=(), external={"x": bad}, n_boot=10)


@pytest.mark.slow
def test_report_gen_cli_and_bad_options(caption_run: Path, phantoms: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "rg" / "results.json"
    res = runner.invoke(app, ["eval", "report-gen", "--model", str(caption_run), "--data", str(phantoms),
                              "--systems", "model,normal", "--max-tokens", "30", "--n-boot", "20", "--out", str(out)])
    assert res.exit_code == 0, res.output
    records = json.loads(out.read_text())
    assert {r["model"] for r in records} == {"model", "normal"}
    assert "normal" in json.loads(out.with_name("results.compare.json").read_text())
    assert "Generated vs reference reports" in out.with_name("results.html").read_text()
    with pytest.raises(ConfigError, match="NAME=FILE"):
        parse_external(["nofile"])
    with pytest.raises(ConfigError, match="unknown report system"):
        evaluate_report_generation(caption_run, phantoms, systems=("gpt",))
    with pytest.raises(ConfigError, match="need --model"):
        evaluate_report_generation(None, phantoms, systems=("model",))
