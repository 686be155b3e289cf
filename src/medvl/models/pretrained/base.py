"""What every pretrained adapter shares: the model's own image preprocessing, input checks, specs, the Hub.

Why the adapters normalise inside the encoder (like medvl checkpoints, unlike ``timm:``): the
preprocessing of a public model (resize policy, centre crop, RGB conversion, mean/std) is part of
the model, and getting it wrong does not fail -- it silently gives near-constant predictions
(torchxrayvision #89, BiomedCLIP users feeding ImageNet statistics). So callers feed images
scaled to [0, 1] at ``image_size`` (grey or RGB); the encoder repeats grey to the model's
channels *before* normalising, exactly as ``PIL.Image.convert("RGB")`` would, and then applies
:class:`ImagePreprocess` built from the model's own config. ``mean``/``std`` therefore report
identity (the evaluators' and the server's ``(x - mean) / std`` is a no-op) and the model's
statistics are in ``native_mean``/``native_std`` and :attr:`PretrainedEncoder.preprocess`.
"""

from __future__ import annotations

import abc
import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medvl.errors import ConfigError, MedvlError
from medvl.models.encoder_base import Encoder

log = logging.getLogger(__name__)

RESIZE_MODES = ("shortest", "squash", "longest", "none")
INTERPOLATIONS = ("bicubic", "bilinear", "nearest")


class InputRangeWarning(UserWarning):
    """Images given to an encoder do not look like [0, 1]-scaled pixels (already normalised, or 0-255)."""


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    vals = [int(v) for v in size]
    return (vals[0], vals[0]) if len(vals) == 1 else (vals[-2], vals[-1])


class ImagePreprocess(nn.Module):
    """``[B, C, H, W]`` in [0, 1] -> the tensor the model's own eval pipeline would produce.

    Steps, in the order torchvision/open_clip and Hugging Face image processors apply them:
    resize (``shortest``: shortest edge to ``size`` keeping the aspect ratio; ``squash``: to
    ``size`` x ``size``; ``longest``: longest edge to ``size``; ``none``), centre crop (or pad with
    ``fill``) to ``crop``, multiply by ``scale`` (1 for the usual ``rescale_factor = 1/255``), then
    ``(x - mean) / std``. A resize to the size the input already has is skipped, so inputs that
    are already at ``input_size`` pass through bit-exactly. Differentiable (fine-tuning uses it).
    """

    def __init__(self, *, mean: Sequence[float], std: Sequence[float], resize_mode: str = "shortest",
                 size: int | Sequence[int] | None = 224, crop: int | Sequence[int] | None = None,
                 interpolation: str = "bicubic", scale: float = 1.0, fill: float = 0.0):
        super().__init__()
        if resize_mode not in RESIZE_MODES:
            raise ConfigError(f"unknown resize mode {resize_mode!r}; valid: {', '.join(RESIZE_MODES)}")
        if interpolation not in INTERPOLATIONS:
            raise ConfigError(f"unknown interpolation {interpolation!r}; valid: {', '.join(INTERPOLATIONS)}")
        if resize_mode != "none" and size is None:
            raise ConfigError(f"resize mode {resize_mode!r} needs a size")
        if min(float(s) for s in std) <= 0:
            raise ConfigError(f"image std must be positive, got {list(std)}")
        self.resize_mode = resize_mode
        self.size = None if size is None else _pair(size)
        self.crop = None if crop is None else _pair(crop)
        self.interpolation = interpolation
        self.scale = float(scale)
        self.fill = float(fill)
        # Persistent: feature caches fingerprint state dicts, so other statistics must mean other features.
        self.register_buffer("mean", torch.tensor([float(m) for m in mean]).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor([float(s) for s in std]).view(1, -1, 1, 1))

    @property
    def input_size(self) -> int:
        """The square size callers should resize to so that only the crop remains to be done."""
        if self.size is not None and self.resize_mode != "none":
            return self.size[0]
        if self.crop is not None:
            return self.crop[0]
        raise ConfigError("the model's preprocessing fixes no input size")

    @property
    def output_size(self) -> tuple[int, int] | None:
        """Spatial size the model receives (``None``: whatever the input has)."""
        if self.crop is not None:
            return self.crop
        if self.resize_mode == "squash" and self.size is not None:
            return self.size
        return None

    def _resized_shape(self, h: int, w: int) -> tuple[int, int]:
        assert self.size is not None
        if self.resize_mode == "squash":
            return self.size
        if self.resize_mode == "shortest" and self.size[0] == self.size[1]:
            # torchvision Resize(int) / HF shortest_edge: short side = size, long side truncated.
            s = self.size[0]
            if h <= w:
                return s, int(s * w / h)
            return int(s * h / w), s
        # open_clip ResizeKeepRatio: one ratio from the longest (or shortest) relative edge.
        rh, rw = h / self.size[0], w / self.size[1]
        ratio = max(rh, rw) if self.resize_mode == "longest" else min(rh, rw)
        return round(h / ratio), round(w / ratio)

    def _crop(self, x: torch.Tensor) -> torch.Tensor:
        assert self.crop is not None
        ch, cw = self.crop
        h, w = x.shape[-2:]
        if h < ch or w < cw:  # torchvision CenterCrop pads first
            ph, pw = max(ch - h, 0), max(cw - w, 0)
            x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=self.fill)
            h, w = x.shape[-2:]
        top = int(round((h - ch) / 2.0))  # torchvision's rounding (HF fast processors use it too)
        left = int(round((w - cw) / 2.0))
        return x[..., top:top + ch, left:left + cw]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.resize_mode != "none":
            h, w = x.shape[-2:]
            new = self._resized_shape(h, w)
            if new != (h, w):
                lo, hi = x.amin(), x.amax()
                antialias = self.interpolation != "nearest" and (new[0] < h or new[1] < w)
                x = F.interpolate(x, size=new, mode=self.interpolation, antialias=antialias,
                                  align_corners=None if self.interpolation == "nearest" else False)
                # PIL clips to the uint8 range; bicubic overshoot would otherwise leave [0, 1].
                x = x.clamp(lo, hi)
        if self.crop is not None:
            x = self._crop(x)
        if self.scale != 1.0:
            x = x * self.scale
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def describe(self) -> dict[str, Any]:
        """Plain-data summary for reports, caches and ``Encoder.preprocess``."""
        return {"resize_mode": self.resize_mode, "resize": list(self.size) if self.size else None,
                "crop": list(self.crop) if self.crop else None, "interpolation": self.interpolation,
                "scale": self.scale, "model_mean": [round(float(v), 8) for v in self.mean.flatten()],
                "model_std": [round(float(v), 8) for v in self.std.flatten()]}


class PreprocessThen(nn.Module):
    """``image_model()`` of an adapter: the model's own preprocessing, then its image features."""

    def __init__(self, preprocess: ImagePreprocess, features: nn.Module):
        super().__init__()
        self.preprocess = preprocess
        self.features = features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.features(self.preprocess(images))


class PretrainedEncoder(Encoder):
    """Base of the adapters: [0, 1] inputs, channel expansion, the model's preprocessing, range check.

    Subclasses set ``self.pre`` (an :class:`ImagePreprocess`), ``in_chans``, ``embed_dim``,
    ``device``, ``name`` and implement :meth:`_image_features` and :meth:`_image_module`.
    """

    pre: ImagePreprocess
    normalises_inside = True
    # Tolerance around [0, 1]: resampled or jpeg-decoded images can overshoot slightly.
    range_tolerance: float = 0.05

    def _init_preprocess(self, pre: ImagePreprocess, in_chans: int) -> None:
        self.pre = pre.to(self.device)
        self.in_chans = int(in_chans)
        self.image_size = pre.input_size
        self.mean = (0.0,) * self.in_chans
        self.std = (1.0,) * self.in_chans
        self.native_mean = tuple(float(v) for v in pre.mean.flatten())
        self.native_std = tuple(float(v) for v in pre.std.flatten())
        self._range_warned = False

    @property
    def preprocess(self) -> dict[str, Any]:
        out = super().preprocess
        out.update(self.pre.describe())
        out["normalised_by_encoder"] = True
        return out

    @abc.abstractmethod
    def _image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Model-ready pixels -> unnormalised features ``[B, embed_dim]``."""

    @abc.abstractmethod
    def _image_module(self) -> nn.Module:
        """An ``nn.Module`` computing :meth:`_image_features` (shares the weights)."""

    def _encode_image_batch(self, images: torch.Tensor) -> torch.Tensor:
        return self._image_features(self.pre(images))

    def image_model(self) -> nn.Module:
        return PreprocessThen(self.pre, self._image_module())

    def check_input_range(self, images: torch.Tensor) -> None:
        """Warn once, with the numbers, when ``images`` do not look like [0, 1]-scaled pixels."""
        if self._range_warned or not images.numel():
            return
        x = images.detach().float()
        lo, hi = float(x.min()), float(x.max())
        tol = self.range_tolerance
        if lo >= -tol and hi <= 1 + tol:
            return
        if hi > 20:
            hint = "they look like 0-255 pixel values: divide by 255"
        elif lo < -tol:
            hint = "negative values suggest they are already normalised: pass the [0, 1] images instead"
        else:
            hint = "rescale them to [0, 1]"
        mean, std = float(x.mean()), float(x.std()) if x.numel() > 1 else 0.0
        msg = (f"encoder {self.name!r}: input values span [{lo:.3g}, {hi:.3g}] (mean {mean:.3g}, std {std:.3g}) "
               f"but it expects images scaled to [0, 1] and applies the model's own normalisation itself "
               f"(mean {[round(v, 4) for v in self.native_mean]}, std {[round(v, 4) for v in self.native_std]}); "
               f"{hint}. A wrong normalisation silently gives near-constant predictions.")
        self._range_warned = True
        log.warning(msg)
        warnings.warn(msg, InputRangeWarning, stacklevel=3)

    def encode_image(self, images: torch.Tensor, batch_size: int = 64, normalize: bool = True) -> torch.Tensor:
        self.check_input_range(images)
        return super().encode_image(images, batch_size=batch_size, normalize=normalize)


def hub_offline() -> bool:
    """True when the user asked for no network (``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``)."""
    return any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on")
               for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_snapshot(repo_id: str, allow_patterns: list[str] | None = None, download: bool = True) -> Path | None:
    """Local folder of a Hugging Face Hub repo: the HF cache if it is there, else a download.

    Returns ``None`` (never touches the network) when offline or ``download`` is False and the
    repo is not cached; a failed download raises :class:`MedvlError` with the reason.
    """
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - transformers depends on it
        return None
    try:
        return Path(snapshot_download(repo_id, local_files_only=True, allow_patterns=allow_patterns))
    except Exception:  # not cached (LocalEntryNotFoundError and friends)
        pass
    if not download or hub_offline():
        return None
    try:
        return Path(snapshot_download(repo_id, allow_patterns=allow_patterns))
    except Exception as exc:
        raise MedvlError(f"cannot download {repo_id!r} from the Hugging Face Hub: {exc}. Without network, "
                         f"download it elsewhere (huggingface-cli download {repo_id} --local-dir DIR) "
                         f"and give the local folder") from exc


def parse_spec(rest: str, valid: Sequence[str], kwargs: dict[str, Any], schema: str) -> tuple[str, dict[str, Any]]:
    """``"/path?text=/bert&x=1"`` + kwargs -> (``"/path"``, options); unknown options raise ConfigError.

    Query options and keyword arguments are the same thing (``openclip:/p?text=/b`` equals
    ``load_encoder("openclip:/p", text="/b")``); giving one twice with different values is an error.
    """
    location, options = rest, {}
    head, sep, query = rest.rpartition("?")
    if sep and query and all("=" in part for part in query.split("&")):
        location = head
        for part in query.split("&"):
            key, _, value = part.partition("=")
            options[key.strip()] = value.strip()
    for key, value in kwargs.items():
        if key in options and str(options[key]) != str(value):
            raise ConfigError(f"{schema}: option {key!r} given twice ({options[key]!r} in the spec, {value!r} "
                              f"as an argument)")
        options[key] = value
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ConfigError(f"{schema}: unknown option{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                          f"valid: {', '.join(valid) or '(none)'}")
    if not location:
        raise ConfigError(f"{schema}: the spec needs a location, e.g. {schema}:/path/to/folder")
    return location, options


def resolve_location(location: str, schema: str, allow_patterns: list[str] | None = None) -> Path:
    """A local folder, or ``hf-hub:org/repo`` (HF cache, or a download when online)."""
    if location.startswith("hf-hub:"):
        repo_id = location[len("hf-hub:"):]
        folder = hub_snapshot(repo_id, allow_patterns)
        if folder is None:
            raise MedvlError(
                f"{schema}:{location}: {repo_id!r} is not in the Hugging Face cache and the Hub is offline "
                f"(HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE is set). Download it on a machine with internet "
                f"(huggingface-cli download {repo_id} --local-dir /path/to/folder), copy the folder here and use "
                f"{schema}:/path/to/folder")
        return folder
    folder = Path(location).expanduser()
    if not folder.is_dir():
        raise MedvlError(f"{schema}: folder not found: {folder} (expected a local folder or hf-hub:org/repo)")
    return folder
