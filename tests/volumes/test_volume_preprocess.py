"""Volume checks: missing slices, 4D NIfTI, anisotropy, too-large resampling, already-scaled input, RAS kept."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import numpy as np
import pytest

from medvl.data.io import ImageData, ImageMeta, read_image
from medvl.data.volume_preprocess import VolumePolicy, prepare_volume, range_warning, volume_problems
from medvl.errors import ConfigError, ImageReadError


def _vol(shape=(8, 10, 12), spacing=(1.0, 1.0, 1.0), values=None, fmt="nifti") -> ImageData:
    arr = np.full(shape, -1000.0, np.float32) if values is None else values
    return ImageData(arr, ImageMeta(source="/data/ct.nii.gz", format=fmt, spacing=spacing, orientation="RAS"))


def _write_series(folder: Path, zs) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True)
    for i, z in enumerate(zs):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.SeriesInstanceUID, ds.Modality = "1.2.3", "CT"
        ds.Rows, ds.Columns = 4, 5
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.PixelSpacing = [0.8, 0.8]
        ds.RescaleSlope, ds.RescaleIntercept = 1.0, -1000.0
        ds.ImagePositionPatient, ds.ImageOrientationPatient = [0.0, 0.0, float(z)], [1, 0, 0, 0, 1, 0]
        ds.PixelData = np.full((4, 5), 100 * i, np.int16).tobytes()
        ds.save_as(folder / f"s{i:02d}.dcm", enforce_file_format=True)


def test_series_with_a_missing_slice_is_one_error_naming_the_file(tmp_path):
    _write_series(tmp_path / "series", [0, 1, 2, 4, 5, 6])  # slice at z=3 missing
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        img = read_image(tmp_path / "series")
    problems = volume_problems(img)
    assert [c for c, _ in problems] == ["missing_slices"] and "after slice 2" in problems[0][1]
    with pytest.raises(ImageReadError, match=r"series.*missing slice after slice 2"):
        prepare_volume(img, VolumePolicy())
    # medvl data check reports it with the row and the folder
    from medvl.data.check import check_manifest

    with (tmp_path / "manifest.csv").open("w", newline="") as f:
        csv.writer(f).writerows([["image", "text", "labels", "split", "patient_id"],
                                 ["series", "ct", "", "train", "p1"]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = check_manifest(tmp_path / "manifest.csv")
    errs = [f for f in report.errors if f.code == "volume_missing_slices"]
    assert len(errs) == 1 and errs[0].row == 1 and errs[0].file.endswith("series")  # rows are 1-based


def test_4d_nifti_where_3d_expected_is_refused(tmp_path):
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 3), np.int16), np.eye(4)), str(tmp_path / "t.nii.gz"))
    with pytest.raises(ImageReadError, match=r"t\.nii\.gz.*4D"):
        read_image(tmp_path / "t.nii.gz")


def test_anisotropy_and_too_large_volume():
    img = _vol(spacing=(5.0, 0.7, 0.7))
    codes = [c for c, _ in volume_problems(img)]
    assert codes == ["anisotropic"]
    with pytest.raises(ImageReadError, match=r"ct\.nii\.gz: anisotropic spacing .* \(ratio 7\.1"):
        prepare_volume(img, VolumePolicy())
    big = _vol(shape=(100, 100, 100), spacing=(1.0, 1.0, 1.0))
    policy = VolumePolicy(target_spacing=(0.25, 0.25, 0.25), max_voxels=10_000_000)
    assert [c for c, _ in volume_problems(big, policy)] == ["too_large"]
    assert volume_problems(_vol(fmt="npz", spacing=())) == []  # MedMNIST-style arrays carry no geometry


def test_already_scaled_volume_into_an_hu_window_warns():
    scaled = _vol(values=np.random.default_rng(0).random((8, 8, 8)).astype(np.float32))
    msg = range_warning(scaled.array, VolumePolicy())
    assert msg and "already scaled" in msg and "Hounsfield" in msg
    with pytest.warns(UserWarning, match=r"ct\.nii\.gz: values span"):
        out = prepare_volume(scaled, VolumePolicy())
    assert float(out.std()) < 0.01  # the collapse the warning is about
    hu = _vol(values=np.linspace(-1000, 400, 512, dtype=np.float32).reshape(8, 8, 8))
    assert range_warning(hu.array, VolumePolicy()) is None


def test_resampling_keeps_ras_axes_and_window_maps_hu():
    arr = np.full((10, 10, 10), -1000.0, np.float32)
    arr[8:, :, :] = 40.0  # a slab on the patient's right (high first index in RAS)
    out = prepare_volume(_vol(values=arr, spacing=(2.0, 1.0, 1.0)),
                         VolumePolicy(window=(40.0, 400.0), target_spacing=(1.0, 1.0, 1.0)))
    assert out.shape == (20, 10, 10)
    assert out[-1].mean() == pytest.approx(0.5, abs=0.01) and out[0].max() == 0.0  # slab still at the end


def test_policy_round_trip_and_validation():
    p = VolumePolicy(window=(-600, 1500), target_spacing=(1.5, 1.5, 1.5))
    assert VolumePolicy.from_dict(p.to_dict()) == p
    with pytest.raises(ConfigError, match="unknown volume policy key"):
        VolumePolicy.from_dict({"hu": 1})
    with pytest.raises(ConfigError, match="intensity"):
        VolumePolicy(intensity="gamma")


def test_data_check_flags_a_ct_volume_already_scaled_to_unit_range(tmp_path):
    import nibabel as nib

    from medvl.data.check import check_manifest

    hu = np.linspace(-1000, 400, 8 * 8 * 8, dtype=np.float32).reshape(8, 8, 8)
    nib.save(nib.Nifti1Image(hu.astype(np.int16), np.eye(4)), str(tmp_path / "hu.nii.gz"))
    nib.save(nib.Nifti1Image((hu + 1000) / 1400, np.eye(4)), str(tmp_path / "scaled.nii.gz"))
    with (tmp_path / "manifest.csv").open("w", newline="") as f:
        csv.writer(f).writerows([["image", "text", "labels", "split", "patient_id", "modality"],
                                 ["hu.nii.gz", "ct", "", "train", "p1", "ct"],
                                 ["scaled.nii.gz", "ct", "", "train", "p2", "ct"]])
    report = check_manifest(tmp_path / "manifest.csv")
    flagged = [f for f in report.warnings if f.code == "volume_not_hu"]
    assert len(flagged) == 1 and flagged[0].row == 2 and flagged[0].file.endswith("scaled.nii.gz")
    assert "already scaled" in flagged[0].message and report.ok
