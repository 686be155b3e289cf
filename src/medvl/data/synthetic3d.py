"""Synthetic chest CT phantoms with reports, 3D finding masks and organ label maps (``medvl data synth --dims 3``).

Why: 3D CLIP, 3D grounding and 3D segmentation need volume-report pairs with voxel ground truth
that need no download or licence. :func:`generate_ct_phantoms` writes, per study,

- ``images/<study>.nii.gz``: int16 volume in Hounsfield units (air -1000, aerated lung ~ -850,
  soft tissue ~ 40, fluid ~ 10, bone ~ 500), axes in RAS order (first axis towards the patient's
  right, second anterior, third superior), affine = diag(spacing) so readers recover the spacing;
- ``images/<study>_mask_<class>.nii.gz``: one binary uint8 mask per present finding (columns
  ``mask`` / ``mask_labels``, ``|``-separated in the same order, as the 2D phantoms);
- ``images/<study>_anatomy.nii.gz``: organ label map, 1 lung, 2 heart (columns ``anatomy_mask`` /
  ``anatomy_mask_labels`` = ``1:lung|2:heart``, as the 2D phantoms' ``--anatomy``);
- ``manifest.csv`` (``image, text, labels, split, patient_id, study_id, modality, mask, mask_labels``
  plus ground truth: nodule lobe and size in mm, effusion side and amount, heart scale) and
  ``card.yaml`` (multilabel: nodule, pleural effusion, cardiomegaly, no finding; ``is_3d: true``,
  HU units and a suggested window).

Findings: a solid nodule of a stated diameter (8-30 mm) inside a stated lobe (lobes are coarse:
upper/lower by height, the right middle lobe anterior-mid), a pleural effusion layering
posteriorly (supine) in the stated side's lung, cardiomegaly as a heart scaled 1.3-1.5x. Reports
mention every finding with its size/lobe/side and negate absent ones. One study per patient;
splits ~70/10/20 by patient. Deterministic per seed (``default_rng([seed, stream, index])``).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medvl.data.card import ClassInfo, DatasetCard
from medvl.data.manifest import write_manifest
from medvl.errors import ConfigError, MedvlError

GENERATOR_VERSION = 1
CLASSES = ("nodule", "pleural effusion", "cardiomegaly", "no finding")
PREVALENCE = {"nodule": 0.35, "pleural effusion": 0.3, "cardiomegaly": 0.3}
LOBES = ("right upper lobe", "right middle lobe", "right lower lobe", "left upper lobe", "left lower lobe")
AMOUNTS = {"small": 0.25, "moderate": 0.45, "large": 0.7}  # share of the lung's antero-posterior depth
ANATOMY_LABELS = {1: "lung", 2: "heart"}
FIELD_OF_VIEW_MM = 340.0
MIN_SIZE = 16
HU = {"air": -1000, "lung": -850, "fat": -100, "soft": 40, "blood": 45, "fluid": 10, "bone": 500, "nodule": 30}
SUGGESTED_WINDOW = (-300.0, 1600.0)  # centre, width: lungs and soft tissue both visible
SPLIT_FRACTIONS = (("train", 0.7), ("val", 0.1), ("test", 0.2))


@dataclass(frozen=True)
class CTStudy:
    """Ground truth of one phantom CT."""

    index: int
    study_id: str
    split: str
    nodule_lobe: str | None
    nodule_mm: float | None
    effusion_side: str | None
    effusion_amount: str | None
    heart_scale: float

    @property
    def labels(self) -> list[str]:
        out = [c for c, on in (("nodule", self.nodule_lobe), ("pleural effusion", self.effusion_side),
                               ("cardiomegaly", self.heart_scale > 1.2)) if on]
        return out or ["no finding"]


def _grid(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Normalised coordinates in [-1, 1] along (right, anterior, superior)."""
    c = (np.arange(size) + 0.5) / size * 2 - 1
    return np.meshgrid(c, c, c, indexing="ij")


def _ellipsoid(x: np.ndarray, y: np.ndarray, z: np.ndarray, centre: tuple[float, float, float],
               radii: tuple[float, float, float]) -> np.ndarray:
    return ((x - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2 + \
        ((z - centre[2]) / radii[2]) ** 2 <= 1.0


def lobe_region(lobe: str, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Coarse lobe territory (a box in normalised coordinates; right = x > 0)."""
    right = x > 0
    if lobe == "right upper lobe":
        return right & (z > 0.15)
    if lobe == "right middle lobe":
        return right & (z <= 0.15) & (z > -0.25) & (y > 0)
    if lobe == "right lower lobe":
        return right & (z <= 0.15) & ~((z > -0.25) & (y > 0))
    if lobe == "left upper lobe":
        return ~right & (z > -0.05)
    if lobe == "left lower lobe":
        return ~right & (z <= -0.05)
    raise ConfigError(f"unknown lobe {lobe!r}; valid: {', '.join(LOBES)}")


def render_ct(st: CTStudy, size: int, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, np.ndarray],
                                                                      np.ndarray]:
    """HU volume (int16), finding masks (bool, in ``CLASSES`` order) and the organ label map (uint8)."""
    x, y, z = _grid(size)
    jitter = rng.uniform(-0.03, 0.03, size=4)
    body = (x / 0.92) ** 2 + (y / 0.68) ** 2 <= 1.0
    fat = body & ((x / 0.84) ** 2 + (y / 0.60) ** 2 > 1.0)
    lungs = {s: _ellipsoid(x, y, z, (sign * (0.38 + jitter[0]), 0.02 + jitter[1], 0.05), (0.30, 0.46, 0.82))
             for s, sign in (("right", 1.0), ("left", -1.0))}
    hs = st.heart_scale
    heart = _ellipsoid(x, y, z, (-0.10 + jitter[2], 0.22, -0.38 + jitter[3]), (0.27 * hs, 0.24 * hs, 0.30 * hs))
    spine = ((x / 0.11) ** 2 + ((y + 0.52) / 0.11) ** 2 <= 1.0)
    lung = (lungs["right"] | lungs["left"]) & ~heart & body
    vol = np.full(x.shape, HU["air"], np.float32)
    vol[body] = HU["soft"]
    vol[fat] = HU["fat"]
    vol[lung] = HU["lung"]
    vol[heart & body] = HU["blood"]
    vol[spine & body] = HU["bone"]
    masks: dict[str, np.ndarray] = {}
    spacing = FIELD_OF_VIEW_MM / size
    if st.nodule_lobe:
        territory = lung & lobe_region(st.nodule_lobe, x, y, z)
        r_vox = st.nodule_mm / 2 / spacing  # type: ignore[operator]
        from scipy import ndimage

        inner = ndimage.binary_erosion(territory, iterations=max(1, int(np.ceil(r_vox))))
        candidates = np.argwhere(inner if inner.any() else territory)
        if candidates.size == 0:
            raise MedvlError(f"study {st.study_id}: no room for a nodule in the {st.nodule_lobe} at size {size}")
        cx, cy, cz = candidates[rng.integers(len(candidates))]
        ii, jj, kk = np.indices(x.shape)
        ball = (ii - cx) ** 2 + (jj - cy) ** 2 + (kk - cz) ** 2 <= max(r_vox, 0.5) ** 2
        vol[ball & lung] = HU["nodule"]
        masks["nodule"] = ball & lung
    if st.effusion_side:
        side_lung = lung & (x > 0 if st.effusion_side == "right" else x <= 0)
        ys = y[side_lung]
        level = ys.min() + AMOUNTS[st.effusion_amount] * (ys.max() - ys.min())  # type: ignore[index]
        fluid = side_lung & (y <= level)
        vol[fluid] = HU["fluid"]
        masks["pleural effusion"] = fluid
    if st.heart_scale > 1.2:
        masks["cardiomegaly"] = heart & body
    vol += rng.normal(0, 15, size=vol.shape).astype(np.float32)
    organs = np.zeros(x.shape, np.uint8)
    organs[lung] = 1
    organs[heart & body] = 2
    return np.clip(np.rint(vol), -1024, 3071).astype(np.int16), masks, organs


# ----------------------------------------------------------------------------- reports
def _pick(rng: np.random.Generator, options: list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def render_ct_report(st: CTStudy, rng: np.random.Generator) -> str:
    """FINDINGS + IMPRESSION naming each finding with its lobe/side/size; absent findings negated."""
    body, impression = [], []
    if st.nodule_lobe:
        mm = int(round(st.nodule_mm or 0))
        body.append(_pick(rng, [f"There is a {mm} mm solid nodule in the {st.nodule_lobe}.",
                                f"A {mm} mm pulmonary nodule is seen in the {st.nodule_lobe}.",
                                f"Solid pulmonary nodule in the {st.nodule_lobe} measuring {mm} mm."]))
        impression.append(f"{mm} mm {st.nodule_lobe} nodule")
    else:
        body.append(_pick(rng, ["No pulmonary nodules.", "No suspicious pulmonary nodule or mass."]))
    if st.effusion_side:
        body.append(_pick(rng, [f"{st.effusion_amount.capitalize()} {st.effusion_side} pleural effusion.",  # type: ignore[union-attr]
                                f"There is a {st.effusion_amount} {st.effusion_side} pleural effusion."]))
        impression.append(f"{st.effusion_amount} {st.effusion_side} pleural effusion")
    else:
        body.append(_pick(rng, ["No pleural effusion.", "No pleural fluid."]))
    if st.heart_scale > 1.2:
        body.append(_pick(rng, ["The heart is enlarged.", "Cardiomegaly.", "Enlarged cardiac silhouette."]))
        impression.append("cardiomegaly")
    else:
        body.append(_pick(rng, ["Heart size is normal.", "Normal heart size. No pericardial effusion."]))
    body = [body[i] for i in rng.permutation(len(body))]
    imp = "; ".join(impression).capitalize() + "." if impression else "No acute intrathoracic abnormality."
    return f"FINDINGS: {' '.join(body)} IMPRESSION: {imp}"


# ----------------------------------------------------------------------------- cohort and files
def sample_ct_cohort(n: int, seed: int = 0) -> list[CTStudy]:
    """Ground truth for ``n`` studies (one per patient), splits ~70/10/20."""
    rng = np.random.default_rng([seed, 0])
    n_val, n_test = (max(1, round(f * n)) if n >= 3 else 0 for _, f in SPLIT_FRACTIONS[1:])
    splits = ["val"] * n_val + ["test"] * n_test
    splits = (["train"] * max(0, n - len(splits)) + splits)[:n]
    splits = [splits[i] for i in rng.permutation(n)]
    studies = []
    for i in range(n):
        r = np.random.default_rng([seed, 3, i])
        nod = r.random() < PREVALENCE["nodule"]
        eff = r.random() < PREVALENCE["pleural effusion"]
        cm = r.random() < PREVALENCE["cardiomegaly"]
        studies.append(CTStudy(
            index=i, study_id=f"ct{i:05d}", split=splits[i],
            nodule_lobe=_pick(r, list(LOBES)) if nod else None,
            nodule_mm=round(float(r.uniform(8, 30)), 1) if nod else None,
            effusion_side=_pick(r, ["left", "right"]) if eff else None,
            effusion_amount=_pick(r, list(AMOUNTS)) if eff else None,
            heart_scale=round(float(r.uniform(1.3, 1.5) if cm else r.uniform(0.9, 1.1)), 3)))
    return studies


def _save_nifti(array: np.ndarray, spacing: float, path: Path) -> None:
    import nibabel as nib

    img = nib.Nifti1Image(np.ascontiguousarray(array), np.diag([spacing, spacing, spacing, 1.0]))
    img.header.set_xyzt_units("mm")
    nib.save(img, str(path))


def _write_study(st: CTStudy, out: Path, size: int, seed: int) -> dict[str, Any]:
    vol, masks, organs = render_ct(st, size, np.random.default_rng([seed, 1, st.index]))
    spacing = FIELD_OF_VIEW_MM / size
    image_rel = f"images/{st.study_id}.nii.gz"
    _save_nifti(vol, spacing, out / image_rel)
    mask_rels = []
    for label, mask in masks.items():
        rel = f"images/{st.study_id}_mask_{label.replace(' ', '_')}.nii.gz"
        _save_nifti(mask.astype(np.uint8), spacing, out / rel)
        mask_rels.append(rel)
    anatomy_rel = f"images/{st.study_id}_anatomy.nii.gz"
    _save_nifti(organs, spacing, out / anatomy_rel)
    return {
        "image": image_rel, "text": render_ct_report(st, np.random.default_rng([seed, 2, st.index])),
        "labels": "|".join(st.labels), "split": st.split, "patient_id": f"p{st.index:05d}",
        "study_id": st.study_id, "modality": "ct", "mask": "|".join(mask_rels), "mask_labels": "|".join(masks),
        "anatomy_mask": anatomy_rel, "anatomy_mask_labels": "|".join(f"{k}:{v}" for k, v in ANATOMY_LABELS.items()),
        "nodule_lobe": st.nodule_lobe or "", "nodule_size_mm": st.nodule_mm or "",
        "effusion_side": st.effusion_side or "", "effusion_amount": st.effusion_amount or "",
        "heart_scale": st.heart_scale, "spacing_mm": round(spacing, 4),
    }


_CLASS_INFO = {
    "nodule": (["a round solid opacity within the lung on CT", "a pulmonary nodule"],
               ["pulmonary nodule", "lung nodule", "solid nodule"]),
    "pleural effusion": (["fluid layering in the dependent pleural space"], ["effusion", "pleural fluid"]),
    "cardiomegaly": (["an enlarged heart"], ["enlarged heart", "enlarged cardiac silhouette"]),
    "no finding": (["a normal chest CT with clear lungs and normal heart size"],
                   ["normal chest CT", "no acute intrathoracic abnormality"]),
}


def build_ct_card(n: int, size: int, seed: int) -> DatasetCard:
    classes = [ClassInfo(name, list(d), list(s)) for name, (d, s) in _CLASS_INFO.items()]
    for c in classes:
        if c.name == "no finding":
            c.negatives = ["abnormal chest CT", "chest CT with an abnormality"]
    return DatasetCard(
        name="medvl-synthetic-ct", task="multilabel", classes=classes, modality="ct",
        templates=["{label}", "a chest CT showing {label}", "CT of the chest with {label}"],
        negative_templates=["no {label}", "a chest CT without {label}"],
        description="Synthetic chest CT phantoms (HU, RAS NIfTI) with reports, 3D finding masks and organ maps.",
        license="CC0-1.0",
        extra={"is_3d": True, "units": "HU", "orientation": "RAS", "spacing_mm": FIELD_OF_VIEW_MM / size,
               "suggested_window": list(SUGGESTED_WINDOW),
               "mask_scheme": "column 'mask' lists binary NIfTI masks separated by '|', in the order of "
                              "'mask_labels'; 'anatomy_mask' is an organ label map (1 lung, 2 heart)",
               "generator": {"module": "medvl.data.synthetic3d", "version": GENERATOR_VERSION, "n": n,
                             "size": size, "seed": seed}},
    )


def generate_ct_phantoms(out_dir: str | Path, n: int = 200, size: int = 32, seed: int = 0,
                         overwrite: bool = False) -> Path:
    """Write ``n`` CT phantom studies, masks, organ maps, ``manifest.csv`` and ``card.yaml``; return the manifest."""
    if not isinstance(n, (int, np.integer)) or n <= 0:
        raise ConfigError(f"n: number of volumes must be a positive integer, got {n!r}")
    if not isinstance(size, (int, np.integer)) or size < MIN_SIZE:
        raise ConfigError(f"size: volume side must be an integer >= {MIN_SIZE} voxels, got {size!r}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed: must be a non-negative integer, got {seed!r}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise MedvlError(f"output path {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise MedvlError(f"output directory {out} is not empty; pass --overwrite to replace its images/, "
                             "manifest.csv and card.yaml")
        shutil.rmtree(out / "images", ignore_errors=True)
        for name in ("manifest.csv", "card.yaml"):
            (out / name).unlink(missing_ok=True)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows = [_write_study(st, out, int(size), seed) for st in sample_ct_cohort(int(n), seed)]
    build_ct_card(int(n), int(size), seed).save(out / "card.yaml")
    return write_manifest(rows, out / "manifest.csv")
