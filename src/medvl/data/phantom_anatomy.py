"""Chest-radiograph phantom: anatomy + findings -> brightness image and one mask per finding.

Why a phantom: medvl's default dataset must run anywhere (no download, no licence) and still reward
a model that reads laterality, negation and hedging. So every finding is drawn from an explicit
ground truth (:class:`Phantom`) that :mod:`medvl.data.reports` puts into words.

Orientation -- PA view, radiological convention: the patient's RIGHT is on the IMAGE LEFT, so a
"left" finding is drawn on the image's right half. :func:`side_sign` is the only place that maps a
side to an image direction.

Coordinates are normalised so that one phantom renders the same at 28, 64 or 224 px: ``u`` =
column / size (0 = image left), ``v`` = row / size (0 = top). Inside a lung, ``g`` in [0, 1] runs
from the mediastinum (0) to the chest wall (1) and ``f`` in [0, 1] from the apex (0) to the lung
base (1); findings are placed in (side, f, g) so they follow each patient's anatomy.

The picture is built in layers (soft tissue, lung air, heart, bones, vessel markings) that the
findings modify before the layers are summed: an effusion replaces lung air by fluid, a
pneumothorax adds air and removes the markings, a consolidation or nodule adds density.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np
from scipy import ndimage

SIDES = ("right", "left")
ZONES = ("upper", "middle", "lower")
AMOUNTS = ("small", "moderate", "large")
LOBES = ("right upper lobe", "right middle lobe", "right lower lobe", "left upper lobe", "left lower lobe")
FIELD_OF_VIEW_MM = 320.0
"""Image width in millimetres: a nodule of ``d`` mm is drawn ``d / FIELD_OF_VIEW_MM`` image widths wide."""

LUNG_DARKNESS = 0.33  # brightness removed by aerated lung
LUNG_POWER = 2.5  # superellipse exponent of the lung fields (2 = ellipse; higher = squarer)
_ZONE_F = {"upper": (0.14, 0.33), "middle": (0.38, 0.60), "lower": (0.64, 0.84)}
# Where each lobe projects on a PA film, as (f range, g range) of its lung. Coarse but ordered.
_LOBE_BOX = {
    "right upper lobe": ((0.10, 0.40), (0.20, 0.80)),
    "right middle lobe": ((0.48, 0.76), (0.10, 0.55)),
    "right lower lobe": ((0.70, 0.92), (0.35, 0.88)),
    "left upper lobe": ((0.10, 0.48), (0.20, 0.80)),
    "left lower lobe": ((0.66, 0.92), (0.55, 0.90)),
}


def side_sign(side: str) -> int:
    """+1 for the patient's left (drawn on the image RIGHT), -1 for the patient's right."""
    if side == "left":
        return 1
    if side == "right":
        return -1
    raise ValueError(f"side must be 'left' or 'right', got {side!r}")


def lobe_side(lobe: str) -> str:
    """'left' or 'right': the first word of a lobe name is its side."""
    return lobe.split()[0]


# ----------------------------------------------------------------------------- ground truth
@dataclass(frozen=True)
class Anatomy:
    """One patient's normal anatomy (normalised units). ``ctr`` drives the cardiac width."""

    cx: float = 0.5  # midline column
    tilt: float = 0.0  # in-plane rotation (radians)
    half_width: float = 0.37  # thoracic half width at the inner rib margin (CTR denominator / 2)
    mediastinum: float = 0.07  # half width of the mediastinum
    apex: float = 0.17  # row of the lung apices
    base: float = 0.80  # row of the left costophrenic angle
    right_rise: float = 0.025  # the right hemidiaphragm normally sits higher
    dome: float = 0.07  # height of each diaphragm dome
    ctr: float = 0.44  # cardiothoracic ratio
    heart_height: float = 0.17  # half height of the cardiac ellipse
    rib_spacing: float = 0.062
    rib_curve: float = 0.16
    body_margin: float = 0.08  # soft tissue outside the ribs
    bubble: bool = True  # gastric air bubble under the LEFT hemidiaphragm (a real laterality cue)

    def base_of(self, side: str) -> float:
        return self.base - (self.right_rise if side == "right" else 0.0)

    @property
    def lung_centre(self) -> float:
        """Distance of each lung's centre from the midline."""
        return (self.mediastinum + self.half_width) / 2

    @property
    def lung_rx(self) -> float:
        return (self.half_width - self.mediastinum) / 2

    def lung_point(self, side: str, f: float, g: float) -> tuple[float, float]:
        """(u, v) of the point at height ``f`` and lateral position ``g`` of one lung."""
        s = self.mediastinum + g * (self.half_width - self.mediastinum)
        return self.cx + side_sign(side) * s, self.apex + f * (self.base_of(side) - self.apex)

    def lung_rho(self, side: str, f: float, g: float) -> float:
        """Lung-shape level (<1 inside) at a lung point, used to keep findings inside the lung."""
        s = self.mediastinum + g * (self.half_width - self.mediastinum)
        return abs((s - self.lung_centre) / self.lung_rx) ** LUNG_POWER + abs(1.0 - f) ** LUNG_POWER


@dataclass(frozen=True)
class Nodule:
    side: str
    zone: str
    size_mm: int
    f: float
    g: float
    contrast: float
    subtle: bool = False


@dataclass(frozen=True)
class Effusion:
    side: str
    amount: str
    level: float  # fluid height above the lung base, as a fraction of lung height
    subtle: bool = False


@dataclass(frozen=True)
class Pneumothorax:
    side: str
    size: str  # small / moderate / large
    depth: float  # fraction by which the lung has collapsed towards the hilum
    subtle: bool = False


@dataclass(frozen=True)
class Consolidation:
    lobe: str
    blobs: tuple[tuple[float, float, float], ...]  # (f, g, sigma) of each patch
    density: float
    subtle: bool = False

    @property
    def side(self) -> str:
        return lobe_side(self.lobe)


@dataclass(frozen=True)
class Phantom:
    """Ground truth of one study: anatomy plus the findings present (None = absent)."""

    anatomy: Anatomy
    nodule: Nodule | None = None
    effusion: Effusion | None = None
    pneumothorax: Pneumothorax | None = None
    consolidation: Consolidation | None = None
    cardiomegaly_subtle: bool = False

    @property
    def cardiomegaly(self) -> bool:
        return self.anatomy.ctr > 0.5

    @property
    def labels(self) -> list[str]:
        """Positive class names in the card's order, or ['no finding']."""
        present = [
            ("nodule", self.nodule is not None),
            ("pleural effusion", self.effusion is not None),
            ("pneumothorax", self.pneumothorax is not None),
            ("consolidation", self.consolidation is not None),
            ("cardiomegaly", self.cardiomegaly),
        ]
        names = [name for name, on in present if on]
        return names or ["no finding"]

    @property
    def subtle(self) -> list[str]:
        """Findings drawn faint or small (their report sentences are hedged)."""
        items = [
            ("nodule", self.nodule), ("pleural effusion", self.effusion),
            ("pneumothorax", self.pneumothorax), ("consolidation", self.consolidation),
        ]
        out = [name for name, item in items if item is not None and item.subtle]
        if self.cardiomegaly and self.cardiomegaly_subtle:
            out.append("cardiomegaly")
        return out


# ----------------------------------------------------------------------------- sampling
def sample_ctr(rng: np.random.Generator, cardiomegaly: bool, subtle: bool = False) -> float:
    """A CTR clearly on one side of 0.5; subtle cardiomegaly is borderline (0.51-0.53)."""
    if not cardiomegaly:
        return float(rng.uniform(0.36, 0.48))
    return float(rng.uniform(0.51, 0.53) if subtle else rng.uniform(0.53, 0.64))


def sample_anatomy(rng: np.random.Generator, ctr: float) -> Anatomy:
    """A patient's body habitus; the ranges keep every structure inside the image."""
    return Anatomy(
        cx=float(rng.normal(0.5, 0.012)),
        tilt=float(rng.normal(0.0, 0.025)),
        half_width=float(rng.uniform(0.34, 0.40)),
        mediastinum=float(rng.uniform(0.06, 0.08)),
        apex=float(rng.uniform(0.14, 0.20)),
        base=float(rng.uniform(0.76, 0.84)),
        right_rise=float(rng.uniform(0.01, 0.035)),
        dome=float(rng.uniform(0.05, 0.09)),
        ctr=ctr,
        heart_height=float(rng.uniform(0.15, 0.19)),
        rib_spacing=float(rng.uniform(0.056, 0.068)),
        rib_curve=float(rng.uniform(0.22, 0.36)),
        body_margin=float(rng.uniform(0.05, 0.10)),
        bubble=bool(rng.random() < 0.7),
    )


def jitter_anatomy(a: Anatomy, rng: np.random.Generator) -> Anatomy:
    """The same patient on another day: positioning and inspiration change, the CTR class does not."""
    ctr = a.ctr + float(rng.normal(0, 0.008))
    ctr = max(ctr, 0.505) if a.ctr > 0.5 else min(ctr, 0.49)
    return replace(a, cx=a.cx + float(rng.normal(0, 0.006)), tilt=a.tilt + float(rng.normal(0, 0.01)),
                   base=float(np.clip(a.base + rng.normal(0, 0.012), 0.74, 0.86)), ctr=ctr)


def _pick(rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def sample_nodule(rng: np.random.Generator, a: Anatomy, subtle: bool) -> Nodule:
    """A nodule inside the lung; subtle ones are small and faint."""
    side, zone = _pick(rng, SIDES), _pick(rng, ZONES)
    lo = 0.55 if side == "left" and zone != "upper" else 0.2  # keep most of them off the heart
    f, g = 0.5, 0.5
    for _ in range(50):
        f, g = float(rng.uniform(*_ZONE_F[zone])), float(rng.uniform(lo, 0.9))
        if a.lung_rho(side, f, g) < 0.75:
            break
    size = int(rng.integers(6, 11) if subtle else rng.integers(10, 31))
    contrast = float(rng.uniform(0.07, 0.11) if subtle else rng.uniform(0.14, 0.26))
    return Nodule(side, zone, size, round(f, 4), round(g, 4), contrast, subtle)


def sample_effusion(rng: np.random.Generator, subtle: bool, side: str | None = None) -> Effusion:
    """Small effusions only blunt the costophrenic angle; large ones fill the lower hemithorax."""
    side = side or _pick(rng, SIDES)
    amount = "small" if subtle else AMOUNTS[int(rng.choice(3, p=[0.45, 0.35, 0.20]))]
    level = {"small": (0.03, 0.09), "moderate": (0.16, 0.30), "large": (0.36, 0.55)}[amount]
    lv = rng.uniform(0.0, 0.03) if subtle else rng.uniform(*level)
    return Effusion(side, amount, round(float(lv), 4), subtle)


def sample_pneumothorax(rng: np.random.Generator, subtle: bool, side: str | None = None) -> Pneumothorax:
    """Depth is the collapse fraction; subtle ones are a thin apical/lateral rim."""
    side = side or _pick(rng, SIDES)
    size = "small" if subtle else AMOUNTS[int(rng.choice(3, p=[0.45, 0.35, 0.20]))]
    depth = {"small": (0.09, 0.15), "moderate": (0.18, 0.27), "large": (0.30, 0.42)}[size]
    d = rng.uniform(0.06, 0.09) if subtle else rng.uniform(*depth)
    return Pneumothorax(side, size, round(float(d), 4), subtle)


def sample_consolidation(rng: np.random.Generator, subtle: bool, lobe: str | None = None) -> Consolidation:
    """A few overlapping patches inside one lobe's projection."""
    lobe = lobe or _pick(rng, LOBES)
    (f0, f1), (g0, g1) = _LOBE_BOX[lobe]
    k = int(rng.integers(3, 6))
    blobs = tuple(
        (round(float(rng.uniform(f0, f1)), 4), round(float(rng.uniform(g0, g1)), 4),
         round(float(rng.uniform(0.025, 0.05)), 4))
        for _ in range(k)
    )
    density = float(rng.uniform(0.08, 0.12) if subtle else rng.uniform(0.15, 0.27))
    return Consolidation(lobe, blobs, round(density, 4), subtle)


# ----------------------------------------------------------------------------- rendering helpers
@lru_cache(maxsize=8)
def _base_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    v, u = np.meshgrid(c, c, indexing="ij")
    return u, v


def _ramp(d_px: np.ndarray) -> np.ndarray:
    """Anti-aliased step: 0 outside, 1 inside, linear over one pixel around d_px = 0."""
    return np.clip(d_px + 0.5, 0.0, 1.0)


def _signed_px(field: np.ndarray, level: float = 1.0) -> np.ndarray:
    """Approximate signed distance (px, positive inside) to the ``field == level`` contour.

    Dividing by the numerical gradient makes every edge one pixel soft at any image size.
    """
    gy, gx = np.gradient(field)
    return (level - field) / np.maximum(np.hypot(gx, gy), 1e-6)


def _smooth_noise(rng: np.random.Generator, size: int, sigma_frac: float) -> np.ndarray:
    """Zero-mean, unit-std correlated noise whose grain scales with the image."""
    n = ndimage.gaussian_filter(rng.standard_normal((size, size)).astype(np.float32),
                                sigma=max(0.7, sigma_frac * size), mode="reflect")
    return n / max(float(n.std()), 1e-6)


def _nonempty(mask: np.ndarray, weight: np.ndarray, u: np.ndarray, v: np.ndarray,
              centre: tuple[float, float]) -> np.ndarray:
    """Grounding needs a non-empty mask even when a finding is sub-pixel at 28 px."""
    if mask.any():
        return mask
    if float(weight.max()) > 0:
        return weight >= 0.5 * float(weight.max())
    d = (u - centre[0]) ** 2 + (v - centre[1]) ** 2
    return d == d.min()


@dataclass
class _Frame:
    """Per-pixel geometry of one anatomy at one size, shared by the anatomy and the findings."""

    size: int
    u: np.ndarray
    v: np.ndarray
    s: np.ndarray  # distance from the midline
    left: np.ndarray  # bool: patient's left side (image right)
    base: np.ndarray  # lung-base row of the pixel's side
    dome: np.ndarray  # diaphragm row under the pixel
    lung: np.ndarray  # soft lung-field mask (both lungs)
    heart: np.ndarray  # soft visible cardiac silhouette

    def side_mask(self, side: str) -> np.ndarray:
        return self.left if side == "left" else ~self.left

    def g(self, a: Anatomy) -> np.ndarray:
        return (self.s - a.mediastinum) / (a.half_width - a.mediastinum)


def _frame(a: Anatomy, size: int) -> _Frame:
    u0, v0 = _base_grid(size)
    c, sn = np.float32(np.cos(a.tilt)), np.float32(np.sin(a.tilt))
    du, dv = u0 - 0.5, v0 - 0.55
    u = 0.5 + c * du + sn * dv
    v = 0.55 - sn * du + c * dv
    s = np.abs(u - np.float32(a.cx))
    left = side_sign("left") * (u - np.float32(a.cx)) >= 0
    base = np.where(left, np.float32(a.base_of("left")), np.float32(a.base_of("right")))
    across = np.abs((s - a.lung_centre) / a.lung_rx) ** LUNG_POWER
    rho = across + np.abs((base - v) / (base - a.apex)) ** LUNG_POWER
    dome = base - a.dome * np.clip(1.0 - across, 0.0, 1.0)
    above = _ramp((dome - v) * size)
    lung = _ramp(_signed_px(rho)) * above * _ramp((s - a.mediastinum) * size)
    hw = a.ctr * a.half_width  # half the cardiac width
    to_left = side_sign("left")  # image direction of the patient's left
    hu = a.cx + to_left * hw / 3  # one third of the heart lies right of the midline
    heart_rho = ((u - hu) / hw) ** 2 + ((v - (a.base - 0.05)) / a.heart_height) ** 2
    heart = _ramp(_signed_px(heart_rho)) * above
    knob = ((u - (a.cx + to_left * (a.mediastinum + 0.004))) ** 2 + (v - (a.apex + 0.17)) ** 2) < 0.03**2
    lung = lung * ~knob  # aortic knob on the patient's left
    return _Frame(size, u, v, s, left, base, dome, lung, heart)


# ----------------------------------------------------------------------------- anatomy layers
def _body(a: Anatomy, fr: _Frame) -> np.ndarray:
    """Soft tissue: chest wall, shoulders and neck, thicker centrally; abdomen below the domes."""
    v = fr.v
    shoulders = 0.11 * np.clip((a.apex + 0.06 - v) / 0.08, 0.0, 1.0)
    flank = 0.03 * np.sin(np.pi * np.clip((v - a.apex) / (a.base - a.apex + 0.15), 0.0, 1.0))
    width = a.half_width + a.body_margin + shoulders + flank
    neck = np.clip((a.apex - 0.07 - v) / 0.03, 0.0, 1.0)
    width = width * (1 - neck) + 0.12 * neck
    body = _ramp((width - fr.s) * fr.size)
    thick = np.clip(1.0 - (fr.s / width) ** 2, 0.0, 1.0)
    abdomen = _ramp((v - fr.dome) * fr.size)
    return body * (0.40 + 0.14 * thick + 0.06 * abdomen)


def _bones(a: Anatomy, fr: _Frame) -> np.ndarray:
    """Posterior ribs (curved bands), faint anterior ribs, clavicles and the spine."""
    size, s, v = fr.size, fr.s, fr.v
    gr = s / a.half_width
    cage = _ramp((a.half_width + 0.025 - s) * size) * _ramp((s - 0.03) * size)
    start = a.apex - 0.035
    phase = (v - start - a.rib_curve * ((gr - 0.2) ** 2 - 0.04)) / a.rib_spacing
    dist = (phase - np.round(phase)) * a.rib_spacing
    n_ribs = (a.base - start) / a.rib_spacing
    ribs = np.exp(-((dist / 0.011) ** 2)) * ((phase > -0.4) & (phase < n_ribs))
    aphase = (v - start - 0.06 - 0.12 * (1 - gr)) / (1.6 * a.rib_spacing)
    ant = np.exp(-(((aphase - np.round(aphase)) * 1.6 * a.rib_spacing / 0.012) ** 2)) * (aphase > 0) * (aphase < 4)
    clav_v = a.apex - 0.01 - 0.04 * gr
    clav = np.exp(-(((v - clav_v) / 0.013) ** 2)) * _ramp((0.85 * a.half_width - s) * size) * _ramp((s - 0.035) * size)
    spine = _ramp((0.032 - s) * size) * (0.07 + 0.04 * np.cos(2 * np.pi * v / a.rib_spacing) ** 2)
    trachea = _ramp((0.011 - s) * size) * _ramp((a.apex + 0.14 - v) * size)
    return (0.09 * ribs + 0.03 * ant) * cage + 0.11 * clav + spine - 0.08 * trachea


def _markings(a: Anatomy, fr: _Frame, rng: np.random.Generator) -> np.ndarray:
    """Vessels radiating from each hilum, fading towards the periphery (what a pneumothorax lacks)."""
    hv = a.apex + 0.5 * (fr.base - a.apex)
    ds, dv = fr.s - (a.mediastinum + 0.02), fr.v - hv
    r = np.hypot(ds, dv)
    tex = _smooth_noise(rng, fr.size, 0.03)
    streak = (0.5 + 0.5 * np.cos(9.0 * np.arctan2(dv, ds) + 2.0 * tex)) ** 3
    return np.exp(-r / 0.16) * (0.3 + streak) * np.clip(0.8 + 0.25 * tex, 0.3, 1.3)


# ----------------------------------------------------------------------------- findings
@dataclass
class _Layers:
    air: np.ndarray  # lung air (darkens)
    marks: np.ndarray  # visibility of vessel markings
    extra: np.ndarray  # added density (nodules, consolidation, pleural line)


def _draw_nodule(n: Nodule, a: Anatomy, fr: _Frame, ly: _Layers) -> np.ndarray:
    uc, vc = a.lung_point(n.side, n.f, n.g)
    r = n.size_mm / 2 / FIELD_OF_VIEW_MM
    r_eff = max(r, 0.75 / fr.size)
    d = np.hypot(fr.u - uc, fr.v - vc)
    ly.extra += n.contrast * (r / r_eff) ** 2 * np.sqrt(np.clip(1 - (d / r_eff) ** 2, 0, 1))
    return d <= max(r, 0.75 / fr.size)


def _draw_effusion(e: Effusion, a: Anatomy, fr: _Frame, ly: _Layers) -> np.ndarray:
    """Fluid replaces air below a meniscus that climbs along the chest wall."""
    base = a.base_of(e.side)
    g = np.clip(fr.g(a), 0, 1)
    # Fluid gathers laterally first (the blunted costophrenic angle), then rises as a meniscus.
    top = base - e.level * (base - a.apex) * (0.3 + 0.7 * g**2) - (0.04 + 0.1 * e.level) * g**4
    fluid = np.clip((fr.v - top) / 0.025, 0, 1) * fr.side_mask(e.side)
    visible = fluid * fr.lung
    ly.air *= 1 - 0.92 * fluid
    ly.marks *= 1 - fluid
    return _nonempty(visible > 0.5, visible, fr.u, fr.v, a.lung_point(e.side, 0.97, 0.95))


def _draw_pneumothorax(p: Pneumothorax, a: Anatomy, fr: _Frame, ly: _Layers) -> np.ndarray:
    """The lung shrinks towards its hilum, leaving a lucent rim without markings and a pleural line."""
    base = a.base_of(p.side)
    height = base - a.apex
    hs, hv = a.mediastinum, a.apex + 0.45 * height
    k = 1.0 - p.depth
    s2, v2 = hs + (fr.s - hs) / k, hv + (fr.v - hv) / k
    rho = np.abs((s2 - a.lung_centre) / a.lung_rx) ** LUNG_POWER + np.abs((base - v2) / height) ** LUNG_POWER
    edge = _signed_px(rho)
    where = fr.lung * fr.side_mask(p.side) * np.clip((base - 0.2 * height - fr.v) / (0.15 * height), 0, 1)
    where = where * np.clip((fr.g(a) - 0.05) / 0.1, 0, 1)
    rim = where * _ramp(-edge)
    line = where * np.exp(-(edge**2) / 0.5)
    ly.air += 0.18 * rim
    ly.marks *= 1 - rim
    ly.extra += 0.12 * line
    return _nonempty(rim > 0.5, rim, fr.u, fr.v, a.lung_point(p.side, 0.1, 0.5))


def _draw_consolidation(c: Consolidation, a: Anatomy, fr: _Frame, ly: _Layers,
                        rng: np.random.Generator) -> np.ndarray:
    """Patchy, textured opacity made of a few blobs, confined to one lung (sharp minor fissure for RML)."""
    patch = np.zeros_like(fr.u)
    for f, g, sigma in c.blobs:
        uc, vc = a.lung_point(c.side, f, g)
        patch += np.exp(-((fr.u - uc) ** 2 + (fr.v - vc) ** 2) / (2 * sigma**2))
    tex = np.clip(0.5 + 0.3 * _smooth_noise(rng, fr.size, 0.02), 0, 1)
    patch = np.clip(patch, 0, 1) * (0.45 + 0.55 * tex) * fr.lung * fr.side_mask(c.side)
    if c.lobe == "right middle lobe":
        fissure = a.lung_point("right", _LOBE_BOX[c.lobe][0][0], 0.5)[1]
        patch *= _ramp((fr.v - fissure) * fr.size)
    ly.extra += c.density * patch
    ly.marks *= 1 - 0.6 * patch
    centre = a.lung_point(c.side, *c.blobs[0][:2])
    return _nonempty(patch > 0.3, patch, fr.u, fr.v, centre)


ANATOMY_LABELS = {1: "lung", 2: "heart"}
"""Values of :func:`anatomy_label_map` (``mask_labels`` text ``1:lung|2:heart``)."""


def anatomy_label_map(a: Anatomy, size: int) -> np.ndarray:
    """Organ label map ``uint8 [size, size]``: 0 background, 1 lung fields, 2 cardiac silhouette.

    Drawn from the same frame as the picture (no random numbers are drawn, so asking for it
    leaves every image, mask and report byte-identical). The heart is drawn over the lungs (it
    overlaps their medial parts on a PA film); "lung" is the lung field, the area a collapsed
    lung or an effusion lies within.
    """
    fr = _frame(a, size)
    out = np.zeros((size, size), dtype=np.uint8)
    out[fr.lung > 0.5] = 1
    out[fr.heart > 0.5] = 2
    return out


def render_phantom(ph: Phantom, size: int, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Brightness image in [0, 1] (float32, before site effects) and a bool mask per present finding.

    Mask keys are class names (``nodule``, ``pleural effusion``, ``pneumothorax``, ``consolidation``,
    ``cardiomegaly``) in that order.
    """
    a = ph.anatomy
    fr = _frame(a, size)
    ly = _Layers(air=fr.lung * (1 - 0.9 * fr.heart), marks=fr.lung * (1 - fr.heart), extra=np.zeros_like(fr.u))
    masks: dict[str, np.ndarray] = {}
    if ph.nodule:
        masks["nodule"] = _draw_nodule(ph.nodule, a, fr, ly)
    if ph.effusion:
        masks["pleural effusion"] = _draw_effusion(ph.effusion, a, fr, ly)
    if ph.pneumothorax:
        masks["pneumothorax"] = _draw_pneumothorax(ph.pneumothorax, a, fr, ly)
    if ph.consolidation:
        masks["consolidation"] = _draw_consolidation(ph.consolidation, a, fr, ly, rng)
    if ph.cardiomegaly:
        masks["cardiomegaly"] = _nonempty(fr.heart > 0.5, fr.heart, fr.u, fr.v, (a.cx, a.base - 0.1))
    img = 0.04 + _body(a, fr) + _bones(a, fr) + 0.05 * fr.heart
    img -= LUNG_DARKNESS * ly.air
    img += 0.09 * ly.marks * _markings(a, fr, rng) + ly.extra
    if a.bubble:
        bu, bv = a.cx + side_sign("left") * 0.8 * a.lung_centre, a.base - a.dome + 0.045
        bubble = ((fr.u - bu) / 0.045) ** 2 + ((fr.v - bv) / 0.025) ** 2 < 1
        img -= 0.18 * bubble * (fr.v > fr.dome)
    order = ("nodule", "pleural effusion", "pneumothorax", "consolidation", "cardiomegaly")
    return np.clip(img, 0.0, 1.0).astype(np.float32), {k: masks[k] for k in order if k in masks}
