"""The MedMNIST 3D protocol end to end on a tiny fake 3D subset (CLI and library)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from medvl.data.manifest import load_manifest
from medvl.data.medmnist import convert_medmnist
from medvl.evaluate.finetune import PROTOCOLS, finetune, protocol_config, resolve_protocol


@pytest.fixture(scope="module")
def vessel_like(tmp_path_factory):
    """A VesselMNIST3D-shaped npz (8^3 volumes): aneurysm volumes carry a bright blob."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 12), ("val", 8), ("test", 8)):
        y = np.array([i % 2 for i in range(n)], dtype=np.uint8)
        x = rng.integers(0, 60, size=(n, 8, 8, 8), dtype=np.uint8)
        x[y == 1, 2:6, 2:6, 2:6] = 250
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = x, y[:, None]
    root = tmp_path_factory.mktemp("vessel")
    np.savez(root / "vesselmnist3d.npz", **arrays)
    convert_medmnist("vesselmnist3d", root / "data", npz=root / "vesselmnist3d.npz", check_official_sizes=False)
    return root / "data" / "manifest.csv"


def test_medmnist_protocol_on_volumes_is_the_3d_recipe(vessel_like):
    m = load_manifest(vessel_like)
    assert resolve_protocol("medmnist", m) == "medmnist3d"
    assert resolve_protocol("default", m) == "default"
    cfg = PROTOCOLS["medmnist3d"]
    assert (cfg.epochs, cfg.batch_size, cfg.milestones, cfg.lr, cfg.weight_decay) == (100, 32, (50, 75), 1e-3, 0.0)


@pytest.mark.parametrize("spec", [pytest.param("resnet3d:resnet18", marks=pytest.mark.slow), "2.5d:resnet18"])
def test_finetune_volumes_records_epoch_times_and_scores_every_test_volume(vessel_like, spec):
    m = load_manifest(vessel_like)
    cfg = protocol_config("medmnist3d", epochs=2, batch_size=6, shape_transform=True)
    (res,) = finetune(spec, m, cfg, seeds=[0], n_boot=20, encoder_kwargs={"image_size": 8})
    assert res.value("auroc") == res.value("auroc")  # a number, not NaN
    rec = res.records[0]
    assert rec.n == 8
    hist = rec.config["history"]
    assert len(hist) == 2 and all(h["seconds"] > 0 for h in hist)
    assert rec.config["seconds_per_epoch"] > 0 and rec.config["shape_transform"] is True


def test_cli_finetune_volume_encoder(vessel_like, tmp_path):
    from medvl.cli import app

    out = tmp_path / "r.json"
    result = CliRunner().invoke(app, ["eval", "finetune", "--model", "2.5d:resnet18", "--data", str(vessel_like),
                                      "--protocol", "medmnist", "--epochs", "1", "--batch-size", "6",
                                      "--image-size", "8", "--n-boot", "10", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "medmnist3d" in result.output
    recs = json.loads(out.read_text())
    assert recs[0]["config"]["batch_size"] == 6 and recs[0]["config"]["preprocess"]["image_size"] == 8
