"""Shared fixtures for the serving tests: a phantom dataset, a real tiny CLIP model, its index.

Session-scoped because the model and index are read-only for every test; tests that mutate an
index copy it first.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("faiss")
pytest.importorskip("fastapi")


@pytest.fixture(scope="session")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 synthetic chest phantoms (64 px) with reports, manifest.csv and a multilabel card.yaml."""
    from medvl.data.synthetic import generate_phantoms

    return generate_phantoms(tmp_path_factory.mktemp("phantoms") / "data", n=24, size=64, seed=0)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory, phantoms: Path) -> Path:
    """A real ``clip-tiny`` (random weights, tokenizer trained on the phantom reports), saved."""
    import torch

    from medvl.data.manifest import load_manifest
    from medvl.models import create_model, save_model

    torch.manual_seed(0)
    reports = [s.text for s in load_manifest(phantoms).samples]
    model = create_model("clip-tiny", tokenizer_texts=reports, pretrained=False)
    out = tmp_path_factory.mktemp("model") / "clip-tiny"
    save_model(model, out)
    return out


@pytest.fixture(scope="session")
def encoder(model_dir: Path):
    from medvl.models.encoder import load_encoder

    return load_encoder(model_dir)


@pytest.fixture(scope="session")
def index_dir(tmp_path_factory: pytest.TempPathFactory, encoder, model_dir: Path, phantoms: Path) -> Path:
    """The phantom manifest's train split indexed with the tiny model (exact search)."""
    from medvl.serve.build import build_index

    out = tmp_path_factory.mktemp("index") / "idx"
    build_index(model_dir, phantoms, out, splits=["train"], encoder=encoder).close()
    return out


@pytest.fixture()
def index_copy(tmp_path: Path, index_dir: Path) -> Path:
    """A private copy of the session index for tests that add to it."""
    dst = tmp_path / "idx"
    shutil.copytree(index_dir, dst)
    return dst


def png_bytes(size: int = 48, seed: int = 0) -> bytes:
    from PIL import Image

    arr = np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


PHI = {"PatientName": "Zzyzx^Quentin", "PatientID": "MRN-99887766", "PatientBirthDate": "19450317",
       "InstitutionName": "St Elsewhere Hospital", "ReferringPhysicianName": "Dr^Nick^Riviera",
       "AccessionNumber": "ACC-5551234"}


def dicom_bytes(size: int = 64, photometric: str = "MONOCHROME2", window: tuple[float, float] | None = (600, 800),
                seed: int = 1) -> bytes:
    """A small valid DICOM Part-10 file in memory, full of (fake) patient identifiers."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    for k, v in PHI.items():
        setattr(ds, k, v)
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = "CT"
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    yy, xx = np.mgrid[0:size, 0:size]
    arr = (200 + 14 * xx + 8 * yy + np.random.default_rng(seed).integers(0, 50, (size, size))).astype(np.uint16)
    ds.PixelData = arr.tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@pytest.fixture()
def make_png():
    """``make_png(size=48, seed=0) -> bytes`` (helpers are fixtures: tests use importlib import mode)."""
    return png_bytes


@pytest.fixture()
def make_dicom():
    """``make_dicom(size=64, photometric=..., window=...) -> bytes`` of a DICOM carrying :data:`PHI`."""
    return dicom_bytes


@pytest.fixture()
def phi() -> dict[str, str]:
    return dict(PHI)
