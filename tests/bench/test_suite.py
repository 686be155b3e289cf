"""Suite files are validated before anything runs: every unknown name is reported with the choices."""

from __future__ import annotations

from pathlib import Path

import pytest

from medvl.bench.store import ResultStore, dataset_fingerprint, stable_hash
from medvl.bench.suite import load_suite, suite_from_dict
from medvl.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]

BASE = {
    "name": "t",
    "datasets": {"d": {"manifest": "x.csv"}},
    "models": {"m": {"encoder": "timm:test_resnet"}},
    "tasks": [{"type": "knn", "dataset": "d"}],
}


def _with(**changes: object) -> dict:
    data = {k: (dict(v) if isinstance(v, dict) else list(v) if isinstance(v, list) else v) for k, v in BASE.items()}
    data.update(changes)
    return data


def test_shipped_suites_are_valid() -> None:
    suite = load_suite(ROOT / "configs" / "bench-synth.yaml")
    assert set(suite.models) == {"clip-tiny", "random-init"}
    assert {t.type for t in suite.tasks} >= {"zeroshot", "linear_probe", "finetune", "robustness"}


@pytest.mark.parametrize(
    "data, match",
    [
        (_with(modles={}), r"unknown key\(s\) 'modles'; valid keys: bootstrap, datasets, device, models, name"),
        (_with(tasks=[{"type": "segmentation", "dataset": "d"}]), r"unknown task type 'segmentation'; valid task "
                                                                 r"types: zeroshot, retrieval, linear_probe"),
        (_with(tasks=[{"type": "knn", "dataset": "nope"}]), r"unknown dataset 'nope'; valid datasets: d"),
        (_with(tasks=[{"type": "knn", "dataset": "d", "models": ["x"]}]), r"unknown model 'x'; valid models: m"),
        (_with(tasks=[{"type": "knn", "dataset": "d", "prams": {}}]), r"unknown config key 'prams' in 'tasks\[0\]'"),
        (_with(models={"m": {"encoder": "a", "train": "b"}}), "exactly one of 'encoder' or 'train'"),
        (_with(models={"m": {"encodr": "a"}}), r"unknown config key 'encodr' in 'models.m'"),
        (_with(seeds=[]), "'seeds' must be a non-empty list"),
        (_with(tasks=[]), "'tasks' is missing or empty"),
    ],
)
def test_invalid_suites_name_the_problem(data: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        suite_from_dict(data)


def test_hashes_are_stable_and_content_based(tmp_path: Path) -> None:
    assert stable_hash({"a": 1, "b": [1, 2]}) == stable_hash({"b": [1, 2], "a": 1})
    assert stable_hash({"a": 1}) != stable_hash({"a": 2})
    (tmp_path / "m.csv").write_text("image\na.png\n")
    fp1 = dataset_fingerprint(tmp_path / "m.csv")
    (tmp_path / "card.yaml").write_text("name: x\n")
    fp2 = dataset_fingerprint(tmp_path / "m.csv")
    assert fp1 != fp2
    store = ResultStore(tmp_path)
    assert not store.has("k")
    store.mark_failed("k", {"reason": "boom"})
    assert not store.has("k") and store.failed_path("k").is_file()


@pytest.mark.parametrize("name", ["ablation-phantoms", "ablation-breastmnist"])
def test_shipped_ablation_suites_are_valid_and_their_training_configs_build(name: str) -> None:
    """Every variant of the shipped ablations parses, names known objectives and builds its config."""
    from medvl.objectives import build_objective
    from medvl.train.config import load_train_config

    suite = load_suite(ROOT / "configs" / f"{name}.yaml")
    families = {m.split("@")[0] for m in suite.models}
    assert "clip" in families and len(families) >= 5
    assert all(len([m for m in suite.models if m.startswith(f + "@")]) >= 3 for f in families)
    for spec in suite.models.values():
        cfg = load_train_config(ROOT / spec.train, list(spec.overrides))
        build_objective(cfg.objectives)
        assert cfg.model.overrides["image"]["kwargs"]["output_stride"] == 8  # one tower for every variant
