"""Dict transforms for medical images, 2D ``[C,H,W]`` and 3D ``[C,D,H,W]`` alike.

A transform takes the sample dict (``{"image": tensor, "text": str, "labels": tensor, ...}``) and
returns it, MONAI style, so geometry that changes the meaning of the text (a horizontal flip turns
a *left* effusion into a *right* one) can fix the text and the labels in the same step. Random
transforms draw from the ``generator`` passed to ``__call__`` (the dataset seeds one per sample
and epoch), so augmentation is reproducible and independent of DataLoader worker scheduling.

Defaults respect medical images: **no horizontal flip** unless asked for (laterality matters; a
flipped chest X-ray shows a dextrocardia), small rotations/shifts/zooms only, mild
brightness/contrast/gamma changes and noise.

Library use: resizing is ``torch.nn.functional.interpolate`` (antialiased bilinear in 2D,
trilinear in 3D); 2D affine is ``torchvision.transforms.v2.functional.affine``; 3D affine is
``torch.nn.functional.affine_grid``/``grid_sample``; percentiles are ``numpy.percentile``.
Hand-written (each a line or two of tensor arithmetic, shared by 2D and 3D where torchvision's
versions assume ``[..., C, H, W]``): window, min-max, z-score, mean/std normalisation, the
ITU-R 601 RGB->grey weights, brightness (multiply), contrast (blend with the mean), gamma, noise.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF

from medvl.errors import ConfigError

Sample = dict[str, Any]
RESIZE_MODES = ("pad", "stretch", "crop")
_GREY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601-2 luma, the weights PIL and torchvision use


# --------------------------------------------------------------------------- tensor functions


def _spatial_dims(x: torch.Tensor) -> int:
    if x.ndim not in (3, 4):
        raise ValueError(f"expected an image [C,H,W] or volume [C,D,H,W], got shape {tuple(x.shape)}")
    return x.ndim - 1


def window(x: torch.Tensor, center: float, width: float) -> torch.Tensor:
    """Clip to ``[center - width/2, center + width/2]`` and map that range to [0, 1] (CT windowing)."""
    if width <= 0:
        raise ConfigError(f"window width must be > 0, got {width}")
    lo = center - width / 2.0
    return ((x.float() - lo) / width).clamp(0.0, 1.0)


def minmax(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Map the image's own min..max to 0..1; a constant image becomes all zeros."""
    x = x.float()
    lo, hi = x.min(), x.max()
    return (x - lo) / (hi - lo).clamp_min(eps) if hi - lo > eps else torch.zeros_like(x)


def percentile_clip(x: torch.Tensor, lower: float = 0.5, upper: float = 99.5, rescale: bool = True) -> torch.Tensor:
    """Clip to the image's own percentiles (robust to a few hot pixels/metal), then optionally to [0, 1]."""
    if not 0.0 <= lower < upper <= 100.0:
        raise ConfigError(f"percentiles must satisfy 0 <= lower < upper <= 100, got {lower}, {upper}")
    x = x.float()
    lo, hi = np.percentile(x.detach().cpu().numpy(), [lower, upper])
    x = x.clamp(float(lo), float(hi))
    if not rescale:
        return x
    return (x - float(lo)) / (float(hi) - float(lo)) if hi > lo else torch.zeros_like(x)


def zscore(x: torch.Tensor, eps: float = 1e-8, channel_wise: bool = False) -> torch.Tensor:
    """Subtract the mean and divide by the (population) standard deviation of this image."""
    x = x.float()
    dims = tuple(range(1, x.ndim)) if channel_wise else tuple(range(x.ndim))
    mean = x.mean(dim=dims, keepdim=True)
    std = x.std(dim=dims, keepdim=True, correction=0)
    return (x - mean) / std.clamp_min(eps)


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``(x - mean) / std`` per channel; a single value applies to every channel."""
    c = x.shape[0]
    m = torch.as_tensor(list(mean), dtype=torch.float32)
    s = torch.as_tensor(list(std), dtype=torch.float32)
    for name, v in (("mean", m), ("std", s)):
        if v.numel() not in (1, c):
            raise ConfigError(f"normalize: {name} has {v.numel()} values but the image has {c} channels")
    if (s <= 0).any():
        raise ConfigError(f"normalize: std must be > 0, got {list(std)}")
    shape = (-1,) + (1,) * (x.ndim - 1)
    return (x.float() - m.view(shape)) / s.view(shape)


def to_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """1 -> 3 channels by repetition, 3 -> 1 by ITU-R 601 luma; other changes are an error."""
    c = x.shape[0]
    if c == channels:
        return x
    if c == 1 and channels == 3:
        return x.expand(3, *x.shape[1:]).clone()
    if c in (3, 4) and channels == 1:
        w = torch.tensor(_GREY_WEIGHTS, dtype=torch.float32).view((3,) + (1,) * (x.ndim - 1))
        return (x[:3].float() * w).sum(0, keepdim=True).to(x.dtype if x.is_floating_point() else torch.float32)
    if c == 4 and channels == 3:
        return x[:3]
    raise ConfigError(f"cannot convert an image with {c} channels to {channels} channels")


def _target(x: torch.Tensor, size: int | Sequence[int]) -> tuple[int, ...]:
    n = _spatial_dims(x)
    t = (int(size),) * n if isinstance(size, int) else tuple(int(s) for s in size)
    if len(t) != n or min(t) < 1:
        raise ConfigError(f"size {size} does not fit an image with {n} spatial dims")
    return t


def _interpolate(x: torch.Tensor, size: tuple[int, ...], mode: str = "linear") -> torch.Tensor:
    if tuple(x.shape[1:]) == size:
        return x
    dtype = x.dtype
    xf = x.float()[None]
    if mode == "nearest":
        out = F.interpolate(xf, size=size, mode="nearest-exact")
    elif len(size) == 2:
        down = any(t < s for t, s in zip(size, x.shape[1:], strict=True))
        out = F.interpolate(xf, size=size, mode="bilinear", align_corners=False, antialias=down)
    else:
        out = F.interpolate(xf, size=size, mode="trilinear", align_corners=False)
    out = out[0]
    return out if dtype.is_floating_point else out.round().clamp(0, 255).to(dtype)


def center_crop(x: torch.Tensor, size: int | Sequence[int]) -> torch.Tensor:
    """Crop the middle ``size`` (dims already smaller are kept as they are)."""
    t = _target(x, size)
    slices = [slice(None)]
    for have, want in zip(x.shape[1:], t, strict=True):
        start = max(0, (have - want) // 2)
        slices.append(slice(start, start + min(have, want)))
    return x[tuple(slices)]


def center_pad(x: torch.Tensor, size: int | Sequence[int], value: float = 0.0) -> torch.Tensor:
    """Pad symmetrically to at least ``size`` with ``value`` (dims already larger are kept)."""
    t = _target(x, size)
    pads: list[int] = []
    for have, want in reversed(list(zip(x.shape[1:], t, strict=True))):
        extra = max(0, want - have)
        pads += [extra // 2, extra - extra // 2]
    return F.pad(x, pads, value=value) if any(pads) else x


def crop_or_pad(x: torch.Tensor, size: int | Sequence[int], value: float = 0.0) -> torch.Tensor:
    return center_pad(center_crop(x, size), size, value)


def resize(x: torch.Tensor, size: int | Sequence[int], mode: str = "pad", interp: str = "linear") -> torch.Tensor:
    """Resize to ``size`` in 2D or 3D.

    ``mode``: ``"pad"`` keeps the aspect ratio and pads (keeps the whole field of view, the safe
    default for radiographs), ``"stretch"`` resizes each axis independently, ``"crop"`` fills the
    target and crops the middle. A no-op when the image already has the target size.
    """
    if mode not in RESIZE_MODES:
        raise ConfigError(f"resize mode must be one of {', '.join(RESIZE_MODES)}, got {mode!r}")
    t = _target(x, size)
    have = tuple(x.shape[1:])
    if have == t:
        return x
    if mode == "stretch":
        return _interpolate(x, t, interp)
    ratios = [w / h for w, h in zip(t, have, strict=True)]
    scale = min(ratios) if mode == "pad" else max(ratios)
    inner = tuple(max(1, round(h * scale)) for h in have)
    return crop_or_pad(_interpolate(x, inner, interp), t)


# --------------------------------------------------------------------------- laterality

_LATERALITY = re.compile(r"\b(left|right)(?=(?:wards?)?\b)", re.IGNORECASE)


def swap_laterality(text: str) -> str:
    """Swap left <-> right, keeping case ("Left" -> "Right", "LEFT" -> "RIGHT", "left-sided" -> "right-sided").

    Abbreviations such as "L"/"R" or "lt"/"rt" are left alone: too ambiguous to rewrite safely.
    """

    def repl(m: re.Match[str]) -> str:
        word = m.group(1)
        other = "right" if word.lower() == "left" else "left"
        if word.isupper():
            return other.upper()
        if word[0].isupper():
            return other.capitalize()
        return other

    return _LATERALITY.sub(repl, text)


def laterality_pairs(classes: Sequence[str]) -> list[tuple[int, int]]:
    """Index pairs of classes whose names differ only by side ("kidney-left"/"kidney-right")."""
    index = {c: i for i, c in enumerate(classes)}
    pairs = []
    for i, c in enumerate(classes):
        j = index.get(swap_laterality(c))
        if j is not None and j > i:
            pairs.append((i, j))
    return pairs


# --------------------------------------------------------------------------- dict transforms


def _rand(generator: torch.Generator | None) -> float:
    return float(torch.rand((), generator=generator))


def _uniform(lo: float, hi: float, generator: torch.Generator | None) -> float:
    return lo + (hi - lo) * _rand(generator)


class Transform:
    """Base dict transform: ``t(sample, generator=None) -> sample`` (the dict is updated in place).

    ``random`` says whether the transform draws random numbers; the dataset only seeds a generator
    per sample when some step does (seeding costs more than a cached read).
    """

    random = False

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


class Compose(Transform):
    """Apply transforms in order, passing the same generator to each."""

    def __init__(self, transforms: Sequence[Transform | Callable[..., Sample]]):
        self.transforms = list(transforms)
        self.random = any(getattr(t, "random", True) for t in self.transforms)

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        for t in self.transforms:
            sample = t(sample, generator) if isinstance(t, Transform) else t(sample)
        return sample

    def __repr__(self) -> str:
        inner = "".join(f"\n  {t!r}," for t in self.transforms)
        return f"Compose([{inner}\n])"


class Lambda(Transform):
    """Apply a tensor function to ``sample["image"]``."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]):
        self.fn = fn

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        sample["image"] = self.fn(sample["image"])
        return sample


class ToTensor(Transform):
    """numpy/tensor -> float tensor ``[C,H,W]``/``[C,D,H,W]``; uint8 is scaled to [0, 1].

    numpy input follows :func:`medvl.data.io.to_uint8`'s layouts: HxW, HxWx3 (colour) or DxHxW
    (``spatial_dims=3``). Tensors are taken as already channel-first.
    """

    def __init__(self, spatial_dims: int = 2):
        if spatial_dims not in (2, 3):
            raise ConfigError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        self.spatial_dims = spatial_dims

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        img = sample["image"]
        if isinstance(img, np.ndarray):
            img = array_to_tensor(img, self.spatial_dims)
        if img.dtype == torch.uint8:
            img = img.float() / 255.0
        sample["image"] = img.float()
        return sample


def array_to_tensor(arr: np.ndarray, spatial_dims: int = 2) -> torch.Tensor:
    """HxW / HxWx3(4) / DxHxW / TxHxWx3(4) numpy -> channel-first tensor (same dtype, no scaling)."""
    arr = np.ascontiguousarray(arr)
    t = torch.from_numpy(arr if arr.flags.writeable else arr.copy())
    if spatial_dims == 2:
        if arr.ndim == 2:
            return t[None]
        if arr.ndim == 3 and arr.shape[-1] in (3, 4):
            return t.permute(2, 0, 1).contiguous()
    elif arr.ndim == 3:
        return t[None]
    elif arr.ndim == 4 and arr.shape[-1] in (3, 4):  # colour cine clip T x H x W x 3 -> [3, T, H, W]
        return t.permute(3, 0, 1, 2).contiguous()
    raise ValueError(f"cannot interpret an array of shape {arr.shape} as a {spatial_dims}D image")


class Intensity(Transform):
    """Range-defining intensity step: ``window`` (needs center/width), ``percentile``, ``minmax``, ``zscore``."""

    KINDS = ("window", "percentile", "minmax", "zscore")

    def __init__(self, kind: str, center: float | None = None, width: float | None = None,
                 lower: float = 0.5, upper: float = 99.5):
        if kind not in self.KINDS:
            raise ConfigError(f"intensity must be one of {', '.join(self.KINDS)}, got {kind!r}")
        if kind == "window" and (center is None or width is None):
            raise ConfigError("intensity 'window' needs window=(center, width)")
        self.kind, self.center, self.width, self.lower, self.upper = kind, center, width, lower, upper

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        x = sample["image"]
        if self.kind == "window":
            x = window(x, float(self.center), float(self.width))  # type: ignore[arg-type]
        elif self.kind == "percentile":
            x = percentile_clip(x, self.lower, self.upper)
        elif self.kind == "minmax":
            x = minmax(x)
        else:
            x = zscore(x)
        sample["image"] = x
        return sample


class EnsureChannels(Transform):
    def __init__(self, channels: int):
        if channels not in (1, 3):
            raise ConfigError(f"channels must be 1 or 3, got {channels}")
        self.channels = channels

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        sample["image"] = to_channels(sample["image"], self.channels)
        return sample


class Resize(Transform):
    def __init__(self, size: int | Sequence[int], mode: str = "pad"):
        if mode not in RESIZE_MODES:
            raise ConfigError(f"resize mode must be one of {', '.join(RESIZE_MODES)}, got {mode!r}")
        self.size, self.mode = size, mode

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        sample["image"] = resize(sample["image"], self.size, self.mode)
        return sample


class CenterCropOrPad(Transform):
    def __init__(self, size: int | Sequence[int], value: float = 0.0):
        self.size, self.value = size, value

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        sample["image"] = crop_or_pad(sample["image"], self.size, self.value)
        return sample


class Normalize(Transform):
    """Fixed per-channel mean/std, or per-image z-score when ``mean``/``std`` are ``None``."""

    def __init__(self, mean: Sequence[float] | None, std: Sequence[float] | None):
        if (mean is None) != (std is None):
            raise ConfigError("give both mean and std, or neither (per-image z-score)")
        self.mean = None if mean is None else tuple(float(m) for m in mean)
        self.std = None if std is None else tuple(float(s) for s in std)
        if self.std is not None and min(self.std) <= 0:
            raise ConfigError(f"normalize: std must be > 0, got {list(self.std)}")
        self._m = None if self.mean is None else torch.tensor(self.mean, dtype=torch.float32)
        self._s = None if self.std is None else torch.tensor(self.std, dtype=torch.float32)

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        x = sample["image"]
        if self._m is None or self._s is None:
            sample["image"] = zscore(x)
            return sample
        c = x.shape[0]
        if self._m.numel() not in (1, c) or self._s.numel() not in (1, c):
            raise ConfigError(f"normalize: mean/std have {self._m.numel()}/{self._s.numel()} values but the "
                              f"image has {c} channels")
        shape = (-1,) + (1,) * (x.ndim - 1)
        sample["image"] = (x.float() - self._m.view(shape)) / self._s.view(shape)
        return sample


def _rotation_3d(angles: Sequence[float]) -> torch.Tensor:
    a, b, c = (math.radians(v) for v in angles)
    rx = torch.tensor([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    ry = torch.tensor([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    rz = torch.tensor([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]])
    return (rz @ ry @ rx).float()


class RandomAffine(Transform):
    """Small rotation (degrees), shift (fraction of size) and zoom; zeros fill the border.

    2D uses torchvision's ``affine``; 3D rotates about all three axes with ``affine_grid``.
    """

    random = True

    def __init__(self, degrees: float = 10.0, translate: float = 0.05, scale: tuple[float, float] = (0.95, 1.05),
                 p: float = 0.5):
        self.degrees, self.translate, self.scale, self.p = degrees, translate, tuple(scale), p

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        if _rand(generator) >= self.p:
            return sample
        x = sample["image"]
        nd = _spatial_dims(x)
        s = _uniform(self.scale[0], self.scale[1], generator)
        if nd == 2:
            angle = _uniform(-self.degrees, self.degrees, generator)
            h, w = x.shape[-2:]
            shift = [_uniform(-self.translate, self.translate, generator) * w,
                     _uniform(-self.translate, self.translate, generator) * h]
            x = TF.affine(x, angle=angle, translate=shift, scale=s, shear=[0.0, 0.0],
                          interpolation=TF.InterpolationMode.BILINEAR, fill=0.0)
        else:
            angles = [_uniform(-self.degrees, self.degrees, generator) for _ in range(3)]
            theta = torch.zeros(1, 3, 4)
            theta[0, :, :3] = _rotation_3d(angles) / s
            theta[0, :, 3] = torch.tensor([_uniform(-self.translate, self.translate, generator) * 2 for _ in range(3)])
            grid = F.affine_grid(theta, [1, *x.shape], align_corners=False)
            x = F.grid_sample(x.float()[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
        sample["image"] = x
        return sample


class RandomBrightnessContrast(Transform):
    """Multiply by a brightness factor and blend with the image mean by a contrast factor ([0, 1] images)."""

    random = True

    def __init__(self, brightness: float = 0.1, contrast: float = 0.1, p: float = 0.5):
        self.brightness, self.contrast, self.p = brightness, contrast, p

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        if _rand(generator) >= self.p:
            return sample
        x = sample["image"]
        b = _uniform(1 - self.brightness, 1 + self.brightness, generator)
        c = _uniform(1 - self.contrast, 1 + self.contrast, generator)
        mean = x.mean()
        sample["image"] = ((x * b - mean * b) * c + mean * b).clamp(0.0, 1.0)
        return sample


class RandomGamma(Transform):
    """``x ** gamma`` with gamma in ``[1 - g, 1 + g]`` (on [0, 1] images)."""

    random = True

    def __init__(self, gamma: float = 0.15, p: float = 0.5):
        self.gamma, self.p = gamma, p

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        if _rand(generator) >= self.p:
            return sample
        g = _uniform(1 - self.gamma, 1 + self.gamma, generator)
        sample["image"] = sample["image"].clamp(0.0, 1.0) ** g
        return sample


class RandomNoise(Transform):
    """Additive Gaussian noise with std up to ``std`` (fraction of the [0, 1] range)."""

    random = True

    def __init__(self, std: float = 0.02, p: float = 0.5):
        self.std, self.p = std, p

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        if _rand(generator) >= self.p:
            return sample
        x = sample["image"]
        sigma = _uniform(0.0, self.std, generator)
        noise = torch.randn(x.shape, generator=generator) * sigma
        sample["image"] = (x + noise).clamp(0.0, 1.0)
        return sample


class RandomHorizontalFlip(Transform):
    """Mirror left-right **and** keep the text and labels true: swap left/right words and side classes.

    Off by default in :func:`build_transforms`; give ``classes`` so that side-specific classes
    ("lung-left"/"lung-right") swap their label columns together with the image.
    """

    random = True

    def __init__(self, p: float = 0.5, classes: Sequence[str] = (), text_keys: Sequence[str] = ("text",)):
        self.p = p
        self.pairs = laterality_pairs(list(classes))
        self.text_keys = tuple(text_keys)

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        if _rand(generator) >= self.p:
            return sample
        sample["image"] = torch.flip(sample["image"], dims=[-1])
        for key in self.text_keys:
            if isinstance(sample.get(key), str):
                sample[key] = swap_laterality(sample[key])
        if self.pairs:
            for key in ("labels", "label_mask"):
                v = sample.get(key)
                if isinstance(v, torch.Tensor):
                    v = v.clone()
                    for i, j in self.pairs:
                        v[[i, j]] = v[[j, i]]
                    sample[key] = v
        return sample


def build_transforms(
    image_size: int | Sequence[int] = 64,
    channels: int = 1,
    augment: bool = False,
    mean: Sequence[float] | None = (0.5,),
    std: Sequence[float] | None = (0.5,),
    *,
    spatial_dims: int = 2,
    intensity: str | None = None,
    window: tuple[float, float] | None = None,
    resize_mode: str = "pad",
    hflip: bool = False,
    hflip_p: float = 0.5,
    classes: Sequence[str] = (),
    degrees: float = 10.0,
    translate: float = 0.05,
    scale: tuple[float, float] = (0.95, 1.05),
    brightness: float = 0.1,
    contrast: float = 0.1,
    gamma: float = 0.15,
    noise_std: float = 0.02,
    p: float = 0.5,
) -> Compose:
    """The standard pipeline: to float -> [intensity] -> channels -> resize -> [augment] -> [hflip] -> normalise.

    Input ``sample["image"]`` may be uint8 (scaled to [0, 1]) or float (e.g. CT in HU, then use
    ``intensity="window", window=(40, 400)``). ``mean=std=None`` z-scores each image instead of a
    fixed normalisation. ``hflip`` is opt-in and swaps laterality words in the text and side
    classes in the labels.
    """
    if intensity is None and window is not None:
        intensity = "window"
    steps: list[Transform] = [ToTensor(spatial_dims)]
    if intensity is not None:
        c, w = window if window is not None else (None, None)
        steps.append(Intensity(intensity, center=c, width=w))
    steps += [EnsureChannels(channels), Resize(image_size, resize_mode)]
    if augment:
        steps += [
            RandomAffine(degrees, translate, scale, p=p),
            RandomBrightnessContrast(brightness, contrast, p=p),
            RandomGamma(gamma, p=p),
            RandomNoise(noise_std, p=p),
        ]
    if hflip:
        steps.append(RandomHorizontalFlip(hflip_p, classes))
    steps.append(Normalize(mean, std))
    return Compose(steps)


def prepare_uint8(arr: np.ndarray, size: int | Sequence[int], channels: int = 1, resize_mode: str = "pad",
                  spatial_dims: int | None = None) -> torch.Tensor:
    """Decoded uint8 picture -> uint8 tensor ``[C,S,S]`` (or ``[C,S,S,S]``): channels, then resize, then round.

    The single deterministic preprocessing step shared by decoded loading and the memmap cache,
    so both give exactly the same pixels.
    """
    if arr.dtype != np.uint8:
        raise ValueError(f"prepare_uint8 expects uint8, got {arr.dtype}")
    if spatial_dims is None:
        spatial_dims = 2 if arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] in (3, 4)) else 3
    x = array_to_tensor(arr, spatial_dims)
    if x.shape[0] != channels:
        x = to_channels(x.float(), channels).round().clamp(0, 255).to(torch.uint8)
    return resize(x, size, resize_mode)
