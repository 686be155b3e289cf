"""Synthetic chest-radiograph phantoms: medvl's embedded default dataset (``medvl data synth``).

Why it exists: demos, tutorials and tests need image-report pairs that need no download or
licence, yet are hard enough that a model reading laterality, negation and hedging beats one
that does not. :func:`generate_phantoms` writes

- ``images/<study>.png``: grayscale uint8 PA radiograph, patient's RIGHT on the IMAGE LEFT
  (radiological convention; a "left" finding is on the image's right half);
- ``images/<study>_mask_<class>.png``: one binary mask (0/255, same size) per present finding,
  next to its image;
- ``manifest.csv`` (via :func:`medvl.data.manifest.write_manifest`): ``image, text, labels, split,
  patient_id, study_id, site, modality, mask, mask_labels`` and ground-truth extras (sides, zone,
  size, amount, lobe, CTR, subtle findings). ``mask`` lists the mask paths ``|``-separated in the
  order of the class names in ``mask_labels``;
- ``card.yaml`` (:class:`medvl.data.card.DatasetCard`): multilabel classes with descriptions,
  synonyms and prompt templates, plus the generator settings.

Cohort model: patients have 1-3 studies (follow-ups keep the anatomy, the CTR class and any
nodule; acute findings come and go); each patient belongs to one site and one split
(train/val/test ~ 70/10/20 by patient). Sites differ in gamma, noise and effective resolution.
Everything is deterministic per seed: every study draws from its own
``numpy.random.default_rng([seed, stream, study])``.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

from medvl.data.card import ClassInfo, DatasetCard
from medvl.data.manifest import write_manifest
from medvl.data.phantom_anatomy import (
    ANATOMY_LABELS,
    FIELD_OF_VIEW_MM,
    Anatomy,
    Phantom,
    anatomy_label_map,
    jitter_anatomy,
    render_phantom,
    sample_anatomy,
    sample_consolidation,
    sample_ctr,
    sample_effusion,
    sample_nodule,
    sample_pneumothorax,
)
from medvl.data.reports import render_report
from medvl.errors import ConfigError, MedvlError

__all__ = [
    "CLASSES", "PREVALENCE", "SITES", "SiteProfile", "apply_site", "build_card", "generate_phantoms",
    "parse_count_range", "sample_cohort", "SyntheticStudy",
]

GENERATOR_VERSION = 1
CLASSES = ("nodule", "pleural effusion", "pneumothorax", "consolidation", "cardiomegaly", "no finding")
PREVALENCE = {"nodule": 0.20, "pleural effusion": 0.20, "pneumothorax": 0.15, "consolidation": 0.20,
              "cardiomegaly": 0.20}
"""Per-study probability of each finding (independent), giving ~34 % 'no finding' studies."""
SUBTLE_RATE = 0.25  # share of positive findings drawn small/faint and reported with a hedge
PERSIST_RATE = 0.4  # chance an acute finding of the previous study is still there
SPLIT_FRACTIONS = (("train", 0.7), ("val", 0.1), ("test", 0.2))
IMAGE_FORMATS = ("png", "jpg")
MIN_SIZE = 16


@dataclass(frozen=True)
class SiteProfile:
    """How one simulated hospital's detector and processing change the picture."""

    name: str
    gamma: float  # intensity curve applied to [0, 1] brightness (<1 brightens)
    contrast: float
    offset: float
    noise: float  # std of additive noise at mid-grey, in [0, 1] units
    resolution: float  # effective resolution as a fraction of the image size (down- then up-sample)
    blur: float  # Gaussian blur sigma in pixels at 64 px (scaled with the size)
    description: str


SITES = (
    SiteProfile("site_a", 1.00, 1.00, 0.00, 0.012, 1.00, 0.0, "modern DR: linear, low noise, full resolution"),
    SiteProfile("site_b", 0.65, 0.85, 0.06, 0.022, 0.60, 0.0, "older CR: brighter, noisier, lower resolution"),
    SiteProfile("site_c", 1.50, 1.10, -0.04, 0.018, 0.75, 0.5, "high-contrast processing, mild blur"),
    SiteProfile("site_d", 0.85, 0.90, 0.02, 0.022, 1.00, 1.0, "portable unit: soft and blurred"),
)


@dataclass(frozen=True)
class SyntheticStudy:
    """One row to be: ground truth, its patient's previous study, site and split."""

    index: int
    patient_id: str
    study_id: str
    study_index: int  # 1-based order within the patient
    site: SiteProfile
    phantom: Phantom
    prior: Phantom | None
    split: str = "train"


# ----------------------------------------------------------------------------- validation
def parse_count_range(value: str | int | Sequence[int], name: str = "studies-per-patient") -> tuple[int, int]:
    """'1-3' -> (1, 3); '2' or 2 -> (2, 2). Raises ConfigError naming the option."""
    try:
        if isinstance(value, int):
            lo = hi = value
        elif isinstance(value, str):
            parts = value.strip().split("-")
            if len(parts) > 2:
                raise ValueError
            lo, hi = int(parts[0]), int(parts[-1])
        else:
            lo, hi = (int(x) for x in value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: expected a count like '2' or a range like '1-3', got {value!r}") from None
    if lo < 1 or hi < lo:
        raise ConfigError(f"{name}: range must satisfy 1 <= min <= max, got {lo}-{hi}")
    return lo, hi


def _validate(n: int, size: int, seed: int, sites: int, image_format: str) -> None:
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed: must be a non-negative integer, got {seed!r}")
    if not isinstance(n, (int, np.integer)) or n <= 0:
        raise ConfigError(f"n: number of images must be a positive integer, got {n!r}")
    if not isinstance(size, (int, np.integer)) or size < MIN_SIZE:
        raise ConfigError(f"size: image size must be an integer >= {MIN_SIZE} px, got {size!r}")
    if not 1 <= sites <= len(SITES):
        raise ConfigError(f"sites: must be between 1 and {len(SITES)} ({', '.join(s.name for s in SITES)}), "
                          f"got {sites}")
    if image_format not in IMAGE_FORMATS:
        raise ConfigError(f"format: must be one of {', '.join(IMAGE_FORMATS)}, got {image_format!r}")


def _prepare_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Refuse to mix with existing files unless asked; --overwrite removes only what we write."""
    if out_dir.exists() and not out_dir.is_dir():
        raise MedvlError(f"output path {out_dir} exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not overwrite:
            raise MedvlError(f"output directory {out_dir} is not empty; pass --overwrite (overwrite=True) "
                             "to replace its images/, manifest.csv and card.yaml")
        shutil.rmtree(out_dir / "images", ignore_errors=True)
        for name in ("manifest.csv", "card.yaml"):
            (out_dir / name).unlink(missing_ok=True)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)


# ----------------------------------------------------------------------------- cohort
def _acute(rng: np.random.Generator, name: str, prior: Phantom | None, sampler: Any) -> Any:
    """Sample an acute finding; one seen on the previous study persists (same side) with PERSIST_RATE.

    After a negative study the onset rate is lowered so that every study keeps the PREVALENCE.
    """
    attr = {"pleural effusion": "effusion"}.get(name, name)
    prior_item = getattr(prior, attr) if prior is not None else None
    p = PREVALENCE[name]
    subtle = bool(rng.random() < SUBTLE_RATE)
    if prior_item is not None:
        if rng.random() < PERSIST_RATE:
            key = "lobe" if name == "consolidation" else "side"
            return sampler(rng, subtle, getattr(prior_item, key))
        return None
    if prior is not None:
        p = p * (1 - PERSIST_RATE) / (1 - p)
    return sampler(rng, subtle) if rng.random() < p else None


def _patient_studies(rng: np.random.Generator, k: int) -> list[Phantom]:
    """k studies of one patient: chronic findings (nodule, heart size) are shared, acute ones vary."""
    cardiomegaly = bool(rng.random() < PREVALENCE["cardiomegaly"])
    heart_subtle = bool(rng.random() < SUBTLE_RATE)
    anatomy: Anatomy = sample_anatomy(rng, sample_ctr(rng, cardiomegaly, heart_subtle))
    nodule = None
    if rng.random() < PREVALENCE["nodule"]:
        nodule = sample_nodule(rng, anatomy, bool(rng.random() < SUBTLE_RATE))
    out: list[Phantom] = []
    prior: Phantom | None = None
    for j in range(k):
        a = anatomy if j == 0 else jitter_anatomy(anatomy, rng)
        if nodule is not None and j > 0 and not nodule.subtle and rng.random() < 0.3:
            nodule = replace(nodule, size_mm=min(30, nodule.size_mm + int(rng.integers(1, 4))))  # growth
        ph = Phantom(
            anatomy=a,
            nodule=nodule,
            effusion=_acute(rng, "pleural effusion", prior, sample_effusion),
            pneumothorax=_acute(rng, "pneumothorax", prior, sample_pneumothorax),
            consolidation=_acute(rng, "consolidation", prior, sample_consolidation),
            cardiomegaly_subtle=heart_subtle,
        )
        out.append(ph)
        prior = ph
    return out


def _assign_splits(n_patients: int, rng: np.random.Generator) -> list[str]:
    """Split label per patient (~70/10/20); every split gets a patient once there are >= 3."""
    counts = {name: int(round(frac * n_patients)) for name, frac in SPLIT_FRACTIONS[1:]}
    if n_patients >= 3:
        counts = {k: max(1, c) for k, c in counts.items()}
    labels = ["val"] * counts["val"] + ["test"] * counts["test"]
    labels = (["train"] * max(0, n_patients - len(labels)) + labels)[:n_patients]
    return [labels[i] for i in rng.permutation(n_patients)]


def sample_cohort(n: int, seed: int = 0, sites: int = 2,
                  studies_per_patient: tuple[int, int] = (1, 3)) -> list[SyntheticStudy]:
    """Ground truth for ``n`` studies (no pixels): patients, sites, splits, findings."""
    rng = np.random.default_rng([seed, 0])
    lo, hi = studies_per_patient
    patients: list[tuple[SiteProfile, list[Phantom]]] = []
    total = 0
    while total < n:
        k = min(int(rng.integers(lo, hi + 1)), n - total)
        site = SITES[int(rng.integers(sites))]
        patients.append((site, _patient_studies(rng, k)))
        total += k
    splits = _assign_splits(len(patients), np.random.default_rng([seed, 3]))
    width = max(5, len(str(len(patients))))
    studies: list[SyntheticStudy] = []
    for p, ((site, phantoms), split) in enumerate(zip(patients, splits, strict=True)):
        pid = f"p{p + 1:0{width}d}"
        for j, ph in enumerate(phantoms):
            studies.append(SyntheticStudy(len(studies), pid, f"{pid}_s{j + 1}", j + 1, site, ph,
                                          phantoms[j - 1] if j else None, split))
    return studies


# ----------------------------------------------------------------------------- pixels
def apply_site(brightness: np.ndarray, site: SiteProfile, rng: np.random.Generator) -> np.ndarray:
    """Detector + processing of one site: gamma, window, effective resolution, blur, noise -> uint8."""
    size = brightness.shape[0]
    x = np.clip(brightness, 0.0, 1.0) ** site.gamma
    x = x * (site.contrast * rng.uniform(0.93, 1.07)) + site.offset + rng.normal(0, 0.015)
    if site.resolution < 1.0:
        low = max(8, int(round(size * site.resolution)))
        img = Image.fromarray(x.astype(np.float32))
        x = np.asarray(img.resize((low, low), Image.Resampling.BOX).resize((size, size), Image.Resampling.BILINEAR))
    if site.blur > 0:
        x = ndimage.gaussian_filter(x, sigma=site.blur * size / 64, mode="nearest")
    x = x + rng.normal(0.0, site.noise, x.shape) * (0.6 + 0.8 * np.clip(x, 0, 1))
    return (np.clip(x, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)


def _slug(label: str) -> str:
    return label.replace(" ", "_")


def _extras(ph: Phantom) -> dict[str, Any]:
    """Ground-truth columns beyond the labels, blank when the finding is absent."""
    n, e, p, c = ph.nodule, ph.effusion, ph.pneumothorax, ph.consolidation
    return {
        "nodule_side": n.side if n else "", "nodule_zone": n.zone if n else "",
        "nodule_size_mm": n.size_mm if n else "",
        "effusion_side": e.side if e else "", "effusion_amount": e.amount if e else "",
        "pneumothorax_side": p.side if p else "", "pneumothorax_size": p.size if p else "",
        "consolidation_lobe": c.lobe if c else "",
        "ctr": f"{ph.anatomy.ctr:.3f}",
        "subtle": "|".join(ph.subtle),
    }


def _write_study(st: SyntheticStudy, out_dir: Path, size: int, seed: int, image_format: str,
                 anatomy: bool = False) -> dict[str, Any]:
    """Render, write image + masks, write the report: one manifest row.

    ``anatomy`` adds an organ label map (lungs, heart) in the extra columns ``anatomy_mask`` /
    ``anatomy_mask_labels``; it draws no random numbers, so everything else stays identical.
    """
    rng = np.random.default_rng([seed, 1, st.index])
    brightness, masks = render_phantom(st.phantom, size, rng)
    pixels = apply_site(brightness, st.site, rng)
    image_rel = f"images/{st.study_id}.{image_format}"
    Image.fromarray(pixels).save(out_dir / image_rel, **({"quality": 95} if image_format == "jpg" else {}))
    mask_rels = []
    for label, mask in masks.items():
        rel = f"images/{st.study_id}_mask_{_slug(label)}.png"
        Image.fromarray(mask.astype(np.uint8) * 255).save(out_dir / rel)
        mask_rels.append(rel)
    text = render_report(st.phantom, np.random.default_rng([seed, 2, st.index]), st.prior)
    organs: dict[str, str] = {}
    if anatomy:
        rel = f"images/{st.study_id}_anatomy.png"
        Image.fromarray(anatomy_label_map(st.phantom.anatomy, size)).save(out_dir / rel)
        organs = {"anatomy_mask": rel,
                  "anatomy_mask_labels": "|".join(f"{v}:{k}" for v, k in ANATOMY_LABELS.items())}
    return {
        "image": image_rel, "text": text, "labels": "|".join(st.phantom.labels), "split": st.split,
        "patient_id": st.patient_id, "study_id": st.study_id, "site": st.site.name, "modality": "xray",
        "mask": "|".join(mask_rels), "mask_labels": "|".join(masks), "view": "PA",
        "study_index": st.study_index, **_extras(st.phantom), **organs,
    }


# ----------------------------------------------------------------------------- card
_CLASS_INFO = {
    "nodule": (["a small round opacity in the lung", "a well-circumscribed pulmonary nodule"],
               ["pulmonary nodule", "lung nodule", "nodular opacity"]),
    "pleural effusion": (["fluid blunting the costophrenic angle", "a meniscus of fluid at the lung base"],
                         ["effusion", "pleural fluid"]),
    "pneumothorax": (["air in the pleural space with a visible pleural line and no lung markings"],
                     ["collapsed lung", "partially collapsed lung"]),
    "consolidation": (["patchy airspace opacity in one lobe"], ["airspace opacity", "airspace disease", "pneumonia"]),
    "cardiomegaly": (["an enlarged cardiac silhouette with a cardiothoracic ratio above 0.5"],
                     ["enlarged heart", "enlarged cardiac silhouette"]),
    "no finding": (["a normal chest radiograph with clear lungs and normal heart size"],
                   ["normal chest x-ray", "no acute cardiopulmonary abnormality"]),
}


def build_card(n: int, size: int, seed: int, sites: int, studies_per_patient: tuple[int, int],
               image_format: str = "png") -> DatasetCard:
    """The dataset card; records the generator settings so the data can be regenerated exactly."""
    classes = [ClassInfo(name, list(d), list(s)) for name, (d, s) in _CLASS_INFO.items()]
    for c in classes:  # "no no finding" reads wrong: say what the absence of "no finding" means
        if c.name == "no finding":
            c.negatives = ["abnormal chest radiograph", "chest x-ray with an acute abnormality",
                           "abnormal findings on chest radiograph"]
    return DatasetCard(
        name="medvl-synthetic-cxr",
        task="multilabel",
        classes=classes,
        modality="xray",
        templates=["{label}", "a chest x-ray showing {label}", "chest radiograph with {label}",
                   "findings consistent with {label}"],
        negative_templates=["no {label}", "no evidence of {label}", "a chest x-ray without {label}"],
        description="Synthetic PA chest-radiograph phantoms with ground-truth reports and finding masks "
                    "(medvl's embedded default dataset).",
        license="CC0-1.0",
        extra={
            "orientation": "PA view, radiological convention: the patient's right is on the image left",
            "mask_scheme": "column 'mask' lists binary PNG masks (0/255, image size) separated by '|', in the "
                           "order of the class names in column 'mask_labels'; empty for 'no finding'",
            "field_of_view_mm": FIELD_OF_VIEW_MM,
            "sites": {s.name: s.description for s in SITES[:sites]},
            "generator": {"module": "medvl.data.synthetic", "version": GENERATOR_VERSION, "n": n, "size": size,
                          "seed": seed, "sites": sites,
                          "studies_per_patient": f"{studies_per_patient[0]}-{studies_per_patient[1]}",
                          "format": image_format},
        },
    )


def generate_phantoms(out_dir: str | Path, n: int = 1000, size: int = 64, seed: int = 0, sites: int = 2,
                      studies_per_patient: str | int | tuple[int, int] = (1, 3), image_format: str = "png",
                      overwrite: bool = False, anatomy: bool = False) -> Path:
    """Write ``n`` phantom studies, their masks, ``manifest.csv`` and ``card.yaml``; return the manifest path.

    ``anatomy``: also an organ label map per image (``images/<study>_anatomy.png``, 1 lung, 2 heart)
    in the columns ``anatomy_mask`` / ``anatomy_mask_labels`` (``1:lung|2:heart``); off by default so
    existing datasets and the demo stay byte-identical.

    Raises :class:`~medvl.errors.ConfigError` for bad arguments (n <= 0, size < 16, seed < 0, unknown
    format, sites outside 1-4) and :class:`~medvl.errors.MedvlError` for a non-empty ``out_dir`` without
    ``overwrite``.
    """
    spp = parse_count_range(studies_per_patient)
    _validate(n, size, seed, sites, image_format)
    out = Path(out_dir)
    _prepare_out_dir(out, overwrite)
    studies = sample_cohort(int(n), seed, sites, spp)
    rows = [_write_study(st, out, int(size), seed, image_format, anatomy) for st in studies]
    build_card(int(n), int(size), seed, sites, spp, image_format).save(out / "card.yaml")
    return write_manifest(rows, out / "manifest.csv")
