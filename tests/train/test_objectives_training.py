"""The literature objectives inside the trainer: they train from a config, and a run that
crashes resumes bit for bit (EMA teacher, feature queue, decoder heads and sampled masks/prompts
are part of the training state)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from trainutil import tiny_config

from medvl.data.synthetic import generate_phantoms
from medvl.errors import ConfigError
from medvl.models import load_model
from medvl.train import checkpoint as ck
from medvl.train.config import build_train_config
from medvl.train.trainer import train

ALL = [{"name": "infonce"}, {"name": "local", "weight": 0.5}, {"name": "mim", "weight": 0.5},
       {"name": "mlm", "weight": 0.5}, {"name": "distill", "queue_size": 16}, {"name": "describe", "weight": 0.5}]


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_phantoms(tmp_path_factory.mktemp("ph"), n=48, size=32, seed=0)


def _cfg(manifest: Path, out: Path, objectives: list[dict], **train: object):
    cfg = tiny_config(manifest, out, objectives=objectives,
                      model={"name": "clip-tiny", "overrides": {
                          "embed_dim": 32, "image": {"kwargs": {"output_stride": 8}},
                          "text": {"width": 32, "layers": 1, "heads": 2, "context_length": 32, "vocab_size": 300}}})
    cfg["data"]["image_size"] = 32
    cfg["train"].update({"max_steps": 6, "ckpt_every": 2, **train})
    return build_train_config(cfg)


class _Crash(RuntimeError):
    pass


def test_all_objectives_together_resume_exactly(phantoms: Path, tmp_path: Path) -> None:
    full = train(_cfg(phantoms, tmp_path / "full", ALL))
    comps = set((tmp_path / "full" / "metrics.csv").read_text().splitlines()[0].split(","))
    assert {"local", "mim", "mlm", "distill", "describe"} <= comps

    def crash(step: int, batch: dict) -> None:
        if step == 5:
            raise _Crash("killed")

    cfg = _cfg(phantoms, tmp_path / "crashed", ALL)
    with pytest.raises(_Crash):
        train(cfg, batch_hook=crash)
    resumed = train(cfg, resume=True)
    assert resumed.step == full.step == 6
    a, b = load_model(full.out_dir / "last"), load_model(resumed.out_dir / "last")
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name
    sa = ck.load_train_state(ck.latest_checkpoint(full.out_dir))["objective"]
    sb = ck.load_train_state(ck.latest_checkpoint(resumed.out_dir))["objective"]
    assert any(k.startswith("losses.distill.teacher.") for k in sa)
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_objectives_needing_own_passes_refuse_ddp_and_describe_needs_a_card(phantoms: Path, tmp_path: Path,
                                                                             tiny_manifest: Path) -> None:
    with pytest.raises(ConfigError, match="card"):
        train(_cfg(tiny_manifest, tmp_path / "nocard", [{"name": "infonce"}, {"name": "describe"}]))
    assert not (tmp_path / "nocard" / "checkpoints").exists()

    from medvl.models import create_model
    from medvl.train.data import build_train_data
    from medvl.train.distributed import DistInfo
    from medvl.train.trainer import _build_objective

    cfg = _cfg(phantoms, tmp_path / "ddp", [{"name": "infonce"}, {"name": "local"}, {"name": "distill"}])
    data = build_train_data(cfg.data)
    model = create_model("clip-tiny", tokenizer_texts=data.train_texts)
    with pytest.raises(ConfigError, match="distill.*single-process"):
        _build_objective(cfg, DistInfo(rank=0, world_size=2), model, data)
    cfg.objectives = [{"name": "infonce"}, {"name": "local"}]  # local needs tokens only: fine with DDP
    assert _build_objective(cfg, DistInfo(rank=0, world_size=2), model, data).needs_tokens


def test_cli_trains_with_local_alignment_and_the_model_grounds(phantoms: Path, tmp_path: Path) -> None:
    """``medvl train`` with a literature objective from the command line, then ``medvl eval grounding``."""
    import json

    from trainutil import write_config
    from typer.testing import CliRunner

    from medvl.cli.app import app

    cfg = _cfg(phantoms, tmp_path / "run", [{"name": "infonce"}]).to_dict()
    config = write_config(tmp_path / "cfg.yaml", cfg)
    runner = CliRunner()
    res = runner.invoke(app, ["train", "--config", str(config), "train.max_steps=3",
                              "objectives=[{name: infonce}, {name: local, weight: 0.5}]"])
    assert res.exit_code == 0, res.output
    metrics = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0]
    assert "local" in metrics.split(",")
    out = tmp_path / "grounding.json"
    res = runner.invoke(app, ["eval", "grounding", "--model", str(tmp_path / "run" / "last"), "--data",
                              str(phantoms), "--split", "train", "--n-boot", "50", "--out", str(out)])
    assert res.exit_code == 0, res.output
    metrics = {r["metric"] for r in json.loads(out.read_text())}
    assert {"pointing_game", "map_auroc"} <= metrics
