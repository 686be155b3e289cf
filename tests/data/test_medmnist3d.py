"""The official VesselMNIST3D file (../shared/data/medmnist/vesselmnist3d.npz: 28^3 volumes, labels
(N, 1), 1,335/191/382): conversion, ``medvl data check`` on the converted manifest, and a 3D image
tower forward pass on converted volumes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import medvl.cli  # noqa: F401  registers the commands
from medvl.cli.app import app
from medvl.data.manifest import load_manifest

SIZES = {"train": 1335, "val": 191, "test": 382}


@pytest.fixture(scope="module")
def vessel(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    npz = shared_data / "medmnist" / "vesselmnist3d.npz"
    if not npz.is_file():
        pytest.skip(f"needs {npz} (absent on this machine)")
    out = tmp_path_factory.mktemp("vessel3d")
    res = CliRunner().invoke(app, ["data", "medmnist", "--name", "vesselmnist3d", "--npz", str(npz),
                                   "--out", str(out)])
    assert res.exit_code == 0, res.output
    return {"npz": npz, "out": out, "manifest": out / "manifest.csv", "output": " ".join(res.output.split())}


def test_conversion_matches_the_official_file(vessel: dict) -> None:
    assert "official split sizes: yes; file matches the official MD5" in vessel["output"]
    m = load_manifest(vessel["manifest"])
    assert m.card is not None and m.card.task == "binary" and m.classes == ["vessel", "aneurysm"]
    assert {s: len(m.split(s)) for s in SIZES} == SIZES
    with np.load(vessel["npz"]) as z:
        labels = z["test_labels"]
        volume = z["test_images"][5]
    assert labels.shape == (382, 1)  # the official (N, 1) layout
    test = m.split("test")
    np.testing.assert_array_equal(test.class_index(), labels[:, 0])
    from medvl.data.io import read_image

    s5 = next(s for s in test.samples if s.patient_id == "test_5")
    np.testing.assert_array_equal(read_image(m.resolve(s5.image[0])).array, volume)


def test_data_check_passes_on_the_converted_manifest(vessel: dict) -> None:
    res = CliRunner().invoke(app, ["data", "check", str(vessel["manifest"])])
    out = " ".join(res.output.split())
    assert res.exit_code == 0 and "OK: 0 errors" in out, out


def test_3d_tower_forward_on_converted_volumes(vessel: dict) -> None:
    from medvl.data.dataset import ManifestDataset, collate_samples
    from medvl.models import create_model

    m = load_manifest(vessel["manifest"])
    ds = ManifestDataset(m, split="test", image_size=32, channels=1)
    batch = collate_samples([ds[i] for i in range(4)])
    assert batch["image"].shape == (4, 1, 32, 32, 32)
    torch.manual_seed(0)
    model = create_model("clip3d-tiny", tokenizer_texts=[s.text for s in m.samples[:200]], pretrained=False).eval()
    with torch.no_grad():
        img = model.encode_image(batch["image"])
        txt = model.encode_text(*model.tokenizer(batch["text"]).values())
    assert img.shape == (4, 64) and txt.shape == (4, 64) and torch.isfinite(img).all()
    assert not torch.allclose(img[0], img[1])  # the tower reads the volume: different vessels, different codes
    with torch.no_grad():  # one volume alone gives its batch row (eval mode: no batch statistics)
        torch.testing.assert_close(model.encode_image(batch["image"][2:3])[0], img[2], atol=1e-4, rtol=1e-4)


def test_volume_labels_n_and_n1_give_identical_manifests(tmp_path: Path) -> None:
    """Loaders accept (N,) and (N, 1) labels for volumes too (the official files use (N, 1))."""
    from medvl.data.medmnist import convert_medmnist

    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 6), ("val", 2), ("test", 3)):
        arrays[f"{split}_images"] = rng.integers(0, 255, (n, 28, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 2).astype(np.uint8)
    np.savez(tmp_path / "flat.npz", **arrays)
    np.savez(tmp_path / "col.npz", **{k: v[:, None] if k.endswith("labels") else v for k, v in arrays.items()})
    a = convert_medmnist("vesselmnist3d", tmp_path / "a", npz=tmp_path / "flat.npz", check_official_sizes=False)
    b = convert_medmnist("vesselmnist3d", tmp_path / "b", npz=tmp_path / "col.npz", check_official_sizes=False)
    assert a.manifest.read_text() == b.manifest.read_text()
    np.testing.assert_array_equal(load_manifest(b.manifest).split("train").class_index(), arrays["train_labels"])
