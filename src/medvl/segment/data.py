"""Segmentation data from the manifest's ``mask`` / ``mask_labels`` columns (2D images and volumes).

Two layouts, told apart by ``mask_labels``:

* **binary masks per finding** (``medvl data synth``'s chest phantoms): ``mask`` lists binary
  mask files ``|``-separated, ``mask_labels`` the finding of each (``nodule|pleural effusion``).
  Findings may overlap, so the task is *multilabel* (one sigmoid per class); a row without masks
  has every class absent (a "no finding" image is a valid all-negative example).
* **label map** (``1:lung|2:heart``, MSD hippocampus ``1:anterior|2:posterior``): ``mask`` is one
  integer image/volume whose voxel values name the structures; the task is *multiclass* (softmax
  with a background class 0).

Bad input is one :class:`~medvl.errors.ManifestError` naming the manifest row and the file: a
mask of another size than its image, a non-binary binary mask, a label value not declared in
``mask_labels``, a label-map row without a mask. Nothing is resized or dropped silently: the only
resampling is the model's own input resize of 2D images (predictions are resized back to the
image's size before scoring). Volumes are read with nibabel as stored (no reorientation), so a
predicted mask is written back with the input's affine.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medvl.data.manifest import Manifest, Sample, load_manifest
from medvl.errors import ConfigError, ImageReadError, ManifestError

_LABEL_RE = re.compile(r"^\s*(\d+)\s*:\s*(.+?)\s*$")
NIFTI_SUFFIXES = (".nii", ".nii.gz")


@dataclass
class SegLayout:
    """The label space of a segmentation dataset: class names, task, and label values (multiclass)."""

    classes: list[str]
    task: str  # multilabel | multiclass
    values: dict[str, int] = field(default_factory=dict)
    column: str = "mask"  # the mask column; its labels are in "<column>_labels"


@dataclass
class SegCase:
    """One manifest row with its mask files resolved."""

    row: int
    id: str
    patient_id: str
    image: Path
    masks: list[Path]
    labels: list[tuple[int | None, str]]  # (label value or None for binary masks, class name)


@dataclass
class LoadedCase:
    """Pixels ``[C, *S]`` in [0, 1], truth ``bool [K, *S]`` at the image's own size, geometry."""

    image: np.ndarray
    target: np.ndarray
    spacing: tuple[float, ...]
    affine: np.ndarray | None = None


def _mask_labels(sample: Sample, column: str = "mask") -> str:
    return str(sample.extra.get(f"{column}_labels") or "").strip()


def _mask_paths(sample: Sample, column: str = "mask") -> str:
    return sample.mask if column == "mask" else str(sample.extra.get(column) or "")


def parse_mask_labels(text: str, where: str) -> list[tuple[int | None, str]]:
    """``"1:lung|2:heart"`` -> [(1, "lung"), (2, "heart")]; ``"nodule|effusion"`` -> [(None, ...), ...]."""
    items = [t.strip() for t in text.split("|") if t.strip()]
    parsed = []
    for item in items:
        m = _LABEL_RE.match(item)
        parsed.append((int(m.group(1)), m.group(2)) if m else (None, item))
    kinds = {v is None for v, _ in parsed}
    if len(kinds) > 1:
        raise ManifestError(f"{where}: 'mask_labels' {text!r} mixes label-map entries (N:name) and finding names")
    values = [v for v, _ in parsed if v is not None]
    if any(v == 0 for v in values):
        raise ManifestError(f"{where}: 'mask_labels' {text!r} declares label 0, which is the background")
    if len(set(values)) != len(values):
        raise ManifestError(f"{where}: 'mask_labels' {text!r} declares a label value twice")
    return parsed


def seg_layout(manifest: Manifest, classes: list[str] | None = None, column: str = "mask") -> SegLayout:
    """Classes and task from every row's ``<column>_labels`` (all splits, so train and test agree).

    ``column``: the mask column (default ``mask``; e.g. ``anatomy_mask`` for the phantoms' organ maps).
    """
    if column != "mask" and not any(column in s.extra for s in manifest.samples):
        raise ManifestError(f"{manifest.path}: no column {column!r} (data.mask_column)")
    if not any(f"{column}_labels" in s.extra for s in manifest.samples):
        raise ManifestError(f"{manifest.path}: column '{column}_labels' is missing; segmentation needs '{column}' "
                            f"(paths) and '{column}_labels' (the finding of each binary mask, or N:name entries of "
                            "a label map)")
    values: dict[str, int] = {}
    names: list[str] = []
    kinds = set()
    for s in manifest.samples:
        text = _mask_labels(s, column)
        if not text:
            continue
        for value, name in parse_mask_labels(text, f"{manifest.path}, row {s.row}"):
            kinds.add(value is None)
            if value is not None:
                if values.setdefault(name, value) != value:
                    raise ManifestError(f"{manifest.path}, row {s.row}: class {name!r} has label {value} here but "
                                        f"{values[name]} in earlier rows; a label map must use one code per class")
            if name not in names:
                names.append(name)
    if not names:
        raise ManifestError(f"{manifest.path}: no row has 'mask_labels'; nothing to segment")
    if len(kinds) > 1:
        raise ManifestError(f"{manifest.path}: some rows give label maps (N:name) and others binary finding masks")
    task = "multilabel" if True in kinds else "multiclass"
    if task == "multilabel" and manifest.card is not None:  # the card's order, then any others
        order = [c.name for c in manifest.card.classes]
        names = [c for c in order if c in names] + [c for c in names if c not in order]
    elif task == "multiclass":
        names = sorted(names, key=lambda n: values[n])
    if classes:
        unknown = [c for c in classes if c not in names]
        if unknown:
            raise ConfigError(f"data.classes: {unknown} not found in {manifest.path}'s mask_labels; found: {names}")
        names = list(classes)
    return SegLayout(names, task, {n: values[n] for n in names} if task == "multiclass" else {}, column)


def seg_cases(manifest: Manifest, split: str | None, layout: SegLayout) -> list[SegCase]:
    """The rows of ``split`` (all rows if None) as cases; malformed rows raise naming the row."""
    rows = [s for s in manifest.samples if split is None or s.split == split]
    if not rows:
        splits = sorted({s.split for s in manifest.samples})
        raise ManifestError(f"{manifest.path}: no rows in split {split!r}; splits present: {splits}")
    cases = []
    seen: dict[str, int] = {}
    for s in rows:
        where = f"{manifest.path}, row {s.row}"
        if not s.image:
            raise ManifestError(f"{where}: empty 'image' column")
        col = layout.column
        paths = [p.strip() for p in _mask_paths(s, col).split("|") if p.strip()]
        labels = parse_mask_labels(_mask_labels(s, col), where) if _mask_labels(s, col) else []
        if layout.task == "multiclass":
            if len(paths) != 1:
                raise ManifestError(f"{where}: a label-map dataset needs exactly one '{col}' file per row, got "
                                    f"{len(paths)} ({_mask_paths(s, col)!r})")
        elif len(paths) != len(labels):
            raise ManifestError(f"{where}: {len(paths)} mask path(s) in '{col}' but {len(labels)} finding(s) in "
                                f"'{col}_labels' ({_mask_paths(s, col)!r} vs {_mask_labels(s, col)!r}); they must "
                                "pair up one to one")
        masks = [manifest.resolve(p) for p in paths]
        for m in masks:
            if not m.exists():
                raise ManifestError(f"{where}: mask file not found: {m}")
        base = s.image[0]
        seen[base] = seen.get(base, 0) + 1
        cid = base if seen[base] == 1 else f"{base}#{seen[base]}"
        cases.append(SegCase(s.row, cid, s.patient_id or "", manifest.resolve(s.image[0]), masks, labels))
    return cases


def label_fraction_subset(cases: list[SegCase], fraction: float, seed: int) -> list[SegCase]:
    """The cases of a random ``fraction`` of the patients (at least one), fixed by ``seed``.

    By patient, so a 10 % run never sees another image of a held-out patient.
    """
    if not 0 < fraction <= 1:
        raise ConfigError(f"label fraction must be in (0, 1], got {fraction}")
    if fraction >= 1:
        return list(cases)
    patients = sorted({c.patient_id or c.id for c in cases})
    k = max(1, math.ceil(fraction * len(patients)))
    keep = set(np.random.default_rng([seed, 7]).permutation(len(patients))[:k].tolist())
    chosen = {patients[i] for i in keep}
    return [c for c in cases if (c.patient_id or c.id) in chosen]


def is_volume_path(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith(NIFTI_SUFFIXES)


def _read_nifti(path: Path) -> tuple[np.ndarray, tuple[float, ...], np.ndarray]:
    import nibabel as nib

    try:
        img = nib.load(str(path))
        arr = np.asarray(img.dataobj)
    except Exception as exc:  # nibabel raises ImageFileError / OSError / EOFError on bad files
        raise ImageReadError(path, str(exc)) from exc
    if arr.ndim == 4 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    zooms = tuple(float(z) for z in img.header.get_zooms()[: arr.ndim])
    return arr, zooms, np.asarray(img.affine, dtype=np.float64)


def normalise_volume(arr: np.ndarray) -> np.ndarray:
    """Per-volume robust min-max to [0, 1] (0.5 and 99.5 percentiles): MR intensities have no unit."""
    a = arr.astype(np.float32)
    lo, hi = np.percentile(a, [0.5, 99.5])
    if hi <= lo:
        return np.zeros_like(a)
    return np.clip((a - lo) / (hi - lo), 0, 1)


def _read_2d(path: Path, where: str) -> np.ndarray:
    from medvl.data.io import read_image, to_uint8

    u8 = to_uint8(read_image(path))
    if u8.ndim == 3:
        if u8.shape[-1] not in (3, 4):
            raise ManifestError(f"{where}: {path} is a volume of shape {u8.shape}; 3D segmentation reads NIfTI "
                                "(.nii/.nii.gz) images and label maps")
        u8 = u8[..., :3].mean(-1)
    return (u8.astype(np.float32) / 255.0)[None]


def _read_mask_2d(path: Path, where: str) -> np.ndarray:
    from medvl.data.io import read_image

    try:
        arr = np.asarray(read_image(path).array)
    except ImageReadError as exc:
        raise ManifestError(f"{where}: cannot read mask {path}: {exc.reason}") from exc
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        arr = arr[..., :3].max(-1)
    return arr


def _binary(arr: np.ndarray, path: Path, where: str) -> np.ndarray:
    vals = np.unique(arr)
    if vals.size > 2 or not set(vals.tolist()) <= ({0, 1} | {0, int(vals.max())}):
        raise ManifestError(f"{where}: mask {path} is not binary (values {vals[:8].tolist()}"
                            f"{' ...' if vals.size > 8 else ''}); a finding mask must hold two values (0 and 1/255)")
    return arr > 0


def load_case(case: SegCase, layout: SegLayout, where: str) -> LoadedCase:
    """Read the image and build its truth masks; raises naming the row/file on any mismatch."""
    volume = is_volume_path(case.image)
    affine = None
    if volume:
        arr, spacing, affine = _read_nifti(case.image)
        if arr.ndim != 3:
            raise ManifestError(f"{where}: {case.image} has shape {arr.shape}; expected a 3D volume")
        image = normalise_volume(arr)[None]
    else:
        image = _read_2d(case.image, where)
        spacing = (1.0, 1.0)
    shape = image.shape[1:]
    k = len(layout.classes)
    target = np.zeros((k, *shape), dtype=bool)
    for i, mpath in enumerate(case.masks):
        if is_volume_path(mpath):
            marr, _, maff = _read_nifti(mpath)
            if affine is not None and not np.allclose(maff, affine, atol=1e-3):
                raise ManifestError(f"{where}: mask {mpath} has another affine than its image {case.image}; "
                                    "they must be on the same voxel grid")
        else:
            marr = _read_mask_2d(mpath, where)
        if tuple(marr.shape) != tuple(shape):
            raise ManifestError(f"{where}: mask {mpath} is {'x'.join(map(str, marr.shape))} but its image "
                                f"{case.image} is {'x'.join(map(str, shape))}; a mask must have its image's size")
        if layout.task == "multiclass":
            if not np.all(np.equal(np.mod(marr, 1), 0)):
                raise ManifestError(f"{where}: label map {mpath} holds non-integer values")
            lm = marr.astype(np.int64)
            declared = {v for v, _ in case.labels} | {0}
            found = set(np.unique(lm).tolist())
            unknown = sorted(found - declared)
            if unknown:
                raise ManifestError(f"{where}: label map {mpath} holds label value(s) {unknown} not declared in "
                                    f"'mask_labels' ({'|'.join(f'{v}:{n}' for v, n in case.labels)})")
            for c, name in enumerate(layout.classes):
                target[c] = lm == layout.values[name]
        else:
            name = case.labels[i][1]
            if name not in layout.classes:
                continue  # a finding outside data.classes (the user chose a subset): not a target here
            target[layout.classes.index(name)] |= _binary(marr, mpath, where)
    return LoadedCase(image.astype(np.float32), target, tuple(spacing), affine)


class CaseCache:
    """Decoded cases held in memory (small datasets: phantoms, hippocampus crops), read once each."""

    def __init__(self, manifest: Manifest, cases: list[SegCase], layout: SegLayout):
        self.manifest = manifest
        self.cases = cases
        self.layout = layout
        self._store: dict[int, LoadedCase] = {}

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, i: int) -> LoadedCase:
        if i not in self._store:
            self._store[i] = load_case(self.cases[i], self.layout, f"{self.manifest.path}, row {self.cases[i].row}")
        return self._store[i]


def open_dataset(path: str | Path | Manifest) -> Manifest:
    return path if isinstance(path, Manifest) else load_manifest(path)


def describe_layout(layout: SegLayout) -> dict[str, Any]:
    return {"classes": layout.classes, "task": layout.task, "values": layout.values, "column": layout.column}
