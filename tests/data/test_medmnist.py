"""MedMNIST conversion: official splits on the real BreastMNIST, synthetic multilabel/3D files, bad files."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from medvl.data.card import load_card
from medvl.data.manifest import load_manifest
from medvl.data.medmnist import (
    SUBSETS,
    build_card,
    convert_medmnist,
    download_npz,
    download_url,
    get_subset,
    load_npz,
    npz_filename,
)
from medvl.errors import ConfigError, ManifestError

NAMES_2D = ["pathmnist", "chestmnist", "dermamnist", "octmnist", "pneumoniamnist", "retinamnist", "breastmnist",
            "bloodmnist", "tissuemnist", "organamnist", "organcmnist", "organsmnist"]
NAMES_3D = ["organmnist3d", "nodulemnist3d", "adrenalmnist3d", "fracturemnist3d", "vesselmnist3d", "synapsemnist3d"]


def _fake_npz(path: Path, shape: tuple[int, ...], labels: dict[str, np.ndarray], seed: int = 0, **overrides) -> Path:
    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {}
    for split, lab in labels.items():
        arrays[f"{split}_images"] = rng.integers(0, 256, size=(len(lab), *shape), dtype=np.uint8)
        arrays[f"{split}_labels"] = lab
    arrays.update(overrides)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez(path, **arrays)
    return path


def _counts(n: int, k: int) -> np.ndarray:
    return (np.arange(n) % k).astype(np.uint8)


def test_table_covers_every_subset_with_captionable_classes() -> None:
    assert sorted(SUBSETS) == sorted(NAMES_2D + NAMES_3D)
    assert [n for n in SUBSETS if SUBSETS[n].is_3d] == NAMES_3D
    for name, s in SUBSETS.items():
        card = build_card(name)  # DatasetCard validation: tasks, templates with {label}, unique classes
        assert card.class_names == s.class_names and len(s.classes) >= 2
        assert all(c.caption_phrases for c in s.classes), name
        assert set(s.n_samples) == {"train", "val", "test"}
        assert set(s.md5) == set(s.sizes), name  # a checksum for every released size
    assert get_subset("chestmnist").task == "multilabel" and len(get_subset("chestmnist").classes) == 14
    retina = build_card("retinamnist")
    assert retina.task == "multiclass" and retina.extra["ordinal"] is True
    assert get_subset("breastmnist").class_names == ["malignant", "normal, benign"]
    assert get_subset("organmnist3d").class_names[0] == "liver"  # 3D label order differs from 2D
    assert get_subset("bloodmnist").n_samples == {"train": 11959, "val": 1712, "test": 3421}


def test_urls_and_names() -> None:
    assert download_url("breastmnist") == "https://zenodo.org/records/10519652/files/breastmnist.npz"
    assert download_url("BreastMNIST", 64) == "https://zenodo.org/records/10519652/files/breastmnist_64.npz"
    assert npz_filename("organmnist3d", 64) == "organmnist3d_64.npz"
    with pytest.raises(ConfigError, match="valid sizes: 28, 64"):
        npz_filename("organmnist3d", 128)
    with pytest.raises(ConfigError, match="breastmnist"):
        get_subset("breastmnst")


def test_breastmnist_official_splits_and_class_counts(shared_data: Path, tmp_path: Path) -> None:
    npz = shared_data / "medmnist" / "breastmnist.npz"
    r = convert_medmnist("breastmnist", tmp_path / "bm", size=28, npz=npz, seed=0)
    assert r.split_sizes == {"train": 546, "val": 78, "test": 156} and r.official_sizes_match
    assert r.md5_matches_official is True  # the shared copy is the official file (labels (N, 1))
    assert load_card(r.card).extra["medmnist"]["md5_matches_official"] is True
    with np.load(npz) as z:
        assert z["train_labels"].shape == (546, 1)
    m = load_manifest(r.manifest)
    assert m.card is not None and m.card.task == "binary" and m.classes == ["malignant", "normal, benign"]
    expected = {"train": (147, 399), "val": (21, 57), "test": (42, 114)}
    for split, (mal, ben) in expected.items():
        sub = m.split(split)
        idx = sub.class_index()
        assert len(sub) == mal + ben and (idx == 0).sum() == mal and (idx == 1).sum() == ben
    s = m.samples[0]
    assert s.patient_id == "train_0" and s.image == ["images/train_0.png"] and s.modality == "ultrasound"
    assert "breast ultrasound image" in s.text
    with np.load(npz) as z:
        first_test = z["test_images"][0]
    test0 = next(x for x in m.samples if x.patient_id == "test_0")
    np.testing.assert_array_equal(np.asarray(Image.open(m.resolve(test0.image[0]))), first_test)
    card = load_card(r.card)
    assert card.extra["medmnist"]["split_sizes"] == {"train": 546, "val": 78, "test": 156}
    # captions: deterministic per seed, different for another seed
    again = convert_medmnist("breastmnist", tmp_path / "bm2", npz=npz, seed=0)
    other = convert_medmnist("breastmnist", tmp_path / "bm3", npz=npz, seed=1)
    assert r.manifest.read_text() == again.manifest.read_text()
    texts0 = [x.text for x in m.samples]
    texts1 = [x.text for x in load_manifest(other.manifest).samples]
    assert texts0 != texts1 and len(set(texts0)) > 4


def test_official_size_check_catches_a_truncated_file(tmp_path: Path) -> None:
    npz = _fake_npz(tmp_path / "b.npz", (28, 28), {"train": _counts(10, 2), "val": _counts(4, 2),
                                                    "test": _counts(6, 2)})
    with pytest.raises(ManifestError, match=r"b\.npz: split 'train' has 10 samples but official breastmnist has 546"):
        convert_medmnist("breastmnist", tmp_path / "out", npz=npz)
    r = convert_medmnist("breastmnist", tmp_path / "out", npz=npz, check_official_sizes=False)
    assert not r.official_sizes_match and r.split_sizes == {"train": 10, "val": 4, "test": 6}


def test_labels_n_and_n1_give_identical_manifests(tmp_path: Path) -> None:
    labs = {"train": _counts(9, 4), "val": _counts(4, 4), "test": _counts(5, 4)}
    a = _fake_npz(tmp_path / "a.npz", (28, 28), labs)
    b = _fake_npz(tmp_path / "b.npz", (28, 28), {k: v[:, None] for k, v in labs.items()})
    ra = convert_medmnist("octmnist", tmp_path / "a", npz=a, check_official_sizes=False)
    rb = convert_medmnist("octmnist", tmp_path / "b", npz=b, check_official_sizes=False)
    assert ra.manifest.read_text() == rb.manifest.read_text()
    m = load_manifest(ra.manifest)
    np.testing.assert_array_equal(m.split("train").class_index(), labs["train"])


def test_chestmnist_like_multilabel(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    labs = {s: (rng.random((n, 14)) < 0.15).astype(np.uint8) for s, n in (("train", 12), ("val", 4), ("test", 4))}
    labs["train"][0] = 0  # no finding
    labs["train"][1] = 0
    labs["train"][1, [2, 5]] = 1  # effusion + nodule
    npz = _fake_npz(tmp_path / "chest.npz", (28, 28), labs)
    r = convert_medmnist("chestmnist", tmp_path / "c", npz=npz, check_official_sizes=False)
    m = load_manifest(r.manifest)
    assert m.card is not None and m.card.task == "multilabel" and len(m.classes) == 14
    np.testing.assert_array_equal(m.split("train").label_matrix(), labs["train"])
    s0, s1 = m.samples[0], m.samples[1]
    assert s0.labels == {} and ("no finding" in s0.text or "normal" in s0.text)
    assert s1.positive_labels == ["effusion", "nodule"]
    assert " and " in s1.text and ("effusion" in s1.text or "pleural" in s1.text)
    assert r.class_counts["train"]["effusion"] == int(labs["train"][:, 2].sum())


def test_fake_organmnist3d_volumes(tmp_path: Path) -> None:
    labs = {"train": _counts(4, 11), "val": _counts(2, 11), "test": _counts(2, 11)}
    npz = _fake_npz(tmp_path / "organ3d.npz", (28, 28, 28), labs)
    r = convert_medmnist("organmnist3d", tmp_path / "o", size=28, npz=npz, check_official_sizes=False)
    m = load_manifest(r.manifest)
    assert m.samples[0].image == ["images/train_0.npz"] and m.samples[0].positive_labels == ["liver"]
    assert "abdominal CT volume" in m.samples[0].text
    from medvl.data.io import read_image

    with np.load(npz) as z:
        vol = z["train_images"][1]
    np.testing.assert_array_equal(read_image(m.resolve("images/train_1.npz")).array, vol)
    rn = convert_medmnist("organmnist3d", tmp_path / "n", npz=npz, check_official_sizes=False,
                          volume_format="nii.gz")
    mn = load_manifest(rn.manifest)
    assert mn.samples[1].image == ["images/train_1.nii.gz"]
    np.testing.assert_array_equal(read_image(mn.resolve("images/train_1.nii.gz")).array, vol)
    with pytest.raises(ConfigError, match="volume_format"):
        convert_medmnist("organmnist3d", tmp_path / "x", npz=npz, volume_format="mha")


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"val_labels": None}, r"missing key 'val_labels'"),
        ({"train_labels": np.zeros(3, np.uint8)}, r"key 'train_labels' has 3 rows but 'train_images' has 6"),
        ({"test_labels": np.full(4, 7, np.uint8)}, r"key 'test_labels'.*label 7 .*outside 0\.\.1"),
        ({"val_images": np.zeros((4, 28), np.uint8)}, r"key 'val_images'.*shape"),
        ({"train_labels": np.zeros((6, 3), np.uint8)}, r"key 'train_labels'.*shape"),
        ({"train_images": np.full((6, 28, 28), 300.0)}, r"key 'train_images'.*uint8"),
        ({"test_images": np.zeros((4, 32, 32), np.uint8)}, r"different image sizes"),
    ],
)
def test_bad_npz_names_file_and_key(tmp_path: Path, overrides: dict, match: str) -> None:
    npz = _fake_npz(tmp_path / "bad.npz", (28, 28), {"train": _counts(6, 2), "val": _counts(4, 2),
                                                      "test": _counts(4, 2)}, **overrides)
    with pytest.raises(ManifestError, match=match) as info:
        load_npz(npz, "breastmnist")
    assert "bad.npz" in str(info.value)
    with pytest.raises(ManifestError, match=match):
        convert_medmnist("breastmnist", tmp_path / "out", npz=npz, check_official_sizes=False)
    assert not (tmp_path / "out" / "manifest.csv").exists()


def test_unreadable_or_missing_npz(tmp_path: Path) -> None:
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip at all")
    with pytest.raises(ManifestError, match="junk.npz"):
        load_npz(junk, "breastmnist")
    with pytest.raises(ManifestError, match="not found"):
        load_npz(tmp_path / "absent.npz", "breastmnist")
    npz = _fake_npz(tmp_path / "ml.npz", (28, 28), {"train": _counts(4, 2), "val": _counts(2, 2),
                                                     "test": _counts(2, 2)})
    with pytest.raises(ManifestError, match=r"multilabel labels must have shape \(N, 14\)"):
        load_npz(npz, "chestmnist")
    with pytest.raises(ManifestError, match=r"\(N, D, H, W\)"):
        load_npz(npz, "nodulemnist3d")


def test_download_verifies_md5_when_known(tmp_path: Path) -> None:
    src = _fake_npz(tmp_path / "src.npz", (28, 28), {"train": _counts(4, 2), "val": _counts(2, 2),
                                                      "test": _counts(2, 2)})
    good = hashlib.md5(src.read_bytes()).hexdigest()
    dest = download_npz("breastmnist", 28, tmp_path / "dl", url=src.as_uri(), md5=good)
    assert dest.name == "breastmnist.npz" and dest.read_bytes() == src.read_bytes()
    with pytest.raises(ManifestError, match="MD5 mismatch"):
        download_npz("breastmnist", 64, tmp_path / "dl", url=src.as_uri(), md5="0" * 32)
    assert not (tmp_path / "dl" / "breastmnist_64.npz").exists()
    assert not list((tmp_path / "dl").glob("*.part"))
    with pytest.raises(ManifestError, match="cannot download"):
        download_npz("breastmnist", 128, tmp_path / "dl", url=(tmp_path / "nothing.npz").as_uri())


def test_cli_converts_and_reports_errors(tmp_path: Path) -> None:
    from medvl.cli.app import app

    npz = _fake_npz(tmp_path / "p.npz", (28, 28), {"train": _counts(4, 2), "val": _counts(2, 2),
                                                    "test": _counts(2, 2)})
    runner = CliRunner()
    res = runner.invoke(app, ["data", "medmnist", "--name", "pneumoniamnist", "--npz", str(npz), "--out",
                              str(tmp_path / "o"), "--no-check-sizes"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "o" / "manifest.csv").is_file() and (tmp_path / "o" / "card.yaml").is_file()
    res = runner.invoke(app, ["data", "medmnist", "--name", "pneumoniamnist", "--npz", str(npz), "--out",
                              str(tmp_path / "o2")])
    assert res.exit_code != 0 and isinstance(res.exception, ManifestError)
    res = runner.invoke(app, ["data", "medmnist", "pneumoniamnist", "--npz", str(npz), "--out",
                              str(tmp_path / "o3"), "--no-check-sizes"])  # positional name works too
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["data", "medmnist", "--npz", str(npz), "--out", str(tmp_path / "o4")])
    assert res.exit_code == 2 and "give the subset" in res.output
