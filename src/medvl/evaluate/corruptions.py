"""Image corruptions at five severities, chosen for medical images (MedMNIST-C / ImageNet-C style).

Why these: a deployed model meets noisier detectors, other reconstruction kernels, other
contrast settings, compressed PACS exports, lower resolution, slightly rotated patients, MRI
coil inhomogeneity and other CT windows. Each corruption acts on the *preprocessed* image
(intensities in [0, 1], after resize, before the encoder's mean/std normalisation) so that it
is the same for every encoder, and works on 2D ``[B, C, H, W]`` and, where it makes sense, 3D
``[B, C, D, H, W]`` batches. Severities grow monotonically; values were chosen so that severity
1 is barely visible and severity 5 is a bad but readable image at 28-64 px:

==================  ===========================================  =================
name                severity 1 .. 5                               applies to
==================  ===========================================  =================
gaussian_noise      sigma 0.02, 0.04, 0.06, 0.09, 0.12             all
poisson_noise       photons per unit 200, 100, 50, 25, 12          all
gaussian_blur       sigma 0.5, 0.75, 1.0, 1.5, 2.0 px (at 64 px)   all
contrast            intensities pulled to the mean: 0.8 .. 0.3     all
gamma               x ** 1.2, 1.4, 1.7, 2.0, 2.5                   all
jpeg                quality 70, 50, 30, 15, 8 (Pillow)             2D only
downsample          factor 1.5, 2, 3, 4, 6, back up bilinearly     all
rotation            2, 4, 7, 10, 15 degrees (in-plane)             all
shift               2, 4, 6, 8, 10 % of the width                  all
bias_field          multiplicative smooth field, +-10 .. 50 %      MR only
window_shift        centre moved by 5 .. 25 % of the window        CT only
==================  ===========================================  =================

Randomness (noise, field shape, rotation sign) is drawn from a generator seeded by ``(seed,
corruption, severity)`` and the batch position, so a run is reproducible and every encoder sees
the same corrupted pixels. ``window_shift`` is simulated on the already windowed image: shifting
the window centre by ``d`` window widths moves intensities by ``d`` and clips at [0, 1];
information outside the original window cannot be recovered (that would need raw HU).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from medvl.errors import ConfigError

SEVERITIES = (1, 2, 3, 4, 5)
MR_MODALITIES = {"mri", "mr", "mra", "t1", "t2", "flair", "dwi"}
CT_MODALITIES = {"ct", "cect", "ncct"}


def normalise_modality(modality: str | None) -> str:
    """``"X-ray"`` -> ``"xray"``: lower case without spaces, dashes or underscores."""
    return "".join(ch for ch in str(modality or "").lower() if ch.isalnum())


@dataclass(frozen=True)
class Corruption:
    """A named corruption: ``fn(x, severity_value, generator)`` on [0, 1] batches plus where it applies."""

    name: str
    values: tuple[float, ...]
    fn: Callable[[torch.Tensor, float, torch.Generator], torch.Tensor]
    modalities: frozenset[str] | None = None  # None = any modality
    dims: tuple[int, ...] = (2, 3)
    description: str = ""

    def skip_reason(self, modality: str, spatial_dims: int) -> str | None:
        """Why this corruption does not apply to images of ``modality`` (None: it applies)."""
        if spatial_dims not in self.dims:
            return f"{self.name} applies to {'/'.join(f'{d}D' for d in self.dims)} images, these are {spatial_dims}D"
        if self.modalities is not None:
            m = normalise_modality(modality)
            want = "/".join(sorted(self.modalities))
            if not m or m == "unknown":
                return f"{self.name} is specific to {want}; the modality is not recorded (card or manifest)"
            if m not in self.modalities:
                return f"{self.name} is specific to {want}; these images are {modality}"
        return None

    def __call__(self, x: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
        if severity not in SEVERITIES:
            raise ConfigError(f"corruption {self.name}: severity must be 1-5, got {severity}")
        return self.fn(x, self.values[severity - 1], generator).clamp(0.0, 1.0)


# ------------------------------------------------------------------ helpers
def _spatial(x: torch.Tensor) -> int:
    if x.ndim not in (4, 5):
        raise ConfigError(f"corruptions expect [B, C, H, W] or [B, C, D, H, W] batches, got shape {tuple(x.shape)}")
    return x.ndim - 2


def _gauss_kernel(sigma: float) -> torch.Tensor:
    r = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur over every spatial axis, reflect-padded (no dark border)."""
    nd = _spatial(x)
    k = _gauss_kernel(sigma).to(x)
    b, c = x.shape[:2]
    y = x.reshape(b * c, 1, *x.shape[2:])
    r = (k.numel() - 1) // 2
    for axis in range(nd):
        shape = [1, 1] + [1] * nd
        shape[2 + axis] = k.numel()
        pad = [0, 0] * nd
        pad[2 * (nd - 1 - axis)] = pad[2 * (nd - 1 - axis) + 1] = r
        mode = "reflect" if min(y.shape[2:]) > r else "replicate"
        y = F.pad(y, pad, mode=mode)
        conv = F.conv2d if nd == 2 else F.conv3d
        y = conv(y, k.reshape(shape))
    return y.reshape(x.shape)


def _scale_px(x: torch.Tensor, px_at_64: float) -> float:
    """Pixel sizes are given for 64-px images and scaled with the image (a 28-px blur is smaller)."""
    return px_at_64 * x.shape[-1] / 64.0


def _affine(x: torch.Tensor, theta2d: torch.Tensor) -> torch.Tensor:
    """Apply per-sample 2x3 in-plane transforms (3D: the same in-plane transform on every slice)."""
    nd = _spatial(x)
    if nd == 2:
        grid = F.affine_grid(theta2d, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    b, c, d, h, w = x.shape
    theta = torch.zeros(b, 3, 4, dtype=x.dtype)
    theta[:, :2, :2] = theta2d[:, :, :2]
    theta[:, :2, 3] = theta2d[:, :, 2]
    theta[:, 2, 2] = 1.0
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _signs(b: int, g: torch.Generator) -> torch.Tensor:
    return torch.where(torch.rand(b, generator=g) < 0.5, -1.0, 1.0)


# ------------------------------------------------------------------ the corruptions
def _gaussian_noise(x: torch.Tensor, sigma: float, g: torch.Generator) -> torch.Tensor:
    return x + sigma * torch.randn(x.shape, generator=g).to(x)


def _poisson_noise(x: torch.Tensor, photons: float, g: torch.Generator) -> torch.Tensor:
    return torch.poisson(x.clamp(0, 1) * photons, generator=g) / photons


def _gaussian_blur(x: torch.Tensor, sigma: float, g: torch.Generator) -> torch.Tensor:
    return _blur(x, _scale_px(x, sigma))


def _contrast(x: torch.Tensor, keep: float, g: torch.Generator) -> torch.Tensor:
    mean = x.mean(dim=tuple(range(1, x.ndim)), keepdim=True)
    return (x - mean) * keep + mean


def _gamma(x: torch.Tensor, gamma: float, g: torch.Generator) -> torch.Tensor:
    return x.clamp(0, 1) ** gamma


def _jpeg(x: torch.Tensor, quality: float, g: torch.Generator) -> torch.Tensor:
    from PIL import Image

    if _spatial(x) != 2:
        raise ConfigError("jpeg corruption needs 2D images")
    out = torch.empty_like(x)
    arr = (x.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    for i in range(arr.shape[0]):
        img = arr[i, 0] if arr.shape[1] == 1 else np.moveaxis(arr[i], 0, -1)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=int(quality))
        dec = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("L" if arr.shape[1] == 1 else "RGB"))
        dec = dec[None] if dec.ndim == 2 else np.moveaxis(dec, -1, 0)
        out[i] = torch.from_numpy(dec.astype(np.float32) / 255.0)
    return out


def _downsample(x: torch.Tensor, factor: float, g: torch.Generator) -> torch.Tensor:
    nd = _spatial(x)
    size = tuple(x.shape[2:])
    small = tuple(max(2, int(round(s / factor))) for s in size)
    mode = "bilinear" if nd == 2 else "trilinear"
    y = F.interpolate(x, size=small, mode=mode, align_corners=False, antialias=nd == 2)
    return F.interpolate(y, size=size, mode=mode, align_corners=False)


def _rotation(x: torch.Tensor, degrees: float, g: torch.Generator) -> torch.Tensor:
    b = x.shape[0]
    a = _signs(b, g) * math.radians(degrees)
    theta = torch.zeros(b, 2, 3, dtype=x.dtype)
    theta[:, 0, 0], theta[:, 0, 1] = torch.cos(a), -torch.sin(a)
    theta[:, 1, 0], theta[:, 1, 1] = torch.sin(a), torch.cos(a)
    return _affine(x, theta)


def _shift(x: torch.Tensor, fraction: float, g: torch.Generator) -> torch.Tensor:
    b = x.shape[0]
    theta = torch.zeros(b, 2, 3, dtype=x.dtype)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    # affine_grid works in [-1, 1] coordinates: a shift of f widths is 2f there
    theta[:, 0, 2] = _signs(b, g) * 2 * fraction
    theta[:, 1, 2] = _signs(b, g) * 2 * fraction
    return _affine(x, theta)


def _bias_field(x: torch.Tensor, strength: float, g: torch.Generator) -> torch.Tensor:
    """Smooth multiplicative field ``exp(s * P(r))``, P a random 2nd-order polynomial scaled to [-1, 1].

    A low-order polynomial is the standard model of MR coil inhomogeneity (TorchIO's
    RandomBiasField uses the same form).
    """
    nd = _spatial(x)
    b = x.shape[0]
    axes = [torch.linspace(-1, 1, s) for s in x.shape[2:]]
    coords = torch.meshgrid(*axes, indexing="ij")
    terms = [torch.ones_like(coords[0])] + list(coords) + [c * c for c in coords]
    terms += [coords[i] * coords[j] for i in range(nd) for j in range(i + 1, nd)]
    basis = torch.stack(terms)  # [T, *spatial]
    coef = torch.rand(b, basis.shape[0], generator=g) * 2 - 1
    field = torch.einsum("bt,t...->b...", coef, basis)
    field = field / field.flatten(1).abs().amax(1).clamp_min(1e-6).reshape(b, *([1] * nd))
    return x * torch.exp(math.log1p(strength) * field).unsqueeze(1).to(x)


def _window_shift(x: torch.Tensor, d: float, g: torch.Generator) -> torch.Tensor:
    return x + _signs(x.shape[0], g).reshape(-1, *([1] * (x.ndim - 1))).to(x) * d


CORRUPTIONS: dict[str, Corruption] = {c.name: c for c in (
    Corruption("gaussian_noise", (0.02, 0.04, 0.06, 0.09, 0.12), _gaussian_noise,
               description="additive Gaussian noise (electronic detector noise)"),
    Corruption("poisson_noise", (200.0, 100.0, 50.0, 25.0, 12.0), _poisson_noise,
               description="Poisson (quantum) noise at falling photon counts (low dose)"),
    Corruption("gaussian_blur", (0.5, 0.75, 1.0, 1.5, 2.0), _gaussian_blur,
               description="Gaussian blur (smooth reconstruction kernel, motion, focus)"),
    Corruption("contrast", (0.8, 0.65, 0.5, 0.4, 0.3), _contrast, description="reduced contrast"),
    Corruption("gamma", (1.2, 1.4, 1.7, 2.0, 2.5), _gamma, description="gamma change (display/export LUT)"),
    Corruption("jpeg", (70.0, 50.0, 30.0, 15.0, 8.0), _jpeg, dims=(2,),
               description="JPEG compression (PACS export, screenshots)"),
    Corruption("downsample", (1.5, 2.0, 3.0, 4.0, 6.0), _downsample,
               description="lower acquisition resolution (down-sample, up-sample back)"),
    Corruption("rotation", (2.0, 4.0, 7.0, 10.0, 15.0), _rotation, description="small in-plane rotation"),
    Corruption("shift", (0.02, 0.04, 0.06, 0.08, 0.10), _shift, description="small translation"),
    Corruption("bias_field", (0.1, 0.2, 0.3, 0.4, 0.5), _bias_field, modalities=frozenset(MR_MODALITIES),
               description="MRI bias field (coil inhomogeneity)"),
    Corruption("window_shift", (0.05, 0.1, 0.15, 0.2, 0.25), _window_shift, modalities=frozenset(CT_MODALITIES),
               description="CT window centre shifted by a fraction of its width"),
)}


def get_corruption(name: str) -> Corruption:
    try:
        return CORRUPTIONS[name]
    except KeyError:
        raise ConfigError(f"unknown corruption {name!r}; choose from {', '.join(CORRUPTIONS)}") from None


def corruption_generator(seed: int, name: str, severity: int, batch_index: int = 0) -> torch.Generator:
    """Deterministic generator for one (corruption, severity, batch) so runs and encoders agree."""
    salt = sum(ord(ch) * (i + 1) for i, ch in enumerate(name))
    state = np.random.SeedSequence([seed, salt, severity, batch_index]).generate_state(1)[0]
    return torch.Generator().manual_seed(int(state))


def corrupt(x: torch.Tensor, name: str, severity: int, seed: int = 0, batch_index: int = 0) -> torch.Tensor:
    """Corrupt one [0, 1] batch with corruption ``name`` at ``severity`` (1-5)."""
    c = get_corruption(name)
    return c(x.float(), severity, corruption_generator(seed, name, severity, batch_index))
