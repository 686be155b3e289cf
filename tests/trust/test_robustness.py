"""``medvl eval robustness`` end to end on a two-site toy set with a real (untrained) tiny CLIP."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medvl.cli import main
from medvl.errors import ConfigError
from medvl.evaluate.metrics import prepare
from medvl.evaluate.robustness import (
    ci_blocker,
    robustness_eval,
    select_cells,
    site_results,
    subgroup_analysis,
)


def run(args: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code in (0, None)


def test_linear_probe_report_has_every_section(toy: dict, tmp_path: Path) -> None:
    r = robustness_eval(str(toy["model"]), toy["manifest"], "linear-probe",
                        corruptions=["gaussian_noise", "bias_field"], severities=[1, 5],
                        subgroups=["sex", "scanner"], n_boot=50, cache_dir=toy["cache"])
    assert r.n == 32 and r.n_groups == 16 and r.modality == "ultrasound"
    assert [(c.corruption, c.severity) for c in r.cells] == [("gaussian_noise", 1), ("gaussian_noise", 5)]
    assert "these images are ultrasound" in r.skipped["bias_field"]
    for c in r.cells:  # drop is clean minus corrupted, relative drop consistent with it
        assert c.drop.value == pytest.approx(r.clean.value - c.value.value)
        assert c.relative_drop == pytest.approx(c.drop.value / r.clean.value)
    assert r.mean_relative_drop == pytest.approx(np.mean([c.relative_drop for c in r.cells]))
    assert r.in_site == "A" and {s.site: s.role for s in r.sites} == {"A": "in", "B": "shift"}
    sex, scanner = r.subgroups
    assert {g.group for g in sex.groups} == {"F", "M"}
    m = next(g for g in sex.groups if g.group == "M")
    assert m.n == 10 and np.isnan(m.value.low) and "too small for a CI" in m.note
    assert "has one group ('S1')" in scanner.note
    assert r.calibration is not None and r.calibration.temperature > 0
    # corrupted features were cached: a second run re-encodes nothing and gives identical cells
    r2 = robustness_eval(str(toy["model"]), toy["manifest"], "linear-probe", corruptions=["gaussian_noise"],
                         severities=[1, 5], site_shift=False, n_boot=50, cache_dir=toy["cache"])
    assert [c.value.value for c in r2.cells] == [c.value.value for c in r.cells]
    assert r2.site_note == "site shift not requested"


def test_zeroshot_cli_writes_json_and_model_card(toy: dict, tmp_path: Path) -> None:
    out, card = tmp_path / "rob.json", tmp_path / "card"
    run(["eval", "robustness", "-m", str(toy["model"]), "-d", str(toy["manifest"]), "--protocol", "zeroshot",
         "--corruptions", "contrast,jpeg", "--severities", "2,4", "--subgroups", "sex", "--n-boot", "40",
         "--cache-dir", str(toy["cache"]), "--out", str(out), "--card-out", str(card)])
    d = json.loads(out.read_text())
    assert d["protocol"] == "zeroshot" and len(d["cells"]) == 4
    assert d["site_note"].startswith("zero-shot")
    md = next(card.glob("*.md")).read_text()
    assert "## Corruptions" in md and "## Site shift" in md and "## Calibration" in md
    assert "pretraining-evaluation overlap: not recorded" in md
    assert "Clean AUROC on toy/test (zeroshot)" in md
    assert "Not tested" not in md  # no corruption was skipped here
    assert "## Zero-shot prompt sensitivity" in md and "phrase #2" in md
    assert "## Confusable pairs" in md and d["extras"]["confusable_pairs"]["n_images"] == 32
    html = next(card.glob("*.html")).read_text()
    assert "<table>" in html and "reliability.png" in html
    assert (card / next(card.glob("*.reliability.png")).name).stat().st_size > 1000


def test_bad_input_is_one_clear_line(toy: dict, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["eval", "robustness", "-m", str(toy["model"]), "-d", str(toy["manifest"]), "--subgroups", "age",
              "--corruptions", "gamma", "--severities", "1", "--n-boot", "0", "--cache-dir", str(toy["cache"])])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "subgroup column 'age' is not in the manifest" in err and "sex" in err
    with pytest.raises(ConfigError, match="--in-site 'C' is not a site"):
        robustness_eval(str(toy["model"]), toy["manifest"], "zeroshot", corruptions=["gamma"], severities=[1],
                        in_site="C", n_boot=0, cache_dir=toy["cache"])
    with pytest.raises(ConfigError, match="--protocol must be one of"):
        robustness_eval(str(toy["model"]), toy["manifest"], "lp")
    with pytest.raises(ConfigError, match="unknown corruption 'fog'"):
        select_cells(["fog"], [1], "ct", 2)


def test_subgroup_and_site_statistics_known_answers() -> None:
    rng = np.random.default_rng(0)
    n = 200
    y = rng.integers(0, 2, n)
    s = np.where(y == 1, 0.8, 0.2) + rng.normal(0, 0.05, n)  # perfect ranking in group "a"
    group = np.array(["a"] * 150 + ["b"] * 50)
    s[150:] = rng.uniform(0, 1, 50)  # chance in group "b"
    p = prepare(np.clip(s, 0, 1), y, "binary")
    res = subgroup_analysis(p, group, "g", "auroc", None, n_boot=200)
    assert res.worst == "b" and res.best == "a"
    assert res.gap.value > 0.3 and res.gap.low > 0.1  # a real gap with a CI that excludes 0
    sites = site_results(p, group, "a", "auroc", None, n_boot=200)
    assert sites[1].drop.value == pytest.approx(res.gap.value)
    tiny = prepare(np.array([0.2, 0.9, 0.4]), np.array([0, 1, 1]), "binary")
    assert "too small for a CI" in ci_blocker(tiny, None)


def test_finetune_protocol_scores_every_corrupted_copy(toy: dict) -> None:
    r = robustness_eval("timm:test_resnet", toy["manifest"], "finetune", corruptions=["contrast"], severities=[1, 5],
                        n_boot=20, finetune_options={"epochs": 1}, encoder_kwargs={"in_chans": 1, "image_size": 28},
                        extras=())
    assert r.protocol == "finetune" and len(r.cells) == 2 and r.predictions.n == 32
    assert r.config["head"]["epochs_run"] == 1 and r.in_site == "A"
    assert r.calibration is not None and not r.calibration.notes  # temperature fitted on the val predictions


def test_manifest_without_sites_says_so(toy: dict) -> None:
    from medvl.data.manifest import write_manifest

    rows = [{k: v for k, v in r.items() if k != "site"} for r in toy["rows"]]
    path = write_manifest(rows, toy["root"] / "manifest_nosite.csv")
    r = robustness_eval(str(toy["model"]), path, "zeroshot", corruptions=["gamma"], severities=[1], n_boot=0,
                        extras=())
    assert r.sites == [] and "no site column" in r.site_note
    assert np.isnan(r.clean.low)  # n_boot=0: no interval, and none is faked


@pytest.mark.parametrize("task", ["binary", "multiclass", "multilabel"])
def test_vectorised_bootstrap_auroc_equals_the_loop(task: str) -> None:
    from medvl.evaluate.metrics import metric_value
    from medvl.evaluate.robustness import _Boot

    rng = np.random.default_rng(3)
    n, k = 60, 3
    s = np.round(rng.uniform(size=(n, k)), 1)  # rounded: many ties
    if task == "binary":
        y, scores = rng.integers(0, 2, n), s[:, 0]
    elif task == "multiclass":
        y, scores = rng.integers(0, k, n), s / s.sum(1, keepdims=True)
    else:
        y = rng.integers(0, 2, (n, k)).astype(float)
        y[rng.uniform(size=(n, k)) < 0.1] = np.nan
        scores = s
    p = prepare(scores, y, task)
    boot = _Boot(n, np.repeat(np.arange(n // 3), 3), 200, seed=1)
    loop = np.array([metric_value("auroc", p.take(i)) for i in boot.idx])
    np.testing.assert_allclose(boot.values(p, "auroc"), loop, rtol=1e-12, atol=1e-12)


def test_worst_group_ignores_groups_too_small_for_a_ci() -> None:
    rng = np.random.default_rng(1)
    n = 202
    y = np.r_[rng.integers(0, 2, 200), 0, 1]
    s = np.where(y == 1, 0.7, 0.3) + rng.normal(0, 0.15, n)
    s[200], s[201] = 0.9, 0.1  # a 2-image group ranked exactly wrong: AUROC 0
    group = np.array(["a"] * 100 + ["b"] * 100 + ["tiny"] * 2)
    res = subgroup_analysis(prepare(np.clip(s, 0, 1), y, "binary"), group, "g", "auroc", None, n_boot=100)
    tiny = next(g for g in res.groups if g.group == "tiny")
    assert tiny.value.value == 0.0 and "too small" in tiny.note
    assert res.worst in ("a", "b") and not np.isnan(res.gap.low) and "1 smaller group" in res.note


def test_every_requested_corruption_skipped_is_said_not_crashed(toy: dict, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    run(["eval", "robustness", "-m", str(toy["model"]), "-d", str(toy["manifest"]), "--protocol", "zeroshot",
         "--corruptions", "bias_field,window_shift", "--n-boot", "0", "--no-site-shift", "--no-cache",
         "--out", str(out), "--card-out", str(tmp_path / "card")])
    d = json.loads(out.read_text())
    assert d["cells"] == [] and set(d["skipped"]) == {"bias_field", "window_shift"}
    md = next((tmp_path / "card").glob("*.md")).read_text()
    assert "mean relative drop n/a" in md and "Not tested: window_shift" in md
