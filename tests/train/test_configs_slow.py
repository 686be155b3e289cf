"""The shipped recipes train: loss falls on the synthetic phantoms (slow: minutes on a CPU)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from medvl.train.config import load_train_config
from medvl.train.trainer import train

PROJECT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.parametrize("recipe, ratio", [("clip-tiny-synth", 0.85), ("siglip-tiny-synth", 0.95)])
def test_recipe_loss_falls_on_phantoms(recipe: str, ratio: float, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from medvl.data.synthetic import generate_phantoms

    generate_phantoms(tmp_path / "phantoms", n=2000, size=64, seed=0)
    monkeypatch.chdir(tmp_path)  # the recipes read phantoms/manifest.csv relative to the cwd
    cfg = load_train_config(PROJECT / "configs" / f"{recipe}.yaml",
                            ["train.progress=false", "train.tensorboard=false"], out_dir=tmp_path / "run")
    result = train(cfg)
    losses = [v for _, v in result.losses]
    head, tail = sum(losses[:10]) / 10, sum(losses[-20:]) / 20
    assert tail < ratio * head, (head, tail)
    assert os.path.isfile(tmp_path / "run" / "last" / "weights.safetensors")


@pytest.mark.slow
def test_medmnist_recipe_trains(shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from medvl.data.medmnist import convert_medmnist

    convert_medmnist("breastmnist", tmp_path / "data" / "breastmnist", npz=shared_data / "medmnist" / "breastmnist.npz")
    monkeypatch.chdir(tmp_path)  # the recipe reads data/breastmnist/manifest.csv relative to the cwd
    cfg = load_train_config(PROJECT / "configs" / "clip-tiny-medmnist.yaml",
                            ["train.progress=false", "train.tensorboard=false", "train.epochs=8"],
                            out_dir=tmp_path / "run")
    result = train(cfg)
    losses = [v for _, v in result.losses]
    assert sum(losses[-8:]) / 8 < 0.95 * sum(losses[:8]) / 8, losses
