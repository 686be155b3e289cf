"""Pictures in and out of the service: decode uploads in memory, de-identify DICOM, prepare model
input, make thumbnails.

Uploads never touch the filesystem: the bytes are sniffed (see :mod:`medvl.serve.security`),
decoded from a ``BytesIO`` and, for DICOM, stripped of patient identifiers *before* any field can
reach a log line, an error message or a response. Indexed files and uploads go through the same
``uint8 picture -> prepare_uint8 -> [0, 1] -> (x - mean) / std`` path so that querying with an
indexed image finds that very case with cosine ≈ 1.
"""

from __future__ import annotations

import io
import secrets
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medvl.errors import ImageReadError, MedvlError
from medvl.serve.security import ACCEPTED_FORMATS, sniff_format

UPLOAD = "<upload>"  # the only "path" an upload ever has in messages
MAX_PIXELS = 64_000_000  # decompression-bomb guard: a 10 MB PNG can claim 50k x 50k pixels
_SALT = secrets.token_hex(32)  # per-process pseudonymisation key, never logged or stored


class UnsupportedMediaError(MedvlError):
    """The upload is not one of the accepted image formats (HTTP 415)."""


@dataclass
class DecodedImage:
    """A decoded upload: display-ready uint8 pixels (HxW, HxWx3 or DxHxW) and non-identifying meta."""

    format: str
    pixels: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)
    # NIfTI / DICOM-zip uploads: the volume in its own units (HU for CT) with its spacing, so a checkpoint's
    # volume policy can map it exactly as in training (:func:`model_pixels`); never sent back to the client.
    volume: Any = field(default=None, repr=False)


# ------------------------------------------------------------------------------------ DICOM de-id


def deidentify_dicom(ds: Any) -> Any:
    """De-identify an in-memory pydicom Dataset in place with :func:`medvl.data.deid.deidentify_dataset`.

    :mod:`medvl.data.deid` owns the policy (PS3.15 basic profile subset: pseudonyms, date shifts,
    removed/emptied identifiers, private tags, UIDs). The salt is random per process: the server
    never needs to link two uploads of the same patient, so pseudonyms must not be stable either.
    """
    from medvl.data.deid import Pseudonymizer, deidentify_dataset

    deidentify_dataset(ds, Pseudonymizer(_SALT))
    return ds


# ------------------------------------------------------------------------------------ decoding
def _scale_to_uint8(arr: np.ndarray) -> np.ndarray:
    """Min-max scale any numeric array to uint8 (uint8 input is returned unchanged)."""
    if arr.dtype == np.uint8:
        return arr
    a = arr.astype(np.float32)
    finite = np.isfinite(a)
    if not finite.any():
        return np.zeros(a.shape, np.uint8)
    lo, hi = float(a[finite].min()), float(a[finite].max())
    a = np.where(finite, a, lo)
    if hi <= lo:
        return np.zeros(a.shape, np.uint8)
    return np.clip(np.round((a - lo) / (hi - lo) * 255.0), 0, 255).astype(np.uint8)


def _decode_raster(data: bytes, fmt: str) -> np.ndarray:
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        old_limit = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = MAX_PIXELS
        try:
            with Image.open(io.BytesIO(data)) as im:
                if im.width * im.height > MAX_PIXELS:
                    raise ImageReadError(UPLOAD, f"{im.width}x{im.height} pixels exceeds the limit of {MAX_PIXELS}")
                im.load()
                if im.mode in ("L", "RGB"):
                    return np.asarray(im)
                if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                    return _scale_to_uint8(np.asarray(im))
                if im.mode == "1":
                    return np.asarray(im.convert("L"))
                return np.asarray(im.convert("RGB"))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageReadError(UPLOAD, f"image too large to decode safely ({exc})") from exc
        except ImageReadError:
            raise
        except Exception as exc:  # PIL raises many types on corrupt data
            if fmt == "tiff":
                return _decode_tiff(data, exc)
            raise ImageReadError(UPLOAD, f"corrupt or unsupported {fmt.upper()} data ({type(exc).__name__})") from exc
        finally:
            Image.MAX_IMAGE_PIXELS = old_limit


def _decode_tiff(data: bytes, first_error: Exception) -> np.ndarray:
    """TIFFs PIL cannot read (float, multi-sample, compressed variants) via tifffile."""
    import tifffile

    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            page = tif.pages[0]
            if int(np.prod(page.shape)) > MAX_PIXELS:
                raise ImageReadError(UPLOAD, f"TIFF of shape {page.shape} exceeds the pixel limit")
            arr = page.asarray()
    except ImageReadError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise ImageReadError(UPLOAD, f"corrupt or unsupported TIFF data ({type(first_error).__name__})") from exc
    if arr.ndim == 3 and arr.shape[-1] not in (3, 4):
        arr = arr[arr.shape[0] // 2]
    return _scale_to_uint8(arr)


def _decode_dicom(data: bytes) -> tuple[np.ndarray, dict[str, Any]]:
    """Decode a DICOM upload from memory; the dataset is de-identified before anything reads it.

    Pixels go through :func:`medvl.data.io.image_from_dataset` + :func:`~medvl.data.io.to_uint8`,
    the same path as files on disk, so an upload and its indexed copy give identical pictures.
    """
    import pydicom

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=False)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types on corrupt files
        raise ImageReadError(UPLOAD, f"corrupt DICOM data ({type(exc).__name__})") from exc
    ds = deidentify_dicom(ds)  # before *anything* else reads the dataset
    if "PixelData" not in ds:
        raise ImageReadError(UPLOAD, "DICOM file has no pixel data")
    try:
        rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError) as exc:
        raise ImageReadError(UPLOAD, "DICOM has invalid Rows/Columns/NumberOfFrames") from exc
    if rows * cols * frames > MAX_PIXELS:
        raise ImageReadError(UPLOAD, f"DICOM of {frames}x{rows}x{cols} pixels exceeds the pixel limit")
    from medvl.data.io import image_from_dataset, to_uint8

    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    try:
        out = to_uint8(image_from_dataset(ds, UPLOAD, frame=0 if frames > 1 else None))
    except ImageReadError:
        raise
    except Exception as exc:  # noqa: BLE001 - missing codec, truncated data, bad LUT...
        raise ImageReadError(UPLOAD, f"cannot decode DICOM pixel data ({type(exc).__name__})") from exc
    meta = {"modality": str(ds.get("Modality", "")), "photometric": photometric, "deidentified": True}
    return out, meta


_NIFTI_MAGICS = (b"n+1\x00", b"ni1\x00")
MAX_NIFTI_BYTES = 2 * 4 * MAX_PIXELS  # decompression guard for .nii.gz uploads


def _nifti_bytes(data: bytes) -> bytes | None:
    """The uncompressed NIfTI-1 bytes of an upload (``.nii`` or ``.nii.gz``), or None if it is not one."""
    raw = data
    if data[:2] == b"\x1f\x8b":
        import zlib

        try:
            d = zlib.decompressobj(16 + zlib.MAX_WBITS)
            raw = d.decompress(data, MAX_NIFTI_BYTES)
            if d.unconsumed_tail:
                raise ImageReadError(UPLOAD, f"compressed NIfTI expands beyond {MAX_NIFTI_BYTES} bytes")
        except zlib.error:
            return None
    return raw if len(raw) >= 352 and raw[344:348] in _NIFTI_MAGICS else None


def _decode_nifti(raw: bytes) -> tuple[np.ndarray, dict[str, Any]]:
    """A NIfTI volume from memory, reoriented to RAS like files on disk; only pixels and geometry survive.

    De-identification: the header's free-text fields (``descrip``, ``aux_file``, ``intent_name``,
    ``db_name``) and any extensions may hold names or IDs; none of them is read or returned.
    """
    import nibabel as nib

    from medvl.data.io import ImageData, ImageMeta, to_uint8

    try:
        img = nib.as_closest_canonical(nib.Nifti1Image.from_bytes(raw))
        arr = np.asarray(img.dataobj)
    except Exception as exc:  # noqa: BLE001 - nibabel raises many types on corrupt data
        raise ImageReadError(UPLOAD, f"corrupt NIfTI data ({type(exc).__name__})") from exc
    while arr.ndim > 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 3:
        raise ImageReadError(UPLOAD, f"NIfTI upload has shape {arr.shape}; a single 3D volume is expected")
    if arr.size > MAX_PIXELS:
        raise ImageReadError(UPLOAD, f"NIfTI volume of {arr.shape} voxels exceeds the limit of {MAX_PIXELS}")
    spacing = [round(float(z), 4) for z in img.header.get_zooms()[:3]]
    image = ImageData(np.ascontiguousarray(arr), ImageMeta(source=UPLOAD, format="nifti",
                                                           spacing=tuple(float(z) for z in spacing)))
    return to_uint8(image), {"modality": "", "spacing": spacing, "orientation": "RAS", "deidentified": True,
                             "_volume": image}


MAX_ZIP_MEMBERS = 4000


def _decode_dicom_zip(data: bytes) -> tuple[np.ndarray, dict[str, Any]]:
    """A DICOM series uploaded as a zip, in memory: every slice de-identified as soon as it is parsed.

    Member names are never used (they may carry patient names); non-DICOM members are skipped and
    counted; the series gets the same checks, sorting and spacing as a folder on disk
    (:func:`medvl.data.io.series_from_datasets`), and a missing slice is refused.
    """
    import zipfile

    import pydicom

    from medvl.data.io import series_from_datasets, to_uint8
    from medvl.data.volume_preprocess import volume_problems

    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        members = [m for m in zf.infolist() if not m.is_dir()]
    except (zipfile.BadZipFile, ValueError) as exc:
        raise ImageReadError(UPLOAD, f"corrupt zip archive ({type(exc).__name__})") from exc
    if len(members) > MAX_ZIP_MEMBERS:
        raise ImageReadError(UPLOAD, f"zip holds {len(members)} files; at most {MAX_ZIP_MEMBERS} slices accepted")
    if sum(m.file_size for m in members) > MAX_NIFTI_BYTES:
        raise ImageReadError(UPLOAD, f"zip expands beyond {MAX_NIFTI_BYTES} bytes")
    slices, skipped = [], 0
    for m in members:
        try:
            ds = pydicom.dcmread(io.BytesIO(zf.read(m)), force=False)
        except Exception:  # noqa: BLE001 - not DICOM (readme, DICOMDIR index...): skipped and counted
            skipped += 1
            continue
        ds = deidentify_dicom(ds)  # before anything else reads the dataset
        if "PixelData" not in ds:
            skipped += 1
            continue
        slices.append((Path(f"slice{len(slices):04d}"), ds))
    if not slices:
        raise ImageReadError(UPLOAD, f"zip holds no DICOM image slices ({skipped} other file(s))")
    rows, cols = int(slices[0][1].get("Rows", 0) or 0), int(slices[0][1].get("Columns", 0) or 0)
    if rows * cols * len(slices) > MAX_PIXELS:
        raise ImageReadError(UPLOAD, f"series of {len(slices)}x{rows}x{cols} voxels exceeds the limit of {MAX_PIXELS}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # irregular gaps are judged below, not logged
        image = series_from_datasets(slices, UPLOAD)
    bad = [msg for code, msg in volume_problems(image) if code == "missing_slices"]
    if bad:
        raise ImageReadError(UPLOAD, bad[0])
    meta = {"modality": str(slices[0][1].get("Modality", "")), "photometric": image.meta.photometric,
            "deidentified": True, "spacing": [round(float(v), 4) for v in image.meta.spacing],
            "skipped_files": skipped, "_volume": image}
    return to_uint8(image), meta


def decode_upload(data: bytes) -> DecodedImage:
    """Sniff and decode uploaded bytes; raises :class:`UnsupportedMediaError` or :class:`ImageReadError`."""
    fmt = sniff_format(data)
    nifti = _nifti_bytes(data) if fmt is None else None
    if fmt is None and nifti is None and not data.startswith(b"PK\x03\x04"):
        raise UnsupportedMediaError(f"unsupported file type: expected {ACCEPTED_FORMATS}, NIfTI (.nii/.nii.gz) "
                                    "or a DICOM series as .zip; the file's leading bytes match none of them")
    meta: dict[str, Any] = {}
    if fmt is None and nifti is None:
        fmt = "dicom-zip"
        pixels, meta = _decode_dicom_zip(data)
    elif nifti is not None:
        fmt = "nifti"
        pixels, meta = _decode_nifti(nifti)
    elif fmt == "dicom":
        pixels, meta = _decode_dicom(data)
    else:
        pixels = _decode_raster(data, fmt)
    if pixels.size == 0 or pixels.ndim not in (2, 3):
        raise ImageReadError(UPLOAD, f"decoded to an unusable array of shape {pixels.shape}")
    volume = meta.pop("_volume", None)
    meta.update({"format": fmt, "shape": list(pixels.shape)})
    return DecodedImage(fmt, np.ascontiguousarray(pixels), meta, volume)


def model_pixels(decoded: DecodedImage, encoder: Any) -> np.ndarray:
    """The uint8 picture to feed ``encoder``: a volume upload mapped by the checkpoint's volume policy
    (``encoder.volume_policy``, the training config's ``data.volume``) exactly as the training dataset
    mapped it, else the display pixels (per-volume min-max, as a checkpoint without a policy was trained)."""
    policy = getattr(encoder, "volume_policy", None)
    if policy is None or decoded.volume is None:
        return decoded.pixels
    from medvl.data.volume_preprocess import prepare_volume_uint8

    return prepare_volume_uint8(decoded.volume, policy)


def read_picture(path: str | Path, volume: bool = False, volume_policy: Any = None) -> np.ndarray:
    """A local file (indexing, CLI queries) -> 2D uint8 picture, via the documented reader contract
    (:func:`medvl.data.io.read_image` + :func:`~medvl.data.io.to_uint8`; DICOM window, MONOCHROME1).

    Volumes give their middle slice and cine clips their middle frame; the photometric tag, not the
    shape, tells colour from a volume. ``volume_policy`` (a 3D checkpoint's, with ``volume=True``)
    maps the volume as the training dataset did instead of :func:`to_uint8`.
    """
    from medvl.data.io import read_image, to_uint8

    data = read_image(path)
    if volume and volume_policy is not None and data.array.ndim == 3 \
            and not data.meta.photometric.upper().startswith("RGB"):
        from medvl.data.volume_preprocess import prepare_volume_uint8

        return prepare_volume_uint8(data, volume_policy)
    arr = to_uint8(data)
    if volume:  # a 3D encoder's index: the whole volume (DxHxW, RAS for NIfTI)
        if arr.ndim != 3 or data.meta.photometric.upper().startswith("RGB"):
            raise ImageReadError(path, f"the model encodes volumes but this image is {arr.shape}")
        return np.ascontiguousarray(arr)
    if arr.ndim == 3 and not data.meta.photometric.upper().startswith("RGB"):
        arr = arr[arr.shape[0] // 2]
    elif arr.ndim == 4:  # a colour cine clip (T x H x W x 3): its middle frame, like a volume's middle slice
        arr = arr[arr.shape[0] // 2]
    return np.ascontiguousarray(arr)


# ------------------------------------------------------------------------------------ model input
def as_2d(pixels: np.ndarray) -> np.ndarray:
    """HxW / HxWx3 unchanged; a DxHxW volume gives its middle slice (the server's encoders are 2D)."""
    if pixels.ndim == 3 and pixels.shape[-1] not in (3, 4):
        return pixels[pixels.shape[0] // 2]
    if pixels.ndim == 3 and pixels.shape[-1] == 4:
        return pixels[..., :3]
    return pixels


def to_model_input(pixels: np.ndarray, image_size: int, in_chans: int, mean: Any, std: Any,
                   spatial_dims: int = 2) -> torch.Tensor:
    """uint8 picture -> ``FloatTensor[C,S,S]`` (``[C,S,S,S]`` with ``spatial_dims=3``) the encoder expects:
    same steps as the dataset cache (:func:`medvl.data.transforms.prepare_uint8`), scaled to [0, 1], then
    ``(x - mean) / std``. A 3D encoder gets the whole volume; a 2D one its middle slice."""
    from medvl.data.transforms import prepare_uint8

    if spatial_dims == 3:
        if pixels.ndim != 3 or pixels.shape[-1] in (3, 4):
            raise ImageReadError(UPLOAD, f"this model encodes volumes; the upload is a 2D image {pixels.shape}")
        x = prepare_uint8(pixels, image_size, in_chans, spatial_dims=3).float() / 255.0
    else:
        x = prepare_uint8(as_2d(pixels), image_size, in_chans).float() / 255.0
    shape = (-1,) + (1,) * (x.ndim - 1)
    m = torch.as_tensor(list(mean), dtype=torch.float32).view(shape)
    s = torch.as_tensor(list(std), dtype=torch.float32).view(shape)
    return (x - m) / s


def encoder_spatial_dims(encoder: Any) -> int:
    """3 for volume encoders (``resnet3d:``..., or a medvl CLIP checkpoint with a ``resnet3d`` tower), else 2."""
    if getattr(encoder, "spatial_dims", 2) == 3:
        return 3
    cfg = getattr(getattr(encoder, "model", None), "cfg", None)
    return 3 if getattr(getattr(cfg, "image", None), "type", "") == "resnet3d" else 2


def thumbnail_png(pixels: np.ndarray, size: int = 96) -> bytes:
    """A small PNG of the picture for result cards (aspect ratio kept)."""
    from PIL import Image

    arr = as_2d(pixels)
    im = Image.fromarray(arr if arr.dtype == np.uint8 else _scale_to_uint8(arr))
    im.thumbnail((size, size))
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return buf.getvalue()
