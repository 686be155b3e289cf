"""Cine loops: a multi-frame colour DICOM (written with pydicom) through manifest, dataset and a 2D+time encoder."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from medvl.data.dataset import ManifestDataset
from medvl.data.io import read_image
from medvl.models import load_encoder


def write_cine(path: Path, frames: np.ndarray, frame_time_ms: float = 33.3) -> Path:
    """An uncompressed RGB ultrasound multi-frame DICOM, ``frames`` T x H x W x 3 uint8."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, UltrasoundMultiFrameImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = UltrasoundMultiFrameImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesInstanceUID = "US", generate_uid()
    ds.NumberOfFrames, ds.FrameTime = frames.shape[0], frame_time_ms
    ds.Rows, ds.Columns = frames.shape[1:3]
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.ascontiguousarray(frames, dtype=np.uint8).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def _clip(beating: bool, t: int = 12, h: int = 24, w: int = 32) -> np.ndarray:
    """A bright disc whose radius oscillates over time when ``beating`` (else constant)."""
    yy, xx = np.mgrid[0:h, 0:w]
    out = np.zeros((t, h, w, 3), np.uint8)
    for k in range(t):
        r = 6 + (4 * np.sin(2 * np.pi * k / t) if beating else 0)
        disc = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 <= r * r
        out[k][disc] = (200, 60, 60)
    return out


@pytest.fixture(scope="module")
def cine_manifest(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cine")
    rows = [["image", "text", "labels", "split", "patient_id"]]
    for i in range(6):
        write_cine(root / f"clip{i}.dcm", _clip(beating=bool(i % 2)))
        rows.append([f"clip{i}.dcm", "echo clip", "motion" if i % 2 else "", ["train", "val", "test"][i // 2],
                     f"p{i}"])
    with (root / "manifest.csv").open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    return root / "manifest.csv"


def test_multiframe_colour_dicom_reads_as_a_clip(tmp_path):
    frames = _clip(True)
    img = read_image(write_cine(tmp_path / "c.dcm", frames))
    assert img.array.shape == (12, 24, 32, 3) and img.meta.extra["cine"] is True
    assert img.meta.extra["frame_time_ms"] == pytest.approx(33.3)
    np.testing.assert_array_equal(img.array, frames)
    np.testing.assert_array_equal(read_image(tmp_path / "c.dcm", frame=3).array, frames[3])


def test_clip_through_the_dataset_and_a_cine_encoder(cine_manifest):
    ds = ManifestDataset(cine_manifest, split=None, image_size=16, channels=3, mean=None, std=None)
    x = ds[1]["image"]
    assert x.shape == (3, 16, 16, 16)  # frames resampled to 16 like a volume's depth
    enc = load_encoder("cine:resnet18", image_size=16)
    assert enc.in_chans == 3 and enc.name.startswith("cine:resnet18")
    batch = torch.stack([ds[i]["image"] for i in range(2)])
    assert enc.encode_image(batch).shape == (2, 512)
    grey = load_encoder("cine:resnet18?in_chans=1", image_size=16)
    assert grey.in_chans == 1


@pytest.mark.slow
def test_cine_finetune_cli(cine_manifest, tmp_path):
    from typer.testing import CliRunner

    from medvl.cli import app

    res = CliRunner().invoke(app, ["eval", "finetune", "-m", "cine:resnet18", "-d", str(cine_manifest),
                                   "--epochs", "1", "--batch-size", "2", "--image-size", "16", "--n-boot", "0"])
    assert res.exit_code == 0, res.output


def test_manifest_frame_selector_and_clip_sampling(tmp_path):
    from medvl.data.check import check_manifest
    from medvl.errors import ImageReadError

    frames = _clip(True)
    write_cine(tmp_path / "echo.dcm", frames)
    one = read_image(tmp_path / "echo.dcm#frame=3")
    np.testing.assert_array_equal(one.array, frames[3])
    clip = read_image(tmp_path / "echo.dcm#frames=0:12:3")  # every third frame
    np.testing.assert_array_equal(clip.array, frames[0:12:3])
    assert clip.meta.extra["n_frames_selected"] == 4
    for bad, match in [("echo.dcm#frames=20:30", "selects no frame"), ("echo.dcm#frame=x", "bad frame selector"),
                       ("echo.dcm#frame=99", "out of range")]:
        with pytest.raises(ImageReadError, match=match):
            read_image(tmp_path / bad)
    rows = [["image", "text", "labels", "split", "patient_id"],
            ["echo.dcm#frames=0:12:2", "clip", "motion", "train", "p1"],
            ["echo.dcm#frames=1:12:2", "clip", "motion", "train", "p2"],
            ["echo.dcm#frame=oops", "clip", "", "train", "p3"]]
    with (tmp_path / "manifest.csv").open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    report = check_manifest(tmp_path / "manifest.csv")
    assert [(f.code, f.row) for f in report.errors] == [("unreadable", 3)]
    ds = ManifestDataset(tmp_path / "manifest.csv", split=None, image_size=8, channels=3, mean=None, std=None)
    assert ds[0]["image"].shape == (3, 8, 8, 8)
