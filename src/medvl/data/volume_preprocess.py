"""CT/MR volume preprocessing you can check: geometry problems, an input-range sanity check, HU windows, resampling.

Why a module of its own: the failure modes of volumes are silent. A series with a missing slice
reads fine and stretches anatomy; a 5 mm x 0.7 mm x 0.7 mm volume resampled to isotropic voxels
invents data; a volume already scaled to [0, 1] passed through an HU window becomes a constant
(a reported pain point of CT-CLIP users). Here every such case is one line naming the file.

* :class:`VolumePolicy` — what a model expects: ``intensity`` (``window`` with ``window=(centre,
  width)`` in HU, ``zscore`` or ``minmax``), an optional ``target_spacing`` in mm, and limits
  (``max_anisotropy``, ``max_voxels``). ``to_dict``/``from_dict`` so it can be stored in a
  checkpoint's or card's config.
* :func:`volume_problems` — the geometry findings of one decoded volume (not 3D, unknown or
  non-positive spacing, irregular slice gaps i.e. missing slices, anisotropy beyond the limit, a
  resampled size beyond ``max_voxels``); ``medvl data check`` reports them per row.
* :func:`range_warning` — values that do not look like what the intensity policy expects.
* :func:`prepare_volume` — checks, then resamples to ``target_spacing`` (linear, axes kept in the
  reader's RAS order, so orientation never changes) and maps intensities to [0, 1] float32.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from medvl.data.io import ImageData
from medvl.errors import ConfigError, ImageReadError

INTENSITIES = ("window", "zscore", "minmax")


@dataclass(frozen=True)
class VolumePolicy:
    """How a model wants its volumes (stored with a checkpoint or a card as a plain dict)."""

    intensity: str = "window"
    window: tuple[float, float] | None = (40.0, 400.0)  # HU centre, width (soft tissue)
    target_spacing: tuple[float, float, float] | None = None  # mm, in the array's axis order (RAS)
    max_anisotropy: float = 4.0  # largest / smallest spacing before resampling is refused
    max_voxels: int = 512 ** 3
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.intensity not in INTENSITIES:
            raise ConfigError(f"volume intensity must be one of {', '.join(INTENSITIES)}, got {self.intensity!r}")
        if self.intensity == "window" and (self.window is None or not self.window[1] > 0):
            raise ConfigError(f"volume intensity 'window' needs window=(centre, width>0) in HU, got {self.window}")
        if self.target_spacing is not None and (len(self.target_spacing) != 3 or min(self.target_spacing) <= 0):
            raise ConfigError(f"target_spacing must be three positive mm values, got {self.target_spacing}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VolumePolicy:
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown volume policy key(s) {unknown}; valid: {', '.join(sorted(known))}")
        d = dict(d)
        for key in ("window", "target_spacing"):
            if d.get(key) is not None:
                d[key] = tuple(float(v) for v in d[key])
        return cls(**d)


def _spacing(image: ImageData) -> tuple[float, ...]:
    return tuple(float(s) for s in image.meta.spacing)


def volume_problems(image: ImageData, policy: VolumePolicy | None = None) -> list[tuple[str, str]]:
    """Geometry problems of one decoded volume as ``(code, clause)`` pairs (empty list = fine).

    Codes: ``not_3d``, ``spacing_unknown``, ``missing_slices``, ``anisotropic``, ``too_large``.
    """
    policy = policy or VolumePolicy()
    arr = image.array
    if arr.ndim != 3 or image.meta.photometric.upper().startswith("RGB"):
        return [("not_3d", f"expected a 3D volume, got shape {arr.shape}")]
    out = []
    sp = _spacing(image)
    if len(sp) != 3 or not all(math.isfinite(s) and s > 0 for s in sp):
        if not sp and image.meta.format == "npz" and policy.target_spacing is None:
            return out  # plain arrays (MedMNIST) carry no geometry: nothing to check, nothing to resample
        out.append(("spacing_unknown", f"spacing unknown or invalid ({sp or 'none'}); cannot check geometry "
                                       "or resample"))
        return out
    if image.meta.extra.get("irregular_spacing"):
        gaps = image.meta.extra.get("slice_gaps", [])
        median = float(np.median(gaps)) if gaps else sp[0]
        missing = [i for i, g in enumerate(gaps) if g > 1.5 * median]
        where = f" after slice {missing[0]}" if missing else ""
        out.append(("missing_slices", f"irregular slice gaps (a missing slice{where}? gaps "
                                      f"{sorted(set(gaps))[:4]} mm)"))
    ratio = max(sp) / min(sp)
    if ratio > policy.max_anisotropy:
        out.append(("anisotropic", f"anisotropic spacing {tuple(round(s, 3) for s in sp)} mm (ratio {ratio:.1f} "
                                   f"> {policy.max_anisotropy:g}); resampling would invent {ratio:.0f}x the data "
                                   "along one axis"))
    if policy.target_spacing is not None:
        shape = resampled_shape(arr.shape, sp, policy.target_spacing)
        if int(np.prod(shape)) > policy.max_voxels:
            out.append(("too_large", f"at spacing {policy.target_spacing} mm the volume would be {shape} "
                                     f"({int(np.prod(shape)):,} voxels > max {policy.max_voxels:,})"))
    return out


def range_warning(array: np.ndarray, policy: VolumePolicy) -> str | None:
    """A sentence when values do not look like what ``policy`` expects (e.g. [0, 1] data into an HU window)."""
    finite = np.asarray(array, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return "the volume has no finite values"
    lo, hi = float(finite.min()), float(finite.max())
    if policy.intensity == "window":
        c, w = policy.window  # type: ignore[misc]
        if hi - lo <= 1.0 + 1e-6 or (lo >= 0 and hi <= 255 and lo > -1):
            return (f"values span [{lo:.3g}, {hi:.3g}], which looks already scaled, not Hounsfield units; the HU "
                    f"window (centre {c:g}, width {w:g}) would map nearly every voxel to "
                    f"{float(np.clip((np.median(finite) - (c - w / 2)) / w, 0, 1)):.2f}")
        if lo > -500 and hi < 500 and (c - w / 2) < -500:
            return f"values span [{lo:.3g}, {hi:.3g}] with no air (~ -1000 HU): is this CT in HU?"
    return None


def resampled_shape(shape: tuple[int, ...], spacing: tuple[float, ...],
                    target: tuple[float, ...]) -> tuple[int, ...]:
    return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, target, strict=True))


def prepare_volume(image: ImageData, policy: VolumePolicy,
                   warn: Callable[[str], None] | None = None) -> np.ndarray:
    """Checked, resampled (linear, RAS axis order kept) and intensity-mapped volume, float32 in [0, 1].

    Raises :class:`ImageReadError` naming the file for any :func:`volume_problems` finding; warns
    (``UserWarning``) once per call when :func:`range_warning` has something to say, or passes the
    sentence to ``warn`` instead (a dataset reports it once, not once per volume).
    """
    source = image.meta.source
    problems = volume_problems(image, policy)
    if problems:
        raise ImageReadError(source, "; ".join(msg for _, msg in problems))
    arr = np.asarray(image.array, dtype=np.float32)
    message = range_warning(arr, policy)
    if message and warn is not None:
        warn(f"{source}: {message}")
    elif message:
        warnings.warn(f"{source}: {message}", UserWarning, stacklevel=2)
    if policy.target_spacing is not None:
        from scipy import ndimage

        sp = _spacing(image)
        factors = [s / t for s, t in zip(sp, policy.target_spacing, strict=True)]
        if any(abs(f - 1) > 1e-3 for f in factors):
            arr = ndimage.zoom(arr, factors, order=1, mode="nearest", grid_mode=True).astype(np.float32)
    if policy.intensity == "window":
        c, w = policy.window  # type: ignore[misc]
        out = (arr - (c - w / 2)) / w
    elif policy.intensity == "zscore":
        out = (arr - arr.mean()) / max(float(arr.std()), 1e-6)
        out = (np.clip(out, -3, 3) + 3) / 6
    else:
        lo, hi = float(arr.min()), float(arr.max())
        out = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def prepare_volume_uint8(image: ImageData, policy: VolumePolicy,
                         warn: Callable[[str], None] | None = None) -> np.ndarray:
    """:func:`prepare_volume` quantised to uint8 (``round(255 * v)``): the form the input pipeline and the
    memmap cache carry, so a policy volume takes the same resize/channel path as every other picture and
    the model sees ``uint8 / 255``, i.e. the policy's [0, 1] mapping to within half a grey level."""
    return np.round(prepare_volume(image, policy, warn) * 255.0).astype(np.uint8)


def as_volume_policy(value: VolumePolicy | dict[str, Any] | None) -> VolumePolicy | None:
    """``None``, a policy, or its plain dict (a config, a checkpoint, a features ``preprocess`` record) -> policy."""
    if value is None or isinstance(value, VolumePolicy):
        return value
    if not isinstance(value, dict):
        raise ConfigError(f"a volume policy must be a mapping of VolumePolicy fields, got {value!r}")
    return VolumePolicy.from_dict(value)


def policy_dict(policy: VolumePolicy | None) -> dict[str, Any] | None:
    """JSON/YAML-plain form (lists, not tuples) for cache indexes, checkpoint configs and feature cache keys."""
    if policy is None:
        return None
    d = policy.to_dict()
    for key in ("window", "target_spacing"):
        if d[key] is not None:
            d[key] = [float(v) for v in d[key]]
    return d
