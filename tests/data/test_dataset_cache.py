"""ManifestDataset contract, raise vs skip on a corrupt file, collate, and the memmap cache."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from medvl.data.cache import CacheReader, build_cache
from medvl.data.card import ClassInfo, DatasetCard
from medvl.data.dataset import ManifestDataset, collate_samples
from medvl.data.manifest import load_manifest, write_manifest
from medvl.data.transforms import prepare_uint8
from medvl.errors import ConfigError, ImageReadError, ManifestError


def _png(path: Path, value: int, size: tuple[int, int] = (24, 20), rgb: bool = False) -> str:
    rng = np.random.default_rng(value)
    arr = rng.integers(0, 256, size=(*size, 3) if rgb else size, dtype=np.uint8)
    arr[..., :2] = value  # make images distinguishable
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path.name


@pytest.fixture()
def toy(tmp_path: Path) -> Path:
    """6 rows, CheXpert-style label columns (1/0/-1/blank), one corrupt PNG at row 3, a multi-view row."""
    DatasetCard("toy", "multilabel", [ClassInfo("effusion"), ClassInfo("nodule")]).save(tmp_path / "card.yaml")
    (tmp_path / "img").mkdir()
    for i in range(6):
        _png(tmp_path / "img" / f"{i}.png", 10 * i)
    _png(tmp_path / "img" / "lateral.png", 200)
    (tmp_path / "img" / "2.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated garbage")
    rows = [
        {"image": "img/0.png|img/lateral.png", "text": "left effusion", "effusion": 1, "nodule": "", "split": "train",
         "patient_id": "p0"},
        {"image": "img/1.png", "text": "nodule", "effusion": 0, "nodule": 1, "split": "train", "patient_id": "p1"},
        {"image": "img/2.png", "text": "broken", "effusion": -1, "nodule": 0, "split": "train", "patient_id": "p2"},
        {"image": "img/3.png", "text": "normal", "effusion": 0, "nodule": 0, "split": "train", "patient_id": "p3"},
        {"image": "img/4.png", "text": "val one", "effusion": "", "nodule": "", "split": "val", "patient_id": "p4"},
        {"image": "img/5.png", "text": "uncertain", "effusion": -1, "nodule": 1, "split": "train", "patient_id": "p5"},
    ]
    return write_manifest(rows, tmp_path / "manifest.csv")


def test_sample_contract(toy: Path) -> None:
    ds = ManifestDataset(load_manifest(toy), split="train", image_size=16)
    assert len(ds) == 5 and ds.classes == ["effusion", "nodule"]
    s = ds[0]
    assert set(s) == {"image", "text", "labels", "label_mask", "index", "row", "patient_id"}
    assert s["image"].shape == (1, 16, 16) and s["image"].dtype == torch.float32
    assert -1.0 <= float(s["image"].min()) and float(s["image"].max()) <= 1.0  # mean/std 0.5
    assert s["text"] == "left effusion" and s["index"] == 0 and s["row"] == 1 and s["patient_id"] == "p0"
    assert s["labels"].tolist() == [1.0, 0.0] and s["label_mask"].tolist() == [1.0, 0.0]  # nodule unknown
    last = ds[4]
    assert last["row"] == 6 and last["labels"].tolist() == [-1.0, 1.0] and last["label_mask"].tolist() == [1, 1]
    # multi-view: the first view by default, another with view=1
    def expected(name: str) -> torch.Tensor:
        return prepare_uint8(np.asarray(Image.open(toy.parent / "img" / name)), 20).float() / 255

    first = ManifestDataset(toy, split="train", image_size=20, mean=(0.0,), std=(1.0,))[0]["image"]
    assert torch.equal(first, expected("0.png"))
    lateral = ManifestDataset(toy, split="train", image_size=20, mean=(0.0,), std=(1.0,), view=1)[0]["image"]
    assert torch.equal(lateral, expected("lateral.png")) and not torch.equal(first, lateral)
    rgb = ManifestDataset(toy, split="val", image_size=16, channels=3, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    assert rgb[0]["image"].shape == (3, 16, 16)
    assert ManifestDataset(toy, split=None, image_size=8).samples[4].split == "val"


def test_bad_arguments(toy: Path) -> None:
    with pytest.raises(ConfigError, match="on_error"):
        ManifestDataset(toy, on_error="ignore")
    with pytest.raises(ManifestError, match="no rows in split 'test'"):
        ManifestDataset(toy, split="test")
    with pytest.raises(ConfigError, match="channels"):
        ManifestDataset(toy, channels=2)
    with pytest.raises(IndexError):
        ManifestDataset(toy, split="val", image_size=8)[5]


def test_corrupt_image_raises_with_file_and_row(toy: Path) -> None:
    ds = ManifestDataset(toy, split="train", image_size=16)
    with pytest.raises(ImageReadError) as info:
        ds[2]
    msg = str(info.value)
    assert "2.png" in msg and "row 3" in msg and str(toy) in msg


def test_skip_replaces_reports_and_counts(toy: Path, tmp_path: Path) -> None:
    report = tmp_path / "skips" / "skipped.jsonl"
    ds = ManifestDataset(toy, split="train", image_size=16, on_error="skip", skip_report=report)
    s = ds[2]
    assert s["row"] == 4 and s["index"] == 3  # the next readable sample, deterministically
    assert ds.skipped == 1
    for _ in range(3):
        assert ds[2]["row"] == 4  # same replacement, no duplicate report line
    lines = [json.loads(x) for x in report.read_text().splitlines()]
    assert len(lines) == 1 and lines[0]["row"] == 3 and lines[0]["file"].endswith("2.png") and lines[0]["reason"]
    batch = collate_samples([ds[i] for i in range(len(ds))])
    assert batch["image"].shape == (5, 1, 16, 16) and batch["row"].tolist() == [1, 2, 4, 4, 6]


def test_collate_and_dataloader_pickling(toy: Path) -> None:
    ds = ManifestDataset(toy, split="train", image_size=16, on_error="skip", augment=True)
    clone = pickle.loads(pickle.dumps(ds))
    torch.testing.assert_close(clone[0]["image"], ds[0]["image"])  # augmentation seeded by (seed, epoch, index)
    ds.set_epoch(1)
    assert not torch.equal(clone[0]["image"], ds[0]["image"])
    batch = next(iter(DataLoader(ds, batch_size=4, collate_fn=collate_samples)))
    assert batch["image"].shape == (4, 1, 16, 16) and batch["labels"].shape == (4, 2)
    assert isinstance(batch["text"], list) and batch["patient_id"][0] == "p0" and batch["index"].dtype == torch.long
    mixed = collate_samples([{"a": 1, "t": "x"}, {"a": 2, "t": "y", "extra": 0.5}])
    assert mixed["a"].tolist() == [1, 2] and mixed["extra"] == [None, 0.5]
    with pytest.raises(ValueError, match="different shapes"):
        collate_samples([{"image": torch.zeros(1, 2)}, {"image": torch.zeros(1, 3)}])
    with pytest.raises(ValueError):
        collate_samples([])


def test_cache_round_trip_equals_decoding(toy: Path, tmp_path: Path) -> None:
    index = build_cache(toy, 16, tmp_path / "cache")
    assert index.shape == [6, 16, 16] and [e["row"] for e in index.errors] == [3]
    assert "2.png" in index.errors[0]["file"]
    for split in ("train", "val"):
        cached = ManifestDataset(toy, split=split, image_size=16, cache_dir=tmp_path / "cache", on_error="skip")
        decoded = ManifestDataset(toy, split=split, image_size=16, on_error="skip")
        for i in range(len(decoded)):
            a, b = cached[i], decoded[i]
            assert torch.equal(a["image"], b["image"]) and a["row"] == b["row"] and a["text"] == b["text"]
    # the cached error behaves like the decoding error
    with pytest.raises(ImageReadError, match="2.png"):
        ManifestDataset(toy, split="train", image_size=16, cache_dir=tmp_path / "cache")[2]
    # 3 channels are stored as [N, 3, S, S] and still equal decoding
    build_cache(toy, 12, tmp_path / "c3", channels=3)
    kw = {"split": "val", "image_size": 12, "channels": 3, "mean": (0.5,), "std": (0.5,)}
    c3 = ManifestDataset(toy, cache_dir=tmp_path / "c3", **kw)
    d3 = ManifestDataset(toy, **kw)
    assert torch.equal(c3[0]["image"], d3[0]["image"]) and c3[0]["image"].shape == (3, 12, 12)
    # reused when nothing changed (same object content, no rebuild)
    assert build_cache(toy, 16, tmp_path / "cache").shape == index.shape


def test_stale_or_mismatched_cache_is_refused(toy: Path, tmp_path: Path) -> None:
    build_cache(toy, 16, tmp_path / "cache")
    with pytest.raises(ManifestError, match="size=16 but 32 was asked"):
        ManifestDataset(toy, split="train", image_size=32, cache_dir=tmp_path / "cache")
    with pytest.raises(ManifestError, match="no complete cache"):
        ManifestDataset(toy, split="train", image_size=16, cache_dir=tmp_path / "nowhere")
    toy.write_text(toy.read_text().replace("left effusion", "right effusion"))
    with pytest.raises(ManifestError, match="stale cache") as info:
        ManifestDataset(toy, split="train", image_size=16, cache_dir=tmp_path / "cache")
    assert "medvl data cache" in str(info.value)
    build_cache(toy, 16, tmp_path / "cache")  # rebuild fixes it
    ManifestDataset(toy, split="train", image_size=16, cache_dir=tmp_path / "cache")


def test_interrupted_build_resumes_and_matches(toy: Path, tmp_path: Path) -> None:
    def stop_after_first_chunk(done: int, total: int) -> None:
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_cache(toy, 16, tmp_path / "c", chunk=2, progress=stop_after_first_chunk)
    assert not (tmp_path / "c" / "index.json").exists() and (tmp_path / "c" / "images.u8.partial").exists()
    seen: list[int] = []
    build_cache(toy, 16, tmp_path / "c", chunk=2, progress=lambda d, t: seen.append(d))
    assert seen == [4, 6]  # continued after the first chunk
    build_cache(toy, 16, tmp_path / "fresh")
    assert (tmp_path / "c" / "images.u8").read_bytes() == (tmp_path / "fresh" / "images.u8").read_bytes()
    assert json.loads((tmp_path / "c" / "index.json").read_text())["errors"][0]["row"] == 3
    reader = pickle.loads(pickle.dumps(CacheReader(tmp_path / "c", toy, 16)))
    assert reader.get(1).shape == (1, 16, 16)


def test_volumes_load_and_cache(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(3):
        np.savez_compressed(tmp_path / f"v{i}.npz", image=rng.integers(0, 256, (10, 12, 14), dtype=np.uint8))
        rows.append({"image": f"v{i}.npz", "text": f"volume {i}", "labels": "organ", "split": "train"})
    m = write_manifest(rows, tmp_path / "m.csv")
    ds = ManifestDataset(m, image_size=8)
    assert ds[0]["image"].shape == (1, 8, 8, 8) and ds[0]["labels"].tolist() == [1.0]
    index = build_cache(m, 8, tmp_path / "vc")
    assert index.shape == [3, 8, 8, 8]
    cached = ManifestDataset(m, image_size=8, cache_dir=tmp_path / "vc")
    assert all(torch.equal(cached[i]["image"], ds[i]["image"]) for i in range(3))
    with pytest.raises(ConfigError, match="one channel"):
        build_cache(m, 8, tmp_path / "vc3", channels=3)


def test_cache_cli(toy: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from medvl.cli.app import app

    res = CliRunner().invoke(app, ["data", "cache", str(toy), "--size", "16", "--out", str(tmp_path / "cc")])
    assert res.exit_code == 0, res.output
    assert "1 unreadable" in res.output and (tmp_path / "cc" / "index.json").is_file()
