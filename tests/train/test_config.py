"""Training config: YAML + dotted overrides, type coercion, unknown keys listed."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from medvl.errors import ConfigError
from medvl.train.config import build_train_config, incompatible_keys, load_train_config

PROJECT = Path(__file__).resolve().parents[2]


def _write(tmp_path: Path, data: dict) -> Path:
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def test_overrides_are_applied_and_coerced(tmp_path: Path) -> None:
    path = _write(tmp_path, {"optim": {"lr": 0.01}, "train": {"batch_size": 8}})
    # YAML reads "1e-3" as a string and "3" as an int: both must end up typed.
    cfg = load_train_config(path, ["optim.lr=1e-3", "train.max_steps=3", "train.precision=bf16",
                                   "model.overrides.embed_dim=32", "data.cache_dir=null",
                                   "optim.clip_grad_norm=none"])
    assert cfg.optim.lr == pytest.approx(1e-3) and isinstance(cfg.optim.lr, float)
    assert cfg.train.max_steps == 3 and cfg.train.batch_size == 8
    assert cfg.train.precision == "bf16"
    assert cfg.model.overrides == {"embed_dim": 32}
    assert cfg.data.cache_dir is None and cfg.optim.clip_grad_norm is None


def test_out_dir_flag_wins(tmp_path: Path) -> None:
    cfg = load_train_config(_write(tmp_path, {}), ["train.out_dir=a"], out_dir=tmp_path / "b")
    assert cfg.train.out_dir == str(tmp_path / "b")


@pytest.mark.parametrize("override, bad, needle", [
    ("optim.lrr=1", "'lrr' in 'optim'", "valid keys: betas, clip_grad_norm, eps, grad_accum, impl, lr"),
    ("trian.seed=1", "'trian'", "valid keys: data, model, objectives, optim, train"),
])
def test_unknown_key_lists_valid_keys(tmp_path: Path, override: str, bad: str, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_train_config(_write(tmp_path, {}), [override])
    assert needle in str(err.value)
    assert bad in str(err.value)


@pytest.mark.parametrize("override, needle", [
    ("train.precision=fp16", "train.precision"),
    ("train.batch_size=abc", "train.batch_size"),
    ("train.batch_size=0", "train.batch_size"),
    ("optim.lr=-1", "optim.lr"),
    ("data.on_error=ignore", "data.on_error"),
    ("objectives=[]", "objectives"),
    ("train.epochs=0", "train.max_steps"),
])
def test_bad_values_name_the_key(tmp_path: Path, override: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        load_train_config(_write(tmp_path, {}), [override])


@pytest.mark.parametrize("name", ["clip-tiny-synth", "siglip-tiny-synth", "clip-tiny-medmnist"])
def test_shipped_configs_load(name: str) -> None:
    cfg = load_train_config(PROJECT / "configs" / f"{name}.yaml")
    assert cfg.objectives and cfg.train.batch_size > 0


def test_incompatible_keys() -> None:
    a = {"model": {"name": "clip-tiny", "overrides": {}}, "objectives": [{"name": "infonce"}],
         "data": {"image_size": 32, "channels": 1}, "optim": {"lr": 1.0}}
    b = {**a, "optim": {"lr": 2.0}}
    assert incompatible_keys(a, b) == []
    c = {**a, "model": {"name": "siglip-tiny", "overrides": {}}}
    assert incompatible_keys(a, c) == ["model"]


@pytest.mark.parametrize(("preset", "expected"), [("siglip-tiny", "siglip"), ("clip-tiny", "infonce")])
def test_unset_objectives_default_to_the_presets_objective(preset: str, expected: str) -> None:
    """``model.name=siglip-tiny`` with no objectives listed trains with SigLIP (it used to be InfoNCE)."""
    cfg = build_train_config({"model": {"name": preset}, "train": {"max_steps": 1}})
    assert cfg.objectives == [{"name": expected, "weight": 1.0}]
    explicit = build_train_config({"model": {"name": preset}, "objectives": [{"name": "queue"}],
                                   "train": {"max_steps": 1}})
    assert explicit.objectives == [{"name": "queue"}]
    overridden = build_train_config({"model": {"name": "clip-tiny", "overrides": {"objective": "siglip"}},
                                     "train": {"max_steps": 1}})
    assert overridden.objectives[0]["name"] == "siglip"
