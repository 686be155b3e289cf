"""Medical image readers: PNG/JPEG/TIFF, DICOM (single, multi-frame, series folder), NIfTI, npz.

Every reader returns an :class:`ImageData` (a numpy array plus an :class:`ImageMeta`) and every
failure raises :class:`~medvl.errors.ImageReadError` naming the file and a specific reason, so that
``medvl data check`` and the dataset can report *which* file is bad and *why* instead of a raw
pydicom/PIL/nibabel traceback.

Conventions (the contract other modules rely on):

* **Values are kept, display is separate.** DICOM pixels go through the Modality LUT
  (RescaleSlope/Intercept via pydicom's ``apply_modality_lut``) and are returned as float32 in
  modality units (HU for CT). The VOI window is only *recorded* in ``meta.window`` (or, for a VOI
  LUT Sequence, in ``meta.extra["voi_lut"]``); :func:`to_uint8` applies it. A window destroys
  information (everything outside it saturates), so it is the consumer's choice when to apply it.
* **MONOCHROME1 is normalised at read time.** MONOCHROME1 means "low values are bright". The
  reader maps values ``v -> K - v`` with ``K = min + max`` of the representable modality range
  (``meta.extra["inversion_sum"]``) and moves the window centre the same way, so every consumer
  sees MONOCHROME2 polarity (air dark, bone bright) and ``meta.photometric`` says what was done.
  An *explicit* window passed by the caller is given in the file's own units (what a DICOM viewer
  shows) and is converted the same way.
* **Axis order.** 2D is ``H x W``, colour is ``H x W x 3``, DICOM volumes/multi-frame are
  ``D x H x W`` with spacing ``(z, row, col)`` in mm. NIfTI is reoriented to RAS with
  ``nibabel.as_closest_canonical`` and kept in NIfTI axis order (i->R, j->A, k->S) with the zooms
  of those axes as spacing; reorienting instead of trusting the array order keeps images and
  label maps from different scanners aligned.
* Windowing uses the linear form ``clip((x - (c - w/2)) / w, 0, 1)`` (as MONAI's
  ``ScaleIntensityRange``); it differs from DICOM's ``LINEAR`` VOI function by half a unit, but is
  exactly symmetric under the MONOCHROME1 inversion above.
"""

from __future__ import annotations

import hashlib
import math
import warnings
import zipfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medvl.errors import ConfigError, ImageReadError

FORMATS = ("png", "jpeg", "tiff", "dicom", "dicom-series", "nifti", "npz")
#: Named CT windows (centre, width) in HU, accepted wherever a ``window`` argument is.
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "mediastinum": (50.0, 350.0),
    "soft-tissue": (40.0, 400.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
}
_DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")
_PILLOW_FORMATS = ("png", "jpeg")

WindowArg = tuple[float, float] | str | None


@dataclass
class ImageMeta:
    """What a reader knows about an image besides its pixels (see the module docstring)."""

    source: str
    format: str
    modality: str = ""
    spacing: tuple[float, ...] = ()
    orientation: str = ""
    photometric: str = ""
    window: tuple[float, float] | None = None
    bits: int = 8
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-friendly dict (numpy arrays become lists) for reports and ``data info``."""
        return _jsonable(asdict(self))


@dataclass
class ImageData:
    """Pixels plus metadata; the unit every reader returns."""

    array: np.ndarray
    meta: ImageMeta


# ----------------------------------------------------------------------------------------- helpers

def file_hash(path: Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes: identical files are the same image whatever their names.

    Lives with the readers (the lowest module that touches files) so the checker, the leakage
    report, the preprocessing cache and the bench's result store share it without importing each other.
    """
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _jsonable(obj: Any) -> Any:
    """Recursively turn numpy values/tuples into plain Python so ``json.dumps`` works."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _check_file(path: Path) -> None:
    """Fail early with a precise reason instead of a library's generic I/O error."""
    if not path.exists():
        raise ImageReadError(path, "file not found")
    if not path.is_file():
        raise ImageReadError(path, "not a regular file")
    if path.stat().st_size == 0:
        raise ImageReadError(path, "empty file (0 bytes)")


def _describe_exc(exc: BaseException) -> str:
    """``TypeName: message`` so that reasons stay informative but one line long."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _resolve_window(window: WindowArg) -> tuple[float, float] | str | None:
    """Validate the ``window`` argument: ``"auto"``, ``None``, a preset name or ``(center, width)``.

    A bad window is a caller mistake, not a bad file, hence :class:`ConfigError`.
    """
    if window is None or window == "auto":
        return window
    if isinstance(window, str):
        key = window.strip().lower()
        if key in ("none", "off"):
            return None
        if key in WINDOW_PRESETS:
            return WINDOW_PRESETS[key]
        raise ConfigError(
            f"unknown window {window!r}; use 'auto', None, (center, width) or one of "
            f"{', '.join(sorted(WINDOW_PRESETS))}"
        )
    try:
        center, width = (float(v) for v in window)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"window must be (center, width), got {window!r}") from exc
    if not (math.isfinite(center) and math.isfinite(width)) or width <= 0:
        raise ConfigError(f"window width must be a finite number > 0, got (center={center}, width={width})")
    return center, width


def parse_window(text: str | None) -> WindowArg:
    """Window from command-line text: ``auto``, ``none``, a preset name or ``center,width``."""
    if text is None:
        return "auto"
    if "," in text:
        parts = text.split(",")
        try:
            values = tuple(float(p) for p in parts)
        except ValueError as exc:
            raise ConfigError(f"window {text!r}: expected 'center,width' numbers, e.g. 40,400") from exc
        if len(values) != 2:
            raise ConfigError(f"window {text!r}: expected exactly two numbers 'center,width'")
        return _resolve_window(values)
    return _resolve_window(text)


def _bits_of(array: np.ndarray) -> int:
    return int(array.dtype.itemsize * 8)


def _squeeze_rgb(array: np.ndarray, extra: dict) -> tuple[np.ndarray, str]:
    """Drop alpha, and collapse grey images stored as three identical channels to 2D.

    Many chest X-ray JPEG/PNG files are grey pictures saved as RGB; keeping them 3-channel would
    make the same picture look different to the model depending on how it was saved.
    """
    if array.ndim == 3 and array.shape[-1] == 4:
        array = array[..., :3]
        extra["alpha_dropped"] = True
    if array.ndim == 3 and array.shape[-1] == 3:
        if np.array_equal(array[..., 0], array[..., 1]) and np.array_equal(array[..., 0], array[..., 2]):
            extra["gray_from_rgb"] = True
            return np.ascontiguousarray(array[..., 0]), ""
        return array, "RGB"
    return array, ""


def _is_rgb(image: ImageData) -> bool:
    arr = image.array
    return arr.ndim in (3, 4) and arr.shape[-1] == 3 and image.meta.photometric.upper().startswith("RGB")


def _select_frame(data: ImageData, frame: int | None) -> ImageData:
    """Pick one slice along the first axis of a (non-colour) 3D array."""
    if frame is None:
        return data
    arr = data.array
    if arr.ndim != 3 or _is_rgb(data):
        raise ImageReadError(data.meta.source, f"frame={frame} requested but the image is 2D {arr.shape}")
    if not 0 <= frame < arr.shape[0]:
        raise ImageReadError(data.meta.source, f"frame {frame} out of range: the image has {arr.shape[0]} frames")
    data.meta.extra["frame"] = frame
    data.meta.extra.setdefault("n_frames", arr.shape[0])
    if len(data.meta.spacing) == 3:
        data.meta.spacing = data.meta.spacing[1:]
    return ImageData(np.ascontiguousarray(arr[frame]), data.meta)


# ------------------------------------------------------------------------------------- dispatching


def sniff_format(path: str | Path) -> str:
    """Guess the format from the first bytes, falling back on the suffix; raise if neither knows it.

    Content first because real datasets have DICOM files without suffix (``ct_dicom_series/7106``)
    and PNGs named ``.jpg``.
    """
    path = Path(path)
    if path.is_dir():
        return "dicom-series"
    _check_file(path)
    with path.open("rb") as fh:
        head = fh.read(352)
    name = path.name.lower()
    if head[128:132] == b"DICM":
        return "dicom"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if head[344:348] in (b"n+1\x00", b"ni1\x00") or head[4:8] == b"n+2\x00" or name.endswith((".nii", ".nii.gz")):
        return "nifti"
    if head.startswith(b"PK\x03\x04") or name.endswith(".npz"):
        return "npz"
    by_suffix = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".tif": "tiff", ".tiff": "tiff"}
    if path.suffix.lower() in by_suffix:
        return by_suffix[path.suffix.lower()]
    if path.suffix.lower() in _DICOM_SUFFIXES:
        return "dicom"
    raise ImageReadError(
        path,
        f"unrecognised format (suffix {path.suffix or 'none'!r}, first bytes {head[:8]!r}); supported: "
        "PNG, JPEG, TIFF, DICOM (file or series folder), NIfTI (.nii/.nii.gz), .npz",
    )


def split_frame_selector(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """``clip.dcm#frame=12`` -> (``clip.dcm``, {"frame": 12}); ``clip.dcm#frames=0:64:2`` -> {"frames": slice}.

    A manifest cell can so pick one frame of a cine/multi-frame file or sample a clip from it. Only
    applies when the path as written does not exist (a real file name may contain ``#``).
    """
    path = Path(path)
    if "#" not in path.name or path.exists():
        return path, {}
    base, _, sel = str(path).rpartition("#")
    key, _, value = sel.partition("=")
    try:
        if key == "frame":
            return Path(base), {"frame": int(value)}
        if key == "frames":
            parts = [int(v) if v.strip() else None for v in value.split(":")]
            if len(parts) not in (2, 3):
                raise ValueError(value)
            return Path(base), {"frames": slice(*parts)}
    except ValueError:
        pass
    raise ImageReadError(path, f"bad frame selector {'#' + sel!r}; use #frame=N or #frames=START:STOP[:STEP]")


def read_image(path: str | Path, *, window: WindowArg = "auto", frame: int | None = None) -> ImageData:
    """Read any supported image; a folder is read as one DICOM series.

    ``window``: ``"auto"`` records the file's own VOI window (DICOM only), ``(center, width)`` or a
    preset name (:data:`WINDOW_PRESETS`) records that window, ``None`` records none. ``frame``
    selects one frame of a multi-frame DICOM / slice of a volume along its first axis. A path may
    end in a frame selector (:func:`split_frame_selector`): ``#frame=N`` or ``#frames=START:STOP[:STEP]``.
    """
    path, selector = split_frame_selector(path)
    if "frame" in selector:
        if frame is not None and frame != selector["frame"]:
            raise ConfigError(f"{path}: frame={frame} contradicts the path's #frame={selector['frame']}")
        frame = selector["frame"]
    if "frames" in selector:
        data = read_image(path, window=window, frame=frame)
        arr = data.array
        if arr.ndim not in (3, 4) or (arr.ndim == 3 and _is_rgb(data)):
            raise ImageReadError(path, f"#frames= needs a multi-frame file or volume, got shape {arr.shape}")
        picked = np.ascontiguousarray(arr[selector["frames"]])
        if picked.shape[0] == 0:
            raise ImageReadError(path, f"#frames={selector['frames'].start}:{selector['frames'].stop} selects no "
                                       f"frame of {arr.shape[0]}")
        data.meta.extra["frames"] = [selector["frames"].start, selector["frames"].stop, selector["frames"].step]
        data.meta.extra["n_frames_selected"] = int(picked.shape[0])
        return ImageData(picked, data.meta)
    resolved = _resolve_window(window)
    fmt = sniff_format(path)
    if fmt == "dicom":
        return read_dicom(path, window=resolved, frame=frame)
    if fmt == "dicom-series":
        return _select_frame(read_dicom_series(path, window=resolved), frame)
    if fmt == "nifti":
        if frame is not None:
            raise ConfigError("frame= is not supported for NIfTI (index the RAS array instead)")
        data = read_nifti(path)
    elif fmt == "npz":
        data = read_npz(path)
    elif fmt == "tiff":
        data = _read_tiff(path)
    else:
        data = _read_pillow(path, fmt)
    if isinstance(resolved, tuple):
        data.meta.window = resolved
    return _select_frame(data, frame)


# ------------------------------------------------------------------------------ PNG / JPEG / TIFF


def _read_pillow(path: Path, fmt: str) -> ImageData:
    """PNG/JPEG via Pillow; 8- and 16-bit grey are returned unchanged (uint8 / uint16)."""
    from PIL import Image, UnidentifiedImageError

    extra: dict[str, Any] = {}
    try:
        with Image.open(path) as im:
            im.load()
            extra["pil_mode"] = im.mode
            if getattr(im, "n_frames", 1) > 1:
                extra["n_frames_in_file"] = im.n_frames  # animated PNG: first frame only
            if im.mode in ("1", "LA", "La"):
                im = im.convert("L")
            elif im.mode == "P":
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            elif im.mode not in ("L", "I", "F", "RGB", "RGBA") and not im.mode.startswith("I;16"):
                im = im.convert("RGB")
            array = np.asarray(im).copy()
    except UnidentifiedImageError as exc:
        raise ImageReadError(path, f"not a valid {fmt.upper()} file ({_describe_exc(exc)})") from exc
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
        raise ImageReadError(path, f"truncated or corrupt {fmt.upper()} file ({_describe_exc(exc)})") from exc
    return _finish_raster(path, fmt, array, extra)


def _read_tiff(path: Path) -> ImageData:
    """TIFF via tifffile: keeps 16-bit/float samples and multi-page stacks (-> D x H x W)."""
    import tifffile

    extra: dict[str, Any] = {}
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with tifffile.TiffFile(path) as tif:
                extra["n_pages"] = len(tif.pages)
                axes = tif.series[0].axes
                array = tif.asarray()
    except Exception as exc:  # tifffile raises many types (TiffFileError, struct.error, ValueError...)
        raise ImageReadError(path, f"truncated or corrupt TIFF file ({_describe_exc(exc)})") from exc
    problems = [str(w.message) for w in caught if "tifffile" in str(w.filename) or "Tiff" in str(w.message)]
    if problems:  # tifffile logs (not raises) on unreadable strips and fills them with zeros
        raise ImageReadError(path, f"truncated or corrupt TIFF file ({problems[0]})")
    if "S" in axes and axes.index("S") != len(axes) - 1 and array.ndim == len(axes):
        array = np.moveaxis(array, axes.index("S"), -1)  # planar RGB (S,Y,X) is not a 3-slice stack
    extra["axes"] = axes
    return _finish_raster(path, "tiff", array, extra)


def _finish_raster(path: Path, fmt: str, array: np.ndarray, extra: dict) -> ImageData:
    """Common checks for PNG/JPEG/TIFF arrays: dimensionality and RGB handling.

    Accepted: grey 2D, RGB ``H x W x 3`` and, for TIFF only, grey page stacks ``D x H x W``.
    """
    array, photometric = _squeeze_rgb(array, extra)
    image_ndim = array.ndim - (photometric == "RGB")
    if image_ndim != 2 and not (fmt == "tiff" and image_ndim == 3 and not photometric):
        raise ImageReadError(path, f"unsupported array shape {array.shape} for {fmt.upper()} "
                                   "(expected H x W, H x W x 3, or a grey TIFF page stack)")
    meta = ImageMeta(source=str(path), format=fmt, photometric=photometric, bits=_bits_of(array), extra=extra)
    return ImageData(array, meta)


# -------------------------------------------------------------------------------------------- npz


def read_npz(path: str | Path, key: str | None = None) -> ImageData:
    """One array of an ``.npz``; ``key=None`` takes the only array, or the one named ``image``.

    Pickled (object) arrays are refused: unpickling runs arbitrary code from the file.
    """
    path = Path(path)
    _check_file(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise ImageReadError(path, f"truncated or corrupt npz file ({_describe_exc(exc)})") from exc
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ImageReadError(path, "a .npy array, not an .npz archive")
    try:
        with archive:
            keys = list(archive.files)
            key = _pick_npz_key(path, keys, key)
            array = np.asarray(archive[key])
    except ImageReadError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as exc:
        raise ImageReadError(path, f"truncated or corrupt npz file ({_describe_exc(exc)})") from exc
    extra: dict[str, Any] = {"key": key, "keys": keys}
    array, photometric = _squeeze_rgb(array, extra) if array.ndim == 3 and min(array.shape[:2]) > 4 else (array, "")
    if array.ndim not in (2, 3) or array.dtype.kind not in "biuf":
        raise ImageReadError(path, f"array {key!r} has shape {array.shape} dtype {array.dtype}; "
                                   "expected a 2D/3D numeric image")
    meta = ImageMeta(source=str(path), format="npz", photometric=photometric, bits=_bits_of(array), extra=extra)
    return ImageData(array, meta)


def _pick_npz_key(path: Path, keys: list[str], key: str | None) -> str:
    if not keys:
        raise ImageReadError(path, "npz archive holds no arrays")
    if key is not None:
        if key not in keys:
            raise ImageReadError(path, f"npz has no array {key!r}; available keys: {', '.join(keys)}")
        return key
    if len(keys) == 1:
        return keys[0]
    if "image" in keys:
        return "image"
    raise ImageReadError(path, f"npz holds several arrays ({', '.join(keys)}); pass key= to choose one")


# ------------------------------------------------------------------------------------------ NIfTI


def read_nifti(path: str | Path) -> ImageData:
    """NIfTI-1/2 reoriented to RAS (``as_closest_canonical``), zooms as spacing, affine in extra."""
    import nibabel as nib

    path = Path(path)
    _check_file(path)
    try:
        img = nib.load(str(path), mmap=False)
        original = "".join(nib.aff2axcodes(img.affine))
        canonical = nib.as_closest_canonical(img)
        array = np.asarray(canonical.dataobj)
    except Exception as exc:  # nibabel raises ImageFileError, EOFError, zlib/gzip errors, ValueError...
        raise ImageReadError(path, f"truncated or corrupt NIfTI file ({_describe_exc(exc)})") from exc
    # Native byte order and contiguous memory: big-endian files and flipped views surprise torch.
    array = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("="))
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3):
        raise ImageReadError(path, f"NIfTI has shape {array.shape}: only single 2D/3D volumes are supported "
                                   "(4D time series / vector images are not)")
    zooms = tuple(float(z) for z in canonical.header.get_zooms()[: array.ndim])
    extra = {"affine": canonical.affine.copy(), "original_orientation": original,
             "units": canonical.header.get_xyzt_units()[0] or ""}
    meta = ImageMeta(source=str(path), format="nifti", spacing=zooms,
                     orientation="".join(nib.aff2axcodes(canonical.affine)), bits=_bits_of(array), extra=extra)
    return ImageData(array, meta)


# ------------------------------------------------------------------------------------------ DICOM


def load_dicom_dataset(path: str | Path, *, stop_before_pixels: bool = False):
    """``pydicom.dcmread`` that turns every failure, including silent truncation, into ImageReadError.

    pydicom reads a truncated file without complaint (it just stops, or drops the last element
    with a warning), so truncation is detected here from the last element's declared length.
    Shared with :mod:`medvl.data.deid`.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    path = Path(path)
    _check_file(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
        except InvalidDicomError as exc:
            ds = _force_read(path, exc)
        except Exception as exc:
            raise ImageReadError(path, f"corrupt DICOM file ({_describe_exc(exc)})") from exc
    messages = [str(w.message) for w in caught]
    if any("End of file" in m or "truncat" in m.lower() for m in messages):
        raise ImageReadError(path, "truncated DICOM file (end of file reached inside an element)")
    for message in messages:
        warnings.warn(f"{path}: {message}", UserWarning, stacklevel=2)
    if len(ds) == 0:
        raise ImageReadError(path, "DICOM file has no data elements after the file meta header (truncated?)")
    _check_truncation(ds, path)
    return ds


def _force_read(path: Path, original: Exception):
    """Files named ``.dcm`` without the 128-byte preamble + 'DICM' are still sometimes valid DICOM."""
    import pydicom

    reason = "not a DICOM file (no 'DICM' marker at byte 128)"
    if path.suffix.lower() not in _DICOM_SUFFIXES:
        raise ImageReadError(path, reason) from original
    try:
        ds = pydicom.dcmread(path, force=True)
        looks_valid = any(k in ds for k in ("SOPClassUID", "PixelData", "Rows"))
    except Exception as exc:
        raise ImageReadError(path, reason) from exc
    if not looks_valid:
        raise ImageReadError(path, reason)
    return ds


def _check_truncation(ds, path: Path) -> None:
    """Compare the last top-level element's declared length with the bytes actually read."""
    from pydicom.dataelem import RawDataElement

    last = ds.get_item(max(ds.keys()))
    if isinstance(last, RawDataElement) and last.value is not None and last.length != 0xFFFFFFFF:
        if len(last.value) < last.length:
            raise ImageReadError(
                path,
                f"truncated DICOM file: element {last.tag} declares {last.length} bytes, "
                f"only {len(last.value)} present",
            )


def _check_pixel_data(ds, path: Path) -> None:
    """Precise reasons for 'no pixels': truncated image, non-image object, undecodable syntax."""
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        if "Rows" in ds:
            raise ImageReadError(path, "no Pixel Data element although Rows/Columns are set (file truncated?)")
        sop = getattr(ds.get("SOPClassUID"), "name", "") or "unknown SOP class"
        raise ImageReadError(path, f"no pixel data: the DICOM object is not an image ({sop})")
    _check_transfer_syntax(ds, path)


def _check_transfer_syntax(ds, path: Path) -> None:
    """Name the transfer syntax and the package that would decode it, before pydicom fails vaguely."""
    from pydicom.pixels import get_decoder

    meta = getattr(ds, "file_meta", None)
    uid = meta.get("TransferSyntaxUID") if meta is not None else None
    if uid is None:
        return
    try:
        decoder = get_decoder(uid)
    except NotImplementedError as exc:
        raise ImageReadError(path, f"unsupported transfer syntax {uid.name} ({uid}): no Python decoder "
                                   "exists for it (convert with dcmtk/gdcm first)") from exc
    if not decoder.is_available:
        needs = "; ".join(decoder.missing_dependencies) or "a pydicom pixel decoding plugin"
        raise ImageReadError(path, f"unsupported transfer syntax {uid.name} ({uid}): no decoder installed; "
                                   f"install one of: {needs}")


def _functional(ds, sequence: str, attribute: str, frame: int = 0) -> Any:
    """An attribute of enhanced multi-frame DICOM: top level, else per-frame group, else shared group."""
    if attribute in ds:
        return ds.get(attribute)
    for groups, index in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        items = ds.get(groups)
        if items and len(items) > index and sequence in items[index] and items[index][sequence].value:
            value = items[index][sequence][0].get(attribute)
            if value is not None:
                return value
    return None


def _first(value: Any) -> float | None:
    """First value of a possibly multi-valued DS (WindowCenter can hold several windows)."""
    if value is None or value == "":
        return None
    if isinstance(value, Sequence) and not isinstance(value, str):
        value = value[0] if len(value) else None
    return None if value is None else float(value)


def _rescale(ds, frame: int) -> tuple[float, float] | None:
    slope = _first(_functional(ds, "PixelValueTransformationSequence", "RescaleSlope", frame))
    intercept = _first(_functional(ds, "PixelValueTransformationSequence", "RescaleIntercept", frame))
    if slope is None or intercept is None:
        return None
    return slope, intercept


def _modality_values(raw: np.ndarray, ds, frames: list[int]) -> np.ndarray:
    """Stored values -> modality units (float32) with pydicom's ``apply_modality_lut``.

    Enhanced multi-frame files keep RescaleSlope/Intercept in functional groups (possibly per
    frame), which ``apply_modality_lut`` does not look at, so those are applied frame by frame.
    """
    from pydicom.pixels import apply_modality_lut

    if "ModalityLUTSequence" in ds or "RescaleSlope" in ds:
        return np.asarray(apply_modality_lut(raw, ds), dtype=np.float32)
    values = raw.astype(np.float32)
    stack = values if values.ndim == 3 else values[None]
    for i, frame in enumerate(frames):
        params = _rescale(ds, frame)
        if params is not None:
            stack[i] = stack[i] * np.float32(params[0]) + np.float32(params[1])
    return values


def _inversion_sum(ds) -> float:
    """``min + max`` of the representable modality range, so that ``K - v`` flips MONOCHROME1."""
    from pydicom.pixels import apply_modality_lut

    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 8)))
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    if "ModalityLUTSequence" in ds or "RescaleSlope" in ds:
        mapped = np.asarray(apply_modality_lut(np.array([lo, hi], dtype=np.int64), ds), dtype=np.float64)
    else:
        slope, intercept = _rescale(ds, 0) or (1.0, 0.0)
        mapped = np.array([lo, hi], dtype=np.float64) * slope + intercept
    return float(mapped.min() + mapped.max())


def _voi_lut_table(ds) -> dict[str, Any] | None:
    """Tabulate the first VOI LUT Sequence item with pydicom's ``apply_voi`` (for :func:`to_uint8`)."""
    from pydicom.pixels.processing import apply_voi

    items = ds.get("VOILUTSequence")
    if not items:
        return None
    n_entries, first, _ = (int(v) for v in items[0].LUTDescriptor)
    n_entries = n_entries or 2**16
    inputs = np.arange(first, first + n_entries, dtype=np.int64)
    table = np.asarray(apply_voi(inputs, ds), dtype=np.float64)
    return {"first": first, "table": table}


def _header_window(ds, path: Path, extra: dict) -> tuple[float, float] | None:
    center = _first(_functional(ds, "FrameVOILUTSequence", "WindowCenter"))
    width = _first(_functional(ds, "FrameVOILUTSequence", "WindowWidth"))
    if center is None or width is None:
        return None
    if not (math.isfinite(center) and math.isfinite(width)) or width <= 0:
        extra["window_ignored"] = f"invalid header window (center={center}, width={width})"
        warnings.warn(f"{path}: ignoring invalid WindowCenter/Width ({center}, {width})", UserWarning,
                      stacklevel=3)
        return None
    function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
    if function != "LINEAR":
        extra["voi_lut_function"] = function  # applied linearly by to_uint8
    return center, width


def _grey_values(raw: np.ndarray, ds, path: Path, frames: list[int], window: Any,
                 extra: dict) -> tuple[np.ndarray, tuple[float, float] | None, str]:
    """Modality values, MONOCHROME1 normalisation and the window that applies to the result."""
    values = _modality_values(raw, ds, frames)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    chosen: tuple[float, float] | None = None
    if window == "auto":
        lut = _voi_lut_table(ds)
        if lut is not None:
            extra["voi_lut"] = lut
        else:
            chosen = _header_window(ds, path, extra)
    elif isinstance(window, tuple):
        chosen = window
    if photometric == "MONOCHROME1":
        k = _inversion_sum(ds)
        values = np.float32(k) - values
        extra["inversion_sum"] = k
        if chosen is not None:
            chosen = (k - chosen[0], chosen[1])
        photometric = "MONOCHROME2 (inverted from MONOCHROME1)"
    return values, chosen, photometric


def _pixel_spacing(ds) -> tuple[float, float] | None:
    spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing") or _functional(
        ds, "PixelMeasuresSequence", "PixelSpacing")
    if not spacing or len(spacing) < 2:
        return None
    return float(spacing[0]), float(spacing[1])


def _decode(ds, path: Path, frame: int | None) -> np.ndarray:
    """Decoded pixels (one frame when ``frame`` is given); decoding errors become ImageReadError."""
    _check_pixel_data(ds, path)
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frame is not None:
        if not 0 <= frame < n_frames:
            raise ImageReadError(path, f"frame {frame} out of range: the file has {n_frames} frame(s)")
        if n_frames > 1:
            ds.pixel_array_options(index=frame)
    try:
        return ds.pixel_array
    except Exception as exc:
        syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
        name = getattr(syntax, "name", "unknown transfer syntax")
        reason = "pixel data truncated or inconsistent with the header" if "less than expected" in str(exc) \
            else "cannot decode pixel data"
        raise ImageReadError(path, f"{reason} ({name}): {_describe_exc(exc)}") from exc


def read_dicom(path: str | Path, *, window: WindowArg = "auto", frame: int | None = None) -> ImageData:
    """One DICOM file: 2D, multi-frame (``D x H x W``, or one frame with ``frame=``) or colour."""
    path = Path(path)
    window = _resolve_window(window)
    return image_from_dataset(load_dicom_dataset(path), path, window=window, frame=frame)


def image_from_dataset(ds, source: str | Path = "<memory>", *, window: WindowArg = "auto",
                       frame: int | None = None) -> ImageData:
    """Same as :func:`read_dicom` for a pydicom Dataset already in memory (e.g. an upload read
    from bytes), so that in-memory and on-disk copies of a file give identical pictures.
    ``source`` only names the image in metadata and error messages."""
    path = Path(source)
    window = _resolve_window(window)
    raw = _decode(ds, path, frame)
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1))
    extra: dict[str, Any] = {"n_frames": n_frames, "transfer_syntax": _syntax_name(ds)}
    if frame is not None:
        extra["frame"] = frame
    if samples > 1:
        return _colour_dicom(raw, ds, path, frame, extra)
    expected = 3 if n_frames > 1 and frame is None else 2
    if raw.ndim != expected:
        raise ImageReadError(path, f"decoded pixel array has shape {raw.shape}, expected {expected}D")
    frames = list(range(n_frames)) if expected == 3 else [frame or 0]
    values, chosen, photometric = _grey_values(raw, ds, path, frames, window, extra)
    rescale = _rescale(ds, frames[0])
    if rescale is not None:
        extra["rescale_slope"], extra["rescale_intercept"] = rescale
    meta = ImageMeta(source=str(source), format="dicom", modality=str(ds.get("Modality", "")),
                     spacing=_dicom_spacing(ds, values.ndim), photometric=photometric, window=chosen,
                     bits=int(ds.get("BitsStored", 8)), extra=extra)
    return ImageData(values, meta)


def _syntax_name(ds) -> str:
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    return getattr(syntax, "name", "") or str(syntax or "")


def _dicom_spacing(ds, ndim: int) -> tuple[float, ...]:
    """(row, col) for 2D; (z, row, col) for multi-frame, z = NaN when the file does not say."""
    rc = _pixel_spacing(ds)
    if rc is None:
        return ()
    if ndim == 2:
        return rc
    z = _first(ds.get("SpacingBetweenSlices")) or _first(
        _functional(ds, "PixelMeasuresSequence", "SpacingBetweenSlices")) or _first(
        _functional(ds, "PixelMeasuresSequence", "SliceThickness"))
    return (z if z else float("nan"), *rc)


def _colour_dicom(raw: np.ndarray, ds, path: Path, frame: int | None, extra: dict) -> ImageData:
    """Colour DICOM (pydicom converts YBR to RGB): ``H x W x 3``, or a cine clip ``T x H x W x 3``.

    A multi-frame colour file (ultrasound/echo cine) without ``frame=`` is read whole as a clip;
    ``meta.extra["cine"]`` marks it and ``frame_time_ms`` keeps its timing. Datasets and encoders
    treat the frame axis like a volume's depth (``cine:`` encoders pool a 2D tower over it).
    """
    original = str(ds.get("PhotometricInterpretation", "RGB")).strip()
    if raw.ndim == 4 and frame is None:
        extra["cine"] = True
        frame_time = _first(ds.get("FrameTime"))
        if frame_time:
            extra["frame_time_ms"] = frame_time
    elif raw.ndim != 3:
        raise ImageReadError(path, f"colour DICOM decoded to shape {raw.shape}; expected H x W x 3 or a "
                                   "T x H x W x 3 clip")
    photometric = "RGB" if original == "RGB" else f"RGB (converted from {original})"
    meta = ImageMeta(source=str(path), format="dicom", modality=str(ds.get("Modality", "")),
                     spacing=_pixel_spacing(ds) or (), photometric=photometric,
                     bits=int(ds.get("BitsStored", 8)), extra=extra)
    return ImageData(raw, meta)


# ----------------------------------------------------------------------------------- DICOM series


def read_dicom_series(folder: str | Path, *, window: WindowArg = "auto") -> ImageData:
    """All slices of one DICOM series in a folder -> ``D x H x W`` float32, spacing ``(z, row, col)``.

    Slices are sorted by ImagePositionPatient projected on the slice normal (file names and
    InstanceNumber are unreliable). Irregular gaps are not averaged away: they are listed in
    ``meta.extra["slice_gaps"]``, ``spacing[0]`` is the median gap, and a warning is emitted.
    """
    folder = Path(folder)
    window = _resolve_window(window)
    if not folder.exists():
        raise ImageReadError(folder, "folder not found")
    if not folder.is_dir():
        raise ImageReadError(folder, "not a folder")
    slices, skipped = _load_series(folder)
    return series_from_datasets(slices, folder, window=window, skipped=skipped)


def series_from_datasets(slices: list[tuple[Path, Any]], folder: str | Path, *, window: WindowArg = "auto",
                         skipped: list[str] | None = None) -> ImageData:
    """:func:`read_dicom_series` for pydicom Datasets already in memory (e.g. a zip upload, de-identified first).

    ``slices``: ``(name, dataset)`` pairs (names only label slices in metadata and messages);
    ``folder`` names the series. Same checks, sorting and spacing as files in a folder.
    """
    folder = Path(folder)
    window = _resolve_window(window)
    if not slices:
        raise ImageReadError(folder, "no DICOM image slices in the series")
    slices = [(Path(p), ds) for p, ds in slices]
    _check_series(folder, slices)
    slices, positions, sorted_by = _sort_slices(folder, slices)
    extra: dict[str, Any] = {"n_slices": len(slices), "files": [p.name for p, _ in slices],
                             "sorted_by": sorted_by}
    if skipped:
        extra["skipped_files"] = skipped
    planes, chosen, photometric = [], None, ""
    for index, (path, ds) in enumerate(slices):
        raw = _decode(ds, path, None)
        if raw.ndim != 2:
            raise ImageReadError(path, f"series slice has shape {raw.shape}; expected single-frame 2D")
        values, window_i, photometric = _grey_values(raw, ds, path, [0], window, extra if index == 0 else {})
        planes.append(values)
        chosen = window_i if index == 0 else chosen
    z = _slice_spacing(folder, positions, slices[0][1], extra)
    first = slices[0][1]
    rescale = _rescale(first, 0)
    if rescale is not None:
        extra["rescale_slope"], extra["rescale_intercept"] = rescale
    meta = ImageMeta(source=str(folder), format="dicom-series", modality=str(first.get("Modality", "")),
                     spacing=(z, *(_pixel_spacing(first) or (float("nan"), float("nan")))),
                     photometric=photometric, window=chosen, bits=int(first.get("BitsStored", 8)), extra=extra)
    return ImageData(np.stack(planes), meta)


def _load_series(folder: Path) -> tuple[list[tuple[Path, Any]], list[str]]:
    """Read every DICOM image in the folder; non-DICOM files and non-image objects are skipped."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise ImageReadError(folder, "empty folder: no files to read as a DICOM series")
    slices, skipped = [], []
    for path in files:
        if not _has_dicom_marker(path) and path.suffix.lower() not in _DICOM_SUFFIXES:
            skipped.append(path.name)
            continue
        ds = load_dicom_dataset(path)
        if "PixelData" not in ds and "Rows" not in ds:  # DICOMDIR, SR, presentation state...
            skipped.append(path.name)
            continue
        slices.append((path, ds))
    if not slices:
        raise ImageReadError(folder, f"no DICOM image files among {len(files)} file(s) (e.g. {files[0].name})")
    return slices, skipped


def _has_dicom_marker(path: Path) -> bool:
    with path.open("rb") as fh:
        fh.seek(128)
        return fh.read(4) == b"DICM"


def _summarise(values: list[Any], names: list[str]) -> str:
    counts = Counter(values)
    parts = []
    for value, count in counts.most_common():
        example = names[values.index(value)]
        parts.append(f"{value} ({count} file(s), e.g. {example})")
    return "; ".join(parts)


def _check_series(folder: Path, slices: list[tuple[Path, Any]]) -> None:
    """One series, one size, one orientation, one pixel spacing, single-frame slices only."""
    names = [p.name for p, _ in slices]
    checks = (
        ("series", lambda ds: str(ds.get("SeriesInstanceUID", ""))),
        ("slice sizes", lambda ds: f"{ds.get('Rows')}x{ds.get('Columns')}"),
        ("orientations", lambda ds: _rounded(ds.get("ImageOrientationPatient"), 3)),
        ("pixel spacings", lambda ds: _rounded(ds.get("PixelSpacing"), 4)),
        ("frame counts", lambda ds: int(ds.get("NumberOfFrames", 1) or 1)),
    )
    for label, key in checks:
        values = [key(ds) for _, ds in slices]
        if len(set(values)) > 1:
            raise ImageReadError(folder, f"the folder mixes {label}: {_summarise(values, names)}")
    if int(slices[0][1].get("NumberOfFrames", 1) or 1) > 1:
        raise ImageReadError(folder, "series folder holds multi-frame files; read them one by one")


def _rounded(value: Any, digits: int) -> str:
    if not value:
        return "none"
    return "[" + ", ".join(f"{float(v):.{digits}f}" for v in value) + "]"


def _sort_slices(folder: Path, slices: list[tuple[Path, Any]]) -> tuple[list, np.ndarray | None, str]:
    """Sort by position along the normal; fall back on InstanceNumber (with a warning) if absent."""
    first = slices[0][1]
    if all("ImagePositionPatient" in ds for _, ds in slices) and "ImageOrientationPatient" in first:
        cosines = np.asarray([float(v) for v in first.ImageOrientationPatient], dtype=np.float64)
        normal = np.cross(cosines[:3], cosines[3:])
        positions = np.array([np.dot(normal, [float(v) for v in ds.ImagePositionPatient]) for _, ds in slices])
        order = np.argsort(positions, kind="stable")
        positions = positions[order]
        duplicates = np.flatnonzero(np.isclose(np.diff(positions), 0.0, atol=1e-4))
        if duplicates.size:
            names = [slices[order[i]][0].name for i in (duplicates[0], duplicates[0] + 1)]
            raise ImageReadError(folder, f"two slices at the same position {positions[duplicates[0]]:.3f} mm "
                                         f"({names[0]}, {names[1]}): several acquisitions in one folder?")
        return [slices[i] for i in order], positions, "ImagePositionPatient"
    warnings.warn(f"{folder}: ImagePositionPatient/ImageOrientationPatient missing; slices sorted by "
                  "InstanceNumber", UserWarning, stacklevel=3)
    ordered = sorted(slices, key=lambda item: int(item[1].get("InstanceNumber", 0) or 0))
    return ordered, None, "InstanceNumber"


def _slice_spacing(folder: Path, positions: np.ndarray | None, first, extra: dict) -> float:
    """Median gap between slices; irregular gaps are reported, never silently averaged."""
    if positions is None or len(positions) < 2:
        fallback = _first(first.get("SpacingBetweenSlices")) or _first(first.get("SliceThickness"))
        extra["spacing_z_source"] = "SpacingBetweenSlices/SliceThickness" if fallback else "unknown"
        return fallback or float("nan")
    gaps = np.diff(positions)
    median = float(np.median(gaps))
    extra["slice_positions"] = [round(float(p), 4) for p in positions]
    extra["slice_gaps"] = [round(float(g), 4) for g in gaps]
    irregular = bool(np.any(np.abs(gaps - median) > max(0.01, 0.01 * median)))
    extra["irregular_spacing"] = irregular
    if irregular:
        warnings.warn(
            f"{folder}: irregular slice gaps {extra['slice_gaps']} mm; spacing[0] is the median "
            f"{median:.4g} mm (resample with meta.extra['slice_positions'] for exact geometry)",
            UserWarning, stacklevel=3)
    return median


# --------------------------------------------------------------------------------------- display


def apply_window(array: np.ndarray, center: float, width: float) -> np.ndarray:
    """Linear window to float32 in [0, 1]: ``clip((x - (center - width/2)) / width, 0, 1)``."""
    if not (math.isfinite(center) and math.isfinite(width)) or width <= 0:
        raise ValueError(f"window width must be a finite number > 0, got (center={center}, width={width})")
    low = center - width / 2.0
    out = (np.asarray(array, dtype=np.float64) - low) / width
    return np.clip(np.nan_to_num(out, nan=0.0), 0.0, 1.0).astype(np.float32)


def _min_max(array: np.ndarray) -> np.ndarray:
    """Scale to [0, 1] over the whole array (a volume is scaled as one, not slice by slice)."""
    values = np.asarray(array, dtype=np.float64)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.zeros(values.shape, dtype=np.float32)
    low, high = float(finite.min()), float(finite.max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.float32)
    return np.clip(np.nan_to_num((values - low) / (high - low), nan=0.0), 0, 1).astype(np.float32)


def _apply_voi_table(array: np.ndarray, lut: dict[str, Any], inversion_sum: float | None) -> np.ndarray:
    """Look values up in a tabulated VOI LUT (indexed by the file's own, un-inverted values)."""
    table = np.asarray(lut["table"], dtype=np.float64)
    values = np.asarray(array, dtype=np.float64)
    if inversion_sum is not None:
        values = inversion_sum - values
    index = np.clip(np.rint(values) - int(lut["first"]), 0, table.size - 1).astype(np.int64)
    span = table.max() - table.min()
    out = (table[index] - table.min()) / span if span > 0 else np.zeros(index.shape)
    return (1.0 - out if inversion_sum is not None else out).astype(np.float32)


def to_uint8(image: ImageData) -> np.ndarray:
    """Display-ready uint8 picture with air dark for every photometric interpretation.

    Order of precedence: a tabulated VOI LUT (DICOM ``window="auto"``), then ``meta.window``,
    else uint8 data unchanged and other data min-max scaled over the whole array (16-bit PNG,
    float NIfTI...). RGB uint8 is returned unchanged. Data still marked plain ``MONOCHROME1``
    (built by hand, not by these readers) is inverted here.
    """
    arr = np.asarray(image.array)
    meta = image.meta
    if arr.dtype == np.uint8 and meta.window is None and "voi_lut" not in meta.extra \
            and meta.photometric.upper() != "MONOCHROME1":
        return arr.copy()
    if "voi_lut" in meta.extra:
        scaled = _apply_voi_table(arr, meta.extra["voi_lut"], meta.extra.get("inversion_sum"))
    elif meta.window is not None and not _is_rgb(image):
        scaled = apply_window(arr, *meta.window)
    else:
        scaled = _min_max(arr)
    if meta.photometric.upper() == "MONOCHROME1":
        scaled = 1.0 - scaled
    return np.rint(scaled * 255.0).astype(np.uint8)


def describe(image: ImageData) -> dict[str, Any]:
    """Summary for humans (``medvl data info``): metadata plus array shape/dtype/min/max."""
    arr = image.array
    finite = arr[np.isfinite(arr)] if arr.dtype.kind == "f" else arr
    summary = image.meta.to_dict()
    lut = summary["extra"].get("voi_lut")
    if lut is not None:
        summary["extra"]["voi_lut"] = f"VOI LUT, {len(lut['table'])} entries from {lut['first']}"
    summary.update(shape=list(arr.shape), dtype=str(arr.dtype),
                   min=float(finite.min()) if finite.size else None,
                   max=float(finite.max()) if finite.size else None)
    return summary
