"""Server and index with volumes: a 3D CLIP indexes NIfTI CTs; a .nii.gz upload finds its own case first."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("faiss")
pytest.importorskip("fastapi")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    import torch

    from medvl.data.manifest import load_manifest
    from medvl.data.synthetic3d import generate_ct_phantoms
    from medvl.models import create_model, save_model
    from medvl.models.encoder import load_encoder
    from medvl.serve.build import build_index

    root = tmp_path_factory.mktemp("serve3d")
    manifest = generate_ct_phantoms(root / "ct", n=8, size=16, seed=1)
    torch.manual_seed(0)
    texts = [s.text for s in load_manifest(manifest).samples]
    save_model(create_model("clip3d-tiny", tokenizer_texts=texts, pretrained=False), root / "m")
    enc = load_encoder(root / "m")
    build_index(root / "m", manifest, root / "idx", encoder=enc).close()
    return manifest, enc, root / "idx"


def test_nifti_upload_is_embedded_as_a_volume_and_finds_its_case(served):
    from fastapi.testclient import TestClient

    from medvl.serve.app import create_app

    manifest, enc, idx = served
    nii_gz = (manifest.parent / "images" / "ct00003.nii.gz").read_bytes()
    with TestClient(create_app(enc, idx)) as client:
        r = client.post("/v1/search", files={"file": ("x", nii_gz, "application/octet-stream")}, data={"k": "3"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["results"][0]["image"].endswith("ct00003.nii.gz")
        assert body["results"][0]["score"] == pytest.approx(1.0, abs=1e-4)
        raw = gzip.decompress(nii_gz)  # an uncompressed .nii upload works too
        r2 = client.post("/v1/search", files={"file": ("x", raw, "application/octet-stream")})
        assert r2.status_code == 200 and r2.json()["results"][0]["image"].endswith("ct00003.nii.gz")
        png = client.post("/v1/search", files={"file": ("x", b"\x89PNG\r\n\x1a\n" + b"0" * 64, "image/png")})
        assert png.status_code == 400  # a corrupt 2D upload into a volume model: one clear 4xx, no 500
        import io

        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(np.zeros((16, 16), np.uint8)).save(buf, format="PNG")
        flat = client.post("/v1/search", files={"file": ("x", buf.getvalue(), "image/png")})
        assert flat.status_code == 400 and "encodes volumes" in flat.json()["detail"]


def test_nifti_header_text_never_leaves_the_decoder(tmp_path):
    import nibabel as nib

    from medvl.serve.images import decode_upload

    img = nib.Nifti1Image(np.full((6, 7, 8), 100, np.int16), np.diag([2.0, 1.0, 1.0, 1.0]))
    img.header["descrip"] = b"Jane Doe 1970-01-01 MRN123"
    img.header["db_name"] = b"MRN123"
    nib.save(img, str(tmp_path / "p.nii"))
    dec = decode_upload((tmp_path / "p.nii").read_bytes())
    assert dec.format == "nifti" and dec.pixels.shape == (6, 7, 8) and dec.meta["spacing"] == [2.0, 1.0, 1.0]
    assert "Jane" not in repr(dec.meta) and "MRN" not in repr(dec.meta)
    four_d = nib.Nifti1Image(np.zeros((4, 4, 4, 2), np.int16), np.eye(4))
    nib.save(four_d, str(tmp_path / "t.nii"))
    from medvl.errors import ImageReadError

    with pytest.raises(ImageReadError, match="single 3D volume"):
        decode_upload((tmp_path / "t.nii").read_bytes())


def test_cine_and_volume_files_index_with_a_2d_model(tmp_path):
    from medvl.serve.images import read_picture

    p = Path(tmp_path / "v.npz")
    np.savez(p, image=np.arange(5 * 6 * 7, dtype=np.uint8).reshape(5, 6, 7))
    assert read_picture(p).shape == (6, 7) and read_picture(p, volume=True).shape == (5, 6, 7)


def _series_zip(zs, patient: str = "Doe^Jane") -> bytes:
    import io
    import zipfile

    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("README.txt", "exported by PACS")
        for i, z in enumerate(zs):
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds = Dataset()
            ds.file_meta = meta
            ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
            ds.SeriesInstanceUID, ds.Modality, ds.PatientName, ds.PatientID = "1.2.3", "CT", patient, "MRN777"
            ds.Rows, ds.Columns = 4, 5
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
            ds.PixelSpacing = [0.8, 0.8]
            ds.RescaleSlope, ds.RescaleIntercept = 1.0, -1000.0
            ds.ImagePositionPatient, ds.ImageOrientationPatient = [0.0, 0.0, float(z)], [1, 0, 0, 0, 1, 0]
            ds.PixelData = np.full((4, 5), 100 * i, np.int16).tobytes()
            f = io.BytesIO()
            ds.save_as(f, enforce_file_format=True)
            zf.writestr(f"{patient}/IMG{i:03d}.dcm", f.getvalue())
    return buf.getvalue()


def test_dicom_series_zip_upload_is_deidentified_and_checked():
    from medvl.errors import ImageReadError
    from medvl.serve.images import decode_upload

    dec = decode_upload(_series_zip([3, 1, 0, 2]))  # unsorted on purpose
    assert dec.format == "dicom-zip" and dec.pixels.shape == (4, 4, 5)
    assert dec.meta["deidentified"] is True and dec.meta["skipped_files"] == 1
    assert "Doe" not in repr(dec.meta) and "MRN777" not in repr(dec.meta)
    means = dec.pixels.reshape(4, -1).mean(1)
    # files written at z = 3, 1, 0, 2 with values 0, 100, 200, 300: sorted by position, slices hold 200, 100, 300, 0
    assert list(np.argsort(means)) == [3, 1, 0, 2]
    with pytest.raises(ImageReadError, match="missing slice"):
        decode_upload(_series_zip([0, 1, 2, 4, 5]))
