"""Long checks on real data (``pytest -m slow``): BreastMNIST fine-tuning and probe accuracy at scale."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow
BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def test_breastmnist_finetune_short_protocol(shared_data: Path, tmp_path: Path) -> None:
    """timm ResNet-18 at 28 px, MedMNIST protocol cut to 6 epochs: clearly better than chance."""
    from medvl.data.manifest import load_manifest
    from medvl.data.medmnist import convert_medmnist
    from medvl.evaluate.finetune import finetune, protocol_config

    convert_medmnist("breastmnist", tmp_path / "bm", npz=shared_data / "medmnist" / "breastmnist.npz")
    manifest = load_manifest(tmp_path / "bm" / "manifest.csv")
    cfg = protocol_config("medmnist", epochs=6)
    assert cfg.milestones == (3, 4)  # 50/75 of 100 scaled to 6 epochs (round half to even)
    [res] = finetune("timm:resnet18", manifest, cfg, seeds=[0], n_boot=100,
                     encoder_kwargs={"in_chans": 1, "image_size": 28})
    assert res.records[0].n == 156
    assert res.value("auroc") > 0.72


def test_torch_probe_matches_sklearn_at_scale() -> None:
    """20k x 512, 10 classes: accuracy within 0.5 points of sklearn's LogisticRegression."""
    from sklearn.linear_model import LogisticRegression

    from medvl.evaluate.linear_probe import TorchLogisticRegression

    sys.path.insert(0, str(BENCH))
    from linear_probe import synthetic  # the benchmark's data

    xtr, xte, ytr, yte = synthetic()
    acc_sk = float((LogisticRegression(C=1.0, max_iter=1000).fit(xtr, ytr).predict(xte) == yte).mean())
    acc_t = float((TorchLogisticRegression(C=1.0).fit(xtr, ytr).predict(xte) == yte).mean())
    assert 0.4 < acc_sk < 0.9
    assert abs(acc_t - acc_sk) <= 0.005
    assert np.isfinite(acc_t)
