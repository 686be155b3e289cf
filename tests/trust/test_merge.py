"""WiSE-FT interpolation and task arithmetic of medvl checkpoints; architecture mismatch is one clear line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medvl.cli import main
from medvl.errors import CheckpointError
from medvl.merge import merge_checkpoints
from medvl.models import create_model, load_model, save_model

TEXTS = ["a bright mass", "normal tissue", "no mass seen"]


def _ckpt(path: Path, seed: int, **overrides) -> Path:
    torch.manual_seed(seed)
    save_model(create_model("clip-tiny", tokenizer_texts=TEXTS, **{"image.image_size": 28, **overrides}), path)
    return path


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("merge")
    return {"a": _ckpt(root / "a", 0), "b": _ckpt(root / "b", 1), "base": _ckpt(root / "base", 2),
            "other": _ckpt(root / "other", 0, **{"embed_dim": 48})}


def _floats(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if v.is_floating_point()}


def test_wise_ft_interpolates_and_endpoints_are_exact(ckpts: dict[str, Path], tmp_path: Path) -> None:
    written = merge_checkpoints(ckpts["a"], ckpts["b"], [0.0, 0.25, 1.0], tmp_path / "m")
    assert [a for a, _ in written] == [0.0, 0.25, 1.0]
    sa, sb = _floats(load_model(ckpts["a"])), _floats(load_model(ckpts["b"]))
    m0, m25, m1 = (_floats(load_model(p)) for _, p in written)
    for k in sa:
        assert torch.equal(m0[k], sa[k]) and torch.equal(m1[k], sb[k])
        assert torch.allclose(m25[k], 0.75 * sa[k] + 0.25 * sb[k], atol=1e-6)
    assert "merge:" in (written[1][1] / "config.yaml").read_text()


def test_task_arithmetic(ckpts: dict[str, Path], tmp_path: Path) -> None:
    (_, path), = merge_checkpoints(ckpts["a"], ckpts["b"], [0.5], tmp_path / "ta", base=ckpts["base"])
    sa, sb, sbase = (_floats(load_model(ckpts[k])) for k in ("a", "b", "base"))
    m = _floats(load_model(path))
    k = next(iter(sa))
    assert torch.allclose(m[k], sa[k] + 0.5 * (sb[k] - sbase[k]), atol=1e-6)


def test_different_architectures_are_refused(ckpts: dict[str, Path], tmp_path: Path,
                                             capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(CheckpointError, match="different architectures.*shape mismatches"):
        merge_checkpoints(ckpts["a"], ckpts["other"], [0.5], tmp_path / "x")
    with pytest.raises(SystemExit) as exc:
        main(["merge", str(ckpts["a"]), str(ckpts["other"]), "--alpha", "0.5", "--out", str(tmp_path / "y")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "cannot merge" in err and len(err.strip().splitlines()) <= 3  # one message (rich may wrap it)
    with pytest.raises(CheckpointError, match="not found"):
        merge_checkpoints(ckpts["a"], tmp_path / "missing", [0.5], tmp_path / "z")


def test_cli_writes_one_checkpoint_per_alpha(ckpts: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["merge", str(ckpts["a"]), str(ckpts["b"]), "--alpha", "0,0.5,1", "--out", str(tmp_path / "c")])
    assert exc.value.code in (0, None)
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["alpha_0", "alpha_0.5", "alpha_1"]


@pytest.mark.slow
def test_wise_curve_is_drawn_in_the_model_card(toy: dict, tmp_path: Path) -> None:
    """merge --data evaluates every alpha; eval robustness --wise puts the curve in the card."""
    import json

    torch.manual_seed(1)
    texts = [r["text"] for r in toy["rows"] if r["split"] == "train"]
    b = save_model(create_model("clip-tiny", tokenizer_texts=texts, **{"image.image_size": 28}), tmp_path / "b")
    out = tmp_path / "wise"
    with pytest.raises(SystemExit) as exc:
        main(["merge", str(toy["model"]), str(b), "--alpha", "0,0.5,1", "--out", str(out), "--data",
              str(toy["manifest"]), "--corruptions", "contrast", "--n-boot", "0"])
    assert exc.value.code in (0, None)
    rows = json.loads((out / "wise.json").read_text())
    assert [r["alpha"] for r in rows] == [0.0, 0.5, 1.0]
    assert all(0 <= r["in_distribution"] <= 1 and r["shifted_sites"] is not None for r in rows)
    card = tmp_path / "card"
    with pytest.raises(SystemExit) as exc:
        main(["eval", "robustness", "-m", str(out / "alpha_0.5"), "-d", str(toy["manifest"]), "--protocol",
              "zeroshot", "--corruptions", "contrast", "--severities", "3", "--n-boot", "0", "--wise",
              str(out / "wise.json"), "--card-out", str(card), "--no-cache"])
    assert exc.value.code in (0, None)
    md = next(card.glob("*.md")).read_text()
    assert "## Weight interpolation (WiSE-FT)" in md and "wise.png" in md
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(SystemExit) as exc:
        main(["eval", "robustness", "-m", str(toy["model"]), "-d", str(toy["manifest"]), "--corruptions", "gamma",
              "--severities", "1", "--n-boot", "0", "--wise", str(tmp_path / "bad.json"), "--no-cache"])
    assert exc.value.code == 2


def test_card_draws_a_wise_curve_and_bad_files_are_refused(tmp_path: Path) -> None:
    """Fast path of the slow test above: a hand-made report with a curve renders its section and figure."""
    import json

    from medvl.bench.model_card import caveats, write_model_card
    from medvl.errors import MedvlError
    from medvl.evaluate.calibration import Interval
    from medvl.evaluate.robustness import RobustnessReport
    from medvl.merge import load_wise_curve

    rows = [{"alpha": a, "metric": "auroc", "clean": 0.7, "in_distribution": 0.6 + 0.2 * a,
             "shifted_sites": 0.7 - 0.1 * a * a, "corrupted": None} for a in (0.0, 0.5, 1.0)]
    (tmp_path / "wise.json").write_text(json.dumps(rows))
    report = RobustnessReport(model="m", dataset="d", split="test", protocol="zeroshot", metric="auroc",
                              label_task="binary", modality="xray", n=10, n_groups=10, clean=Interval(0.7),
                              extras={"wise_curve": load_wise_curve(tmp_path / "wise.json")})
    assert any("most robust mix on other-site AUROC is alpha = 0" in c for c in caveats(report))
    overlapping = [{**r, "shifted_sites_ci": [r["shifted_sites"] - 0.2, r["shifted_sites"] + 0.2]} for r in rows]
    report_ci = RobustnessReport(model="m", dataset="d", split="test", protocol="zeroshot", metric="auroc",
                                 label_task="binary", modality="xray", n=10, n_groups=10, clean=Interval(0.7),
                                 extras={"wise_curve": overlapping})
    assert any("no mix is clearly more robust" in c for c in caveats(report_ci))
    md, html, _ = write_model_card(report, tmp_path / "card", data={})
    assert "## Weight interpolation (WiSE-FT)" in md.read_text() and "wise.png" in html.read_text()
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(MedvlError, match="not a wise.json"):
        load_wise_curve(tmp_path / "bad.json")
