"""Tests of medvl.data.io on files written here (known values) and on the real shared samples."""

from __future__ import annotations

import math
import random
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import tifffile
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from medvl.data.io import (
    WINDOW_PRESETS,
    ImageData,
    ImageMeta,
    apply_window,
    describe,
    image_from_dataset,
    parse_window,
    read_dicom,
    read_dicom_series,
    read_image,
    read_nifti,
    read_npz,
    to_uint8,
)
from medvl.errors import ConfigError, ImageReadError

CXR_MONO2 = "samples/cxr/1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"
CXR_MONO1 = "samples/cxr/Fake_MONOHR1.dcm"


def write_dicom(path: Path, pixels: np.ndarray, *, photometric: str = "MONOCHROME2", bits: int = 16,
                slope: float | None = None, intercept: float | None = None, window=None,
                position=None, orientation=(1, 0, 0, 0, 1, 0), spacing=(0.7, 0.8),
                series_uid: str = "1.2.3.4", syntax: str = ExplicitVRLittleEndian,
                pixel_bytes: bytes | None = None, **tags) -> Path:
    """A minimal valid CT image file; ``pixels`` is H x W or F x H x W (multi-frame)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID, ds.Modality = series_uid, "CT"
    ds.Rows, ds.Columns = pixels.shape[-2:]
    if pixels.ndim == 3:
        ds.NumberOfFrames = pixels.shape[0]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = pixels.dtype.itemsize * 8, bits, bits - 1
    ds.PixelRepresentation = int(pixels.dtype.kind == "i")
    ds.PixelSpacing = list(spacing)
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if position is not None:
        ds.ImagePositionPatient, ds.ImageOrientationPatient = list(position), list(orientation)
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.PixelData = pixels.tobytes() if pixel_bytes is None else pixel_bytes
    ds.save_as(path, enforce_file_format=True)
    return path


# ------------------------------------------------------------------------------------ DICOM values


def test_dicom_rescale_gives_exact_hu_and_records_window(tmp_path):
    stored = np.array([[0, 1, 2], [500, 1000, 2047]], dtype=np.int16)
    path = write_dicom(tmp_path / "ct.dcm", stored, bits=12, slope=2.0, intercept=-1024.0, window=(40, 400))
    image = read_image(path)
    assert image.array.dtype == np.float32
    np.testing.assert_array_equal(image.array, stored * 2.0 - 1024.0)
    assert image.meta.format == "dicom" and image.meta.modality == "CT"
    assert image.meta.window == (40.0, 400.0)
    assert image.meta.spacing == (0.7, 0.8)
    assert image.meta.bits == 12
    assert image.meta.extra["rescale_slope"] == 2.0 and image.meta.extra["rescale_intercept"] == -1024.0


def test_window_override_none_preset_and_bad_values(tmp_path):
    stored = np.arange(12, dtype=np.int16).reshape(3, 4)
    path = write_dicom(tmp_path / "ct.dcm", stored, slope=1.0, intercept=-1024.0,
                       window=([40, 300], [400, 1500]))  # multi-valued: the first applies
    assert read_dicom(path).meta.window == (40.0, 400.0)
    assert read_dicom(path, window=(-600, 1500)).meta.window == (-600.0, 1500.0)
    assert read_dicom(path, window=None).meta.window is None
    assert read_image(path, window="lung").meta.window == WINDOW_PRESETS["lung"]
    np.testing.assert_array_equal(read_dicom(path, window=None).array, read_dicom(path).array)
    with pytest.raises(ConfigError, match="width"):
        read_image(path, window=(40, 0))
    with pytest.raises(ConfigError, match="lung"):
        read_image(path, window="lungs")
    with pytest.raises(ConfigError):
        parse_window("40;400")
    assert parse_window("40,400") == (40.0, 400.0) and parse_window("none") is None


def test_to_uint8_applies_recorded_window(tmp_path):
    stored = np.array([[0, 984, 1024], [1064, 1224, 3000]], dtype=np.int16)  # HU -1024, -40, 0, 40, 200, 1976
    path = write_dicom(tmp_path / "ct.dcm", stored, slope=1.0, intercept=-1024.0, window=(0, 80))
    out = to_uint8(read_image(path))
    np.testing.assert_array_equal(out, [[0, 0, 128], [255, 255, 255]])
    assert out.dtype == np.uint8


def test_voi_lut_sequence_is_recorded_not_applied(tmp_path):
    stored = np.array([[0, 10], [200, 255]], dtype=np.uint16)
    item = Dataset()
    item.add_new(0x00283002, "US", [256, 0, 8])  # LUTDescriptor (ambiguous VR: set it)
    item.add_new(0x00283006, "US", list(range(255, -1, -1)))  # LUTData: inverting, so its use shows
    path = write_dicom(tmp_path / "lut.dcm", stored, bits=8, VOILUTSequence=Sequence([item]))
    image = read_dicom(path)
    np.testing.assert_array_equal(image.array, stored)  # values kept
    assert image.meta.window is None and "voi_lut" in image.meta.extra
    np.testing.assert_array_equal(to_uint8(image), 255 - stored)


def test_monochrome1_written_inverted_gives_the_monochrome2_picture(tmp_path):
    rng = np.random.default_rng(0)
    v = rng.integers(0, 4096, size=(6, 5)).astype(np.uint16)
    mono2 = read_dicom(write_dicom(tmp_path / "m2.dcm", v, bits=12, window=(1500, 2000)))
    mono1 = read_dicom(write_dicom(tmp_path / "m1.dcm", (4095 - v).astype(np.uint16), bits=12,
                                   photometric="MONOCHROME1", window=(4095 - 1500, 2000)))
    assert "inverted from MONOCHROME1" in mono1.meta.photometric
    np.testing.assert_array_equal(mono1.array, mono2.array)
    assert mono1.meta.window == mono2.meta.window
    np.testing.assert_array_equal(to_uint8(mono1), to_uint8(mono2))
    for image in (mono1, mono2):  # min-max path too
        image.meta.window = None
    np.testing.assert_array_equal(to_uint8(mono1), to_uint8(mono2))
    assert not np.array_equal(to_uint8(mono2), 255 - to_uint8(mono2))


def test_to_uint8_inverts_hand_built_monochrome1():
    image = ImageData(np.array([[0.0, 10.0]]), ImageMeta(source="x", format="npz", photometric="MONOCHROME1"))
    np.testing.assert_array_equal(to_uint8(image), [[255, 0]])


def test_real_cxr_dicoms_jpeg_baseline_and_fake_monochrome1(shared_data):
    """Fake_MONOHR1.dcm holds the *same stored pixels* as its MONOCHROME2 twin with only the tag
    changed, so a correct MONOCHROME1 reading is the exact negative of the twin (torchxrayvision's
    own test expects the same); a genuine MONOCHROME1 file is covered by the synthetic test above."""
    mono2 = read_image(shared_data / CXR_MONO2)
    mono1 = read_image(shared_data / CXR_MONO1)
    assert mono2.array.shape == mono1.array.shape == (1024, 1024)
    assert mono2.meta.extra["transfer_syntax"].startswith("JPEG Baseline")
    assert mono2.meta.modality == "CR" and mono2.meta.spacing == (0.168, 0.168)
    raw1 = pydicom.dcmread(shared_data / CXR_MONO1).pixel_array
    raw2 = pydicom.dcmread(shared_data / CXR_MONO2).pixel_array
    assert np.array_equal(raw1, raw2)  # the premise of this test
    u1, u2 = to_uint8(mono1), to_uint8(mono2)
    np.testing.assert_array_equal(u1.astype(int), 255 - u2.astype(int))
    assert u2[:20, :20].mean() < 40  # MONOCHROME2 corner (air outside the body) is dark


def test_multiframe_volume_and_frame_selection(tmp_path):
    frames = np.arange(3 * 4 * 5, dtype=np.uint16).reshape(3, 4, 5)
    path = write_dicom(tmp_path / "mf.dcm", frames, slope=1.0, intercept=0.0, SpacingBetweenSlices=3.0)
    volume = read_dicom(path)
    assert volume.array.shape == (3, 4, 5) and volume.meta.extra["n_frames"] == 3
    assert volume.meta.spacing == (3.0, 0.7, 0.8)
    one = read_image(path, frame=1)
    np.testing.assert_array_equal(one.array, frames[1])
    assert one.meta.spacing == (0.7, 0.8)
    with pytest.raises(ImageReadError, match="out of range"):
        read_image(path, frame=3)


# ------------------------------------------------------------------------------------ DICOM series


def _write_series(folder: Path, zs, *, names=None, **kwargs) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    names = names or [f"f{i:02d}" for i in range(len(zs))]
    rng = random.Random(0)
    for name, z in zip(names, zs, strict=True):
        pixels = np.full((4, 5), int(z * 10), dtype=np.int16)
        write_dicom(folder / name, pixels, slope=1.0, intercept=-1000.0,
                    position=(rng.uniform(-5, 5), -3.0, z), **kwargs)


def test_series_sorted_by_position_with_spacing(tmp_path):
    zs = [5.0, -2.5, 10.0, 0.0, 2.5, 7.5]  # files written out of order, x offsets random
    _write_series(tmp_path / "s", zs, window=(40, 400))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # regular spacing: no warning
        image = read_image(tmp_path / "s")
    assert image.meta.format == "dicom-series" and image.array.shape == (6, 4, 5)
    np.testing.assert_array_equal(image.array[:, 0, 0], [z * 10 - 1000 for z in sorted(zs)])
    assert image.meta.spacing == pytest.approx((2.5, 0.7, 0.8))
    assert image.meta.extra["irregular_spacing"] is False and image.meta.window == (40.0, 400.0)
    np.testing.assert_array_equal(read_image(tmp_path / "s", frame=2).array, image.array[2])


def test_series_sorted_along_an_oblique_normal(tmp_path):
    folder = tmp_path / "sag"
    folder.mkdir()
    for i, x in enumerate([30.0, 10.0, 20.0]):  # sagittal: normal = row x col = (-1, 0, 0)
        write_dicom(folder / f"{i}.dcm", np.full((2, 2), int(x), dtype=np.int16), position=(x, 0, 0),
                    orientation=(0, 1, 0, 0, 0, -1))
    image = read_dicom_series(folder)
    np.testing.assert_array_equal(image.array[:, 0, 0], [30, 20, 10])
    assert image.meta.spacing[0] == pytest.approx(10.0)


def test_real_ct_series_uneven_gaps_reported(shared_data):
    with pytest.warns(UserWarning, match="irregular slice gaps"):
        image = read_image(shared_data / "samples/ct_dicom_series")
    assert image.array.shape == (4, 16, 16)
    assert image.meta.extra["slice_gaps"] == pytest.approx([202.5, 1.25, 1.25], abs=1e-3)
    assert image.meta.extra["irregular_spacing"] is True
    assert image.meta.spacing == pytest.approx((1.25, 0.488281, 0.488281))
    first = read_image(shared_data / "samples/ct_dicom_series/7106")  # z = -99.48: the first slice
    np.testing.assert_array_equal(image.array[0], first.array)
    raw = pydicom.dcmread(shared_data / "samples/ct_dicom_series/7106").pixel_array
    np.testing.assert_array_equal(first.array, raw.astype(np.float32) - 1024)
    assert first.meta.window == (30.0, 100.0)


@pytest.mark.parametrize("bad, match", [
    ("size", "mixes slice sizes"),
    ("orientation", "mixes orientations"),
    ("series", "mixes series"),
    ("duplicate", "same position"),
])
def test_series_inconsistencies_raise(tmp_path, bad, match):
    folder = tmp_path / bad
    _write_series(folder, [0.0, 1.0, 2.0])
    pixels = np.zeros((6, 6) if bad == "size" else (4, 5), dtype=np.int16)
    write_dicom(folder / "odd", pixels, position=(0, -3.0, 1.0 if bad == "duplicate" else 3.0),
                orientation=(0, 1, 0, 0, 0, -1) if bad == "orientation" else (1, 0, 0, 0, 1, 0),
                series_uid="9.9.9" if bad == "series" else "1.2.3.4")
    with pytest.raises(ImageReadError, match=match) as info:
        read_image(folder)
    assert str(folder) in str(info.value)


def test_series_empty_and_non_dicom_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageReadError, match="empty folder"):
        read_dicom_series(tmp_path / "empty")
    (tmp_path / "txt").mkdir()
    (tmp_path / "txt" / "notes.txt").write_text("hello")
    with pytest.raises(ImageReadError, match="no DICOM image files"):
        read_image(tmp_path / "txt")
    with pytest.raises(ImageReadError, match="not found"):
        read_dicom_series(tmp_path / "missing")


# ------------------------------------------------------------------------------------------ NIfTI


def test_nifti_las_is_flipped_to_ras(tmp_path):
    data = np.arange(3 * 4 * 5, dtype=np.float32).reshape(3, 4, 5)
    affine = np.diag([-2.0, 3.0, 4.0, 1.0])
    affine[:3, 3] = [10, -5, 0]
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "las.nii.gz")
    image = read_image(tmp_path / "las.nii.gz")
    np.testing.assert_array_equal(image.array, data[::-1])
    assert image.meta.orientation == "RAS" and image.meta.extra["original_orientation"] == "LAS"
    assert image.meta.spacing == (2.0, 3.0, 4.0)
    assert np.all(np.diag(image.meta.extra["affine"])[:3] > 0)
    # the world position of a voxel is unchanged by the reorientation
    old = affine @ [0, 1, 2, 1]
    new = image.meta.extra["affine"] @ [2, 1, 2, 1]
    np.testing.assert_allclose(old, new)


def test_real_nifti_and_label_stay_aligned(shared_data):
    folder = shared_data / "samples/nifti"
    image, label = read_nifti(folder / "anatomical.nii"), read_nifti(folder / "anatomical_label.nii.gz")
    raw = np.asarray(nib.load(folder / "anatomical.nii").dataobj)
    raw_label = np.asarray(nib.load(folder / "anatomical_label.nii.gz").dataobj)
    assert image.meta.extra["original_orientation"] == "LAS" and image.meta.orientation == "RAS"
    np.testing.assert_array_equal(image.array, raw[::-1])
    np.testing.assert_array_equal(label.array, raw_label[::-1])
    assert image.array.shape == label.array.shape == (33, 41, 25)
    assert image.meta.spacing == (2.0, 2.0, 2.0) and image.array.dtype.isnative
    np.testing.assert_allclose(image.meta.extra["affine"], label.meta.extra["affine"])


def test_nifti_4d_and_truncated_raise(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2, 3), np.float32), np.eye(4)), tmp_path / "t.nii")
    with pytest.raises(ImageReadError, match="4D|time series"):
        read_image(tmp_path / "t.nii")
    nib.save(nib.Nifti1Image(np.ones((8, 8, 8), np.float32), np.eye(4)), tmp_path / "v.nii.gz")
    for name in ("t.nii", "v.nii.gz"):
        raw = (tmp_path / name).read_bytes()
        (tmp_path / f"cut_{name}").write_bytes(raw[: len(raw) // 2])
        with pytest.raises(ImageReadError, match="truncated or corrupt NIfTI"):
            read_image(tmp_path / f"cut_{name}")


# ------------------------------------------------------------------------------- PNG / JPEG / TIFF


def test_png_16bit_kept_and_scaled_for_display(tmp_path):
    arr = (np.arange(48, dtype=np.uint16).reshape(6, 8) * 1000 + 300)
    Image.fromarray(arr).save(tmp_path / "a.png")
    image = read_image(tmp_path / "a.png")
    assert image.array.dtype == np.uint16 and image.meta.bits == 16
    np.testing.assert_array_equal(image.array, arr)
    out = to_uint8(image)
    assert out.min() == 0 and out.max() == 255 and out[0, 1] > out[0, 0]


def test_png_8bit_unchanged_rgb_kept_grey_rgb_collapsed(tmp_path):
    grey = np.array([[10, 20], [30, 40]], dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "g.png")
    np.testing.assert_array_equal(to_uint8(read_image(tmp_path / "g.png")), grey)
    rgb = np.stack([grey, grey + 1, grey + 2], axis=-1)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    colour = read_image(tmp_path / "c.png")
    assert colour.meta.photometric == "RGB" and colour.array.shape == (2, 2, 3)
    np.testing.assert_array_equal(to_uint8(colour), rgb)
    Image.fromarray(np.stack([grey] * 3, axis=-1)).save(tmp_path / "gg.png")
    collapsed = read_image(tmp_path / "gg.png")
    assert collapsed.array.shape == (2, 2) and collapsed.meta.extra["gray_from_rgb"]


def test_tiff_16bit_and_page_stack(tmp_path):
    arr = np.arange(3 * 4 * 5, dtype=np.uint16).reshape(3, 4, 5) * 900
    tifffile.imwrite(tmp_path / "one.tif", arr[0])
    tifffile.imwrite(tmp_path / "stack.tiff", arr, photometric="minisblack")
    rgb = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    tifffile.imwrite(tmp_path / "planar.tif", rgb, photometric="rgb", planarconfig="separate")
    planar = read_image(tmp_path / "planar.tif")  # colour planes must not become 3 slices
    assert planar.meta.photometric == "RGB"
    np.testing.assert_array_equal(planar.array, np.moveaxis(rgb, 0, -1))
    one = read_image(tmp_path / "one.tif")
    assert one.meta.format == "tiff" and one.array.dtype == np.uint16
    np.testing.assert_array_equal(one.array, arr[0])
    np.testing.assert_array_equal(read_image(tmp_path / "stack.tiff").array, arr)
    np.testing.assert_array_equal(read_image(tmp_path / "stack.tiff", frame=2).array, arr[2])


def test_real_png_and_jpeg(shared_data):
    png = read_image(shared_data / "samples/cxr/00000001_000.png")
    assert png.meta.format == "png" and png.array.dtype == np.uint8 and png.array.ndim == 2
    jpg = read_image(shared_data / "samples/cxr/16747_3_1.jpg")
    assert jpg.meta.format == "jpeg" and jpg.array.shape == (885, 1036)  # grey saved as RGB -> 2D
    assert 0 < jpg.array.mean() < 255


def test_frame_on_2d_image_raises(tmp_path):
    Image.fromarray(np.zeros((3, 3), np.uint8)).save(tmp_path / "a.png")
    with pytest.raises(ImageReadError, match="2D"):
        read_image(tmp_path / "a.png", frame=0)


# ---------------------------------------------------------------------------------- bad input


def _truncate(path: Path, keep: float | int) -> Path:
    raw = path.read_bytes()
    n = int(len(raw) * keep) if isinstance(keep, float) else keep
    out = path.with_name("cut_" + path.name)
    out.write_bytes(raw[:n])
    return out


def test_truncated_raster_files(tmp_path):
    rng = np.random.default_rng(1)
    noise = rng.integers(0, 255, (64, 64), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "a.png")
    Image.fromarray(noise).save(tmp_path / "a.jpg", quality=95)
    tifffile.imwrite(tmp_path / "a.tif", noise.astype(np.uint16))
    for name, fmt in (("a.png", "PNG"), ("a.jpg", "JPEG"), ("a.tif", "TIFF")):
        with pytest.raises(ImageReadError, match=f"truncated or corrupt {fmt}"):
            read_image(_truncate(tmp_path / name, 0.5))


def test_truncated_and_corrupt_dicom(tmp_path):
    path = write_dicom(tmp_path / "ct.dcm", np.ones((16, 16), np.int16), slope=1.0, intercept=0.0)
    with pytest.raises(ImageReadError, match="truncated"):  # inside the pixel data
        read_image(_truncate(path, path.stat().st_size - 10))
    with pytest.raises(ImageReadError, match="truncated"):  # inside the header
        read_image(_truncate(path, 0.3))
    (tmp_path / "fake.dcm").write_text("this is not a dicom file at all" * 10)
    with pytest.raises(ImageReadError, match="not a DICOM"):
        read_dicom(tmp_path / "fake.dcm")
    wrong = write_dicom(tmp_path / "short.dcm", np.ones((4, 4), np.int16), pixel_bytes=b"\0" * 10)
    with pytest.raises(ImageReadError, match="pixel data"):
        read_image(wrong)


def test_dicom_without_pixel_data(tmp_path):
    path = write_dicom(tmp_path / "a.dcm", np.ones((2, 2), np.int16))
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(tmp_path / "rows_no_pixels.dcm")
    with pytest.raises(ImageReadError, match="no Pixel Data element"):
        read_image(tmp_path / "rows_no_pixels.dcm")
    for keyword in ("Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
                    "SamplesPerPixel", "PhotometricInterpretation"):
        delattr(ds, keyword)
    ds.save_as(tmp_path / "sr.dcm")
    with pytest.raises(ImageReadError, match="no pixel data: the DICOM object is not an image"):
        read_image(tmp_path / "sr.dcm")


@pytest.mark.parametrize("syntax, match", [
    ("1.2.840.10008.1.2.4.201", r"High-Throughput JPEG 2000.*pylibjpeg-openjpeg"),
    ("1.2.840.10008.1.2.4.100", r"MPEG2.*no Python decoder"),
])
def test_unsupported_transfer_syntax_named(tmp_path, syntax, match):
    from pydicom.encaps import encapsulate

    path = write_dicom(tmp_path / "c.dcm", np.zeros((4, 4), np.uint16), syntax=syntax,
                       pixel_bytes=encapsulate([b"\x00" * 16]))
    with pytest.raises(ImageReadError, match=match) as info:
        read_image(path)
    assert syntax in str(info.value)


def test_missing_empty_and_unknown_files(tmp_path):
    with pytest.raises(ImageReadError, match="file not found"):
        read_image(tmp_path / "nope.png")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty file"):
        read_image(tmp_path / "empty.png")
    (tmp_path / "x.bin").write_bytes(b"hello world")
    with pytest.raises(ImageReadError, match="unrecognised format"):
        read_image(tmp_path / "x.bin")
    (tmp_path / "bad.png").write_bytes(b"not a png at all")
    with pytest.raises(ImageReadError, match="PNG"):
        read_image(tmp_path / "bad.png")


# -------------------------------------------------------------------------------------------- npz


def test_npz_keys_and_errors(tmp_path):
    img = np.arange(20, dtype=np.float32).reshape(4, 5)
    np.savez(tmp_path / "one.npz", arr_0=img)
    np.testing.assert_array_equal(read_image(tmp_path / "one.npz").array, img)
    np.savez(tmp_path / "many.npz", train_images=img, train_labels=np.zeros(4))
    np.testing.assert_array_equal(read_npz(tmp_path / "many.npz", key="train_images").array, img)
    with pytest.raises(ImageReadError, match="no array 'image'.*train_images, train_labels"):
        read_npz(tmp_path / "many.npz", key="image")
    with pytest.raises(ImageReadError, match="pass key="):
        read_npz(tmp_path / "many.npz")
    with pytest.raises(ImageReadError, match="expected a 2D/3D"):
        read_npz(tmp_path / "many.npz", key="train_labels")
    np.savez(tmp_path / "obj.npz", image=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ImageReadError, match="corrupt npz|pickle"):
        read_npz(tmp_path / "obj.npz")
    with pytest.raises(ImageReadError, match="corrupt npz"):
        read_image(_truncate(tmp_path / "many.npz", 0.5))


# ----------------------------------------------------------------------------------- display


def test_apply_window_values_and_bad_width():
    out = apply_window(np.array([-100.0, 0.0, 50.0, 100.0, 300.0]), 50, 100)
    np.testing.assert_allclose(out, [0.0, 0.0, 0.5, 1.0, 1.0])
    assert out.dtype == np.float32
    with pytest.raises(ValueError, match="width"):
        apply_window(np.zeros(2), 0, 0)


def test_to_uint8_constant_and_nan_images():
    flat = ImageData(np.full((3, 3), 7.0, np.float32), ImageMeta(source="x", format="nifti"))
    np.testing.assert_array_equal(to_uint8(flat), np.zeros((3, 3), np.uint8))
    nan = ImageData(np.array([[np.nan, 0.0], [1.0, 2.0]]), ImageMeta(source="x", format="nifti"))
    np.testing.assert_array_equal(to_uint8(nan), [[0, 0], [128, 255]])


def test_describe_summary(tmp_path):
    path = write_dicom(tmp_path / "ct.dcm", np.array([[0, 100]], np.int16), slope=1.0, intercept=-50.0)
    summary = describe(read_image(path))
    assert summary["shape"] == [1, 2] and summary["dtype"] == "float32"
    assert (summary["min"], summary["max"]) == (-50.0, 50.0) and summary["format"] == "dicom"
    assert not math.isnan(summary["spacing"][0])


# -------------------------------------------------------------------------------------------- CLI


def test_cli_info_prints_meta_and_fails_cleanly(tmp_path, capsys):
    from typer.testing import CliRunner

    from medvl.cli import main
    from medvl.cli.app import app

    path = write_dicom(tmp_path / "ct.dcm", np.array([[0, 100]], np.int16), slope=1.0, intercept=-50.0,
                       window=(40, 400))
    result = CliRunner().invoke(app, ["data", "info", str(path), "--window", "lung"])
    assert result.exit_code == 0, result.output
    assert "dicom" in result.output and "[-600.0, 1500.0]" in result.output and "float32" in result.output
    with pytest.raises(SystemExit) as exc:
        main(["data", "info", str(tmp_path / "missing.dcm")])
    assert exc.value.code == 2
    assert "file not found" in capsys.readouterr().err


def test_colour_dicom_and_real_truncated_file():
    """pydicom's bundled sample files (real encoders' output), available offline."""
    from pydicom.data import get_testdata_file

    ybr = read_image(get_testdata_file("SC_ybr_full_422_uncompressed.dcm"))
    assert ybr.array.shape == (100, 100, 3) and ybr.array.dtype == np.uint8
    assert ybr.meta.photometric == "RGB (converted from YBR_FULL_422)"
    np.testing.assert_array_equal(to_uint8(ybr), ybr.array)
    cine = get_testdata_file("SC_rgb_rle_2frame.dcm")
    clip = read_image(cine)  # a colour cine is read whole as a T x H x W x 3 clip
    assert clip.array.shape == (2, 100, 100, 3) and clip.meta.extra["cine"] is True
    assert read_image(cine, frame=1).array.shape == (100, 100, 3)
    with pytest.raises(ImageReadError, match=r"truncated DICOM file: element \(7FE0,0010\)"):
        read_image(get_testdata_file("MR_truncated.dcm"))


def test_in_memory_dataset_gives_the_same_image_as_the_file(tmp_path):
    import io

    v = np.arange(30, dtype=np.uint16).reshape(5, 6) * 100
    path = write_dicom(tmp_path / "m1.dcm", v, bits=12, photometric="MONOCHROME1", window=(1500, 2000))
    from_file = read_dicom(path)
    from_memory = image_from_dataset(pydicom.dcmread(io.BytesIO(path.read_bytes())), "upload")
    np.testing.assert_array_equal(from_memory.array, from_file.array)
    np.testing.assert_array_equal(to_uint8(from_memory), to_uint8(from_file))
    assert from_memory.meta.source == "upload" and from_memory.meta.window == from_file.meta.window
    with pytest.raises(ImageReadError, match="upload"):
        image_from_dataset(Dataset(), "upload")
