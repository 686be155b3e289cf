"""``medvl data check``: find every problem in a manifest before training does.

Each finding names the row and file. Errors (missing/unreadable files, unknown labels, a patient
in two splits, the same image in two splits, a finding mask that is unreadable, not on its
image's pixel grid, not binary (or outside its declared label map) or labelled with a class the
card does not know) make the check fail; warnings (empty text,
duplicates within a split, a class without positives in a split) are reported but do not.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medvl.data.card import DatasetCard
from medvl.data.io import file_hash  # noqa: F401  (re-exported: medvl.data.check.file_hash)
from medvl.data.manifest import (
    POSITIVE,
    Manifest,
    load_manifest,
    patient_leak_message,
    patient_split_leaks,
    unknown_label_message,
    unknown_labels,
)
from medvl.errors import ImageReadError, MedvlError

KNOWN_SPLITS = ("train", "val", "test")


@dataclass
class Finding:
    severity: str  # "error" | "warning"
    code: str
    message: str
    row: int | None = None
    file: str | None = None

    def __str__(self) -> str:
        where = ", ".join(x for x in (f"row {self.row}" if self.row else "", self.file or "") if x)
        return f"[{self.severity}] {self.code}: {self.message}" + (f" ({where})" if where else "")


@dataclass
class CheckReport:
    manifest: str
    n_rows: int
    findings: list[Finding] = field(default_factory=list)
    split_counts: dict[str, int] = field(default_factory=dict)
    class_balance: dict[str, dict[str, int]] = field(default_factory=dict)
    against: dict[str, Any] | None = None  # overlap summary with a second manifest (--against)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        return {
            "manifest": self.manifest,
            "n_rows": self.n_rows,
            "ok": self.ok,
            "n_errors": len(self.errors),
            "n_warnings": len(self.warnings),
            "split_counts": self.split_counts,
            "class_balance": self.class_balance,
            "against": self.against,
            "findings": [asdict(f) for f in self.findings],
        }


def spatial_shape(array: np.ndarray) -> tuple[int, ...]:
    """The pixel grid of a decoded image or mask: a trailing colour axis (3/4) of a 2D picture is dropped."""
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        return tuple(int(v) for v in array.shape[:2])
    return tuple(int(v) for v in array.shape)


def _check_files(m: Manifest, verify_images: bool, report: CheckReport,
                 shapes: dict[int, tuple[int, ...]] | None = None) -> dict[str, list[tuple[int, str]]]:
    """Existence/readability of images and masks; returns content hash -> [(row, split)].

    ``shapes`` (filled when given and images are decoded) maps each row to its first view's pixel
    grid, which the mask checks compare against.
    """
    from medvl.data.io import read_image, split_frame_selector
    from medvl.data.leakage import HashCache

    cache = HashCache(m.root)  # a second check (or a leakage check) reads no bytes again
    hashes: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for s in m.samples:
        if not s.image:
            report.findings.append(Finding("error", "missing_image_path", "the 'image' cell is empty", s.row))
            continue
        for view, rel in enumerate(s.image):
            path = m.resolve(rel)
            try:
                base = split_frame_selector(path)[0] if "#" in path.name else path  # clip.dcm#frame=3
            except ImageReadError as exc:
                report.findings.append(Finding("error", "unreadable", exc.reason, s.row, str(path)))
                continue
            if not base.is_file() and not base.is_dir():
                report.findings.append(Finding("error", "missing_file", "image file not found", s.row, str(path)))
                continue
            if verify_images:
                try:
                    image = read_image(path)
                except ImageReadError as exc:
                    report.findings.append(Finding("error", "unreadable", exc.reason, s.row, str(path)))
                    continue
                if view == 0 and shapes is not None:
                    shapes[s.row] = spatial_shape(np.asarray(image.array))
                _check_volume(image, s.row, str(path), report, ct=_is_ct(m, s))
            if path.is_file():
                hashes[cache.hash(path)].append((s.row, s.split))
        for rel in filter(None, (p.strip() for p in s.mask.split("|"))):
            path = m.resolve(rel)
            if not path.exists():
                report.findings.append(Finding("error", "missing_mask", "mask file not found", s.row, str(path)))
    cache.save()
    return hashes


def _is_ct(m: Manifest, s: Any) -> bool:
    """A row is CT when its ``modality`` column says so, else when the card's modality does."""
    modality = str(s.modality or (m.card.modality if m.card else "") or "")
    return modality.strip().lower() == "ct"


def _check_volume(image: Any, row: int, file: str, report: CheckReport, ct: bool = False) -> None:
    """Volumes: missing slices, unknown spacing and too-large volumes are errors; strong anisotropy a warning;
    CT values that do not look like Hounsfield units (e.g. already scaled to [0, 1]) a warning."""
    from medvl.data.volume_preprocess import VolumePolicy, range_warning, volume_problems

    if image.array.ndim != 3 or image.meta.photometric.upper().startswith("RGB"):
        return
    for code, msg in volume_problems(image):
        report.findings.append(Finding("warning" if code == "anisotropic" else "error", f"volume_{code}", msg, row,
                                       file))
    if ct and image.meta.format in ("nifti", "dicom", "dicom-series"):
        msg = range_warning(image.array, VolumePolicy())
        if msg:
            report.findings.append(Finding("warning", "volume_not_hu", msg, row, file))


def _mask_value_problem(values: np.ndarray, n_labels: int, label_map: bool) -> str | None:
    """Why a mask's distinct values are not what its row declares (None when they are).

    Binary: {0, 1} or {0, 255} (or {0, 65535} for 16-bit), as grounding binarises at half the
    range; a label map (one mask file for several ``mask_labels``): 0 background, k the k-th label.
    """
    vals = [float(v) for v in values]
    shown = ", ".join(f"{v:g}" for v in vals[:8]) + (" ..." if len(vals) > 8 else "")
    if label_map:
        allowed = set(range(n_labels + 1))
        bad = [v for v in vals if v not in allowed]
        if bad:
            return (f"mask values {shown} are outside its label map 0..{n_labels} (0 background, k the k-th "
                    "of 'mask_labels')")
        return None
    if any(set(vals) <= {0.0, top} for top in (1.0, 255.0, 65535.0)):
        return None
    return f"mask is not binary: values {shown} (expected 0/1 or 0/255)"


def _check_masks(m: Manifest, card: DatasetCard | None, shapes: dict[int, tuple[int, ...]],
                 verify_images: bool, report: CheckReport) -> None:
    """Every finding mask: readable, on its image's pixel grid, binary (or a declared label map), its
    ``mask_labels`` known to the card. Why here: grounding and segmentation otherwise fail (or score
    a wrong mask) long after training started."""
    from medvl.data.io import read_image

    has_labels_column = any("mask_labels" in s.extra for s in m.samples)
    known = set(card.class_names) if card is not None else None
    for s in m.samples:
        paths = [p.strip() for p in s.mask.split("|") if p.strip()]
        labels = [x.strip() for x in str(s.extra.get("mask_labels") or "").split("|") if x.strip()]
        if not paths and not labels:
            continue
        label_map = len(paths) == 1 and len(labels) > 1
        if has_labels_column and len(paths) != len(labels) and not label_map:
            report.findings.append(Finding(
                "error", "mask_label_count",
                f"{len(paths)} mask path(s) in 'mask' but {len(labels)} finding(s) in 'mask_labels'; they must "
                "pair up one to one (or one label-map mask for several labels)", s.row))
        elif paths and not has_labels_column:
            report.findings.append(Finding(
                "warning", "mask_without_labels", "no 'mask_labels' column: the finding each mask outlines is "
                "unknown (grounding needs it)", s.row))
        if known is not None:
            unknown = sorted(set(labels) - known)
            if unknown:
                report.findings.append(Finding("error", "unknown_mask_label", "mask " + unknown_label_message(
                    unknown, card.class_names if card else []), s.row))
        if not verify_images:
            continue
        for rel in paths:
            path = m.resolve(rel)
            if not path.exists():
                continue  # reported as missing_mask
            try:
                arr = np.asarray(read_image(path).array)
            except (ImageReadError, MedvlError) as exc:
                reason = exc.reason if isinstance(exc, ImageReadError) else str(exc)
                report.findings.append(Finding("error", "unreadable_mask", reason, s.row, str(path)))
                continue
            grid = spatial_shape(arr)
            if arr.ndim == 3 and arr.shape[-1] in (3, 4):
                arr = arr[..., :3].max(-1)
            image_grid = shapes.get(s.row)
            if image_grid is not None and grid != image_grid:
                report.findings.append(Finding(
                    "error", "mask_size", f"mask is {'x'.join(map(str, grid))} but its image is "
                    f"{'x'.join(map(str, image_grid))}", s.row, str(path)))
            problem = _mask_value_problem(np.unique(arr), len(labels), label_map)
            if problem:
                report.findings.append(Finding("error", "mask_values", problem, s.row, str(path)))


def _check_duplicates(m: Manifest, hashes: dict[str, list[tuple[int, str]]], report: CheckReport) -> None:
    for rows in hashes.values():
        if len(rows) < 2:
            continue
        splits = sorted({sp for _, sp in rows})
        row_list = ", ".join(str(r) for r, _ in rows[:10]) + (" ..." if len(rows) > 10 else "")
        if len(splits) > 1:
            report.findings.append(Finding(
                "error", "duplicate_across_splits",
                f"the same image content appears in splits {', '.join(splits)} (rows {row_list}): test leakage",
                rows[0][0]))
        else:
            report.findings.append(Finding(
                "warning", "duplicate_image", f"the same image content appears in rows {row_list}", rows[0][0]))


def _check_labels(m: Manifest, card: DatasetCard | None, report: CheckReport) -> None:
    if card is None:
        report.findings.append(Finding("warning", "no_card",
                                       "no card.yaml beside the manifest: labels cannot be validated"))
        return
    unknown_rows = {s.row: names for s, names in unknown_labels(m)}
    for s in m.samples:
        unknown = unknown_rows.get(s.row)
        if unknown:
            report.findings.append(Finding(
                "error", "unknown_label", unknown_label_message(unknown, card.class_names), s.row))
        if card.task in ("binary", "multiclass"):
            n_pos = sum(1 for v in s.labels.values() if v == POSITIVE)
            if n_pos != 1 and not unknown:
                report.findings.append(Finding(
                    "error", "label_count",
                    f"a {card.task} task needs exactly one positive label per row, found {n_pos}", s.row))


def _check_splits(m: Manifest, report: CheckReport) -> None:
    for s in m.samples:
        if s.split not in KNOWN_SPLITS:
            report.findings.append(Finding(
                "warning", "unknown_split", f"split {s.split!r} is not one of {', '.join(KNOWN_SPLITS)}", s.row))
        if not s.text:
            report.findings.append(Finding("warning", "empty_text", "the 'text' cell is empty", s.row))
    for pid, splits, row in patient_split_leaks(m):
        report.findings.append(Finding("error", "patient_leak", patient_leak_message(pid, splits), row))


def _class_balance(m: Manifest, report: CheckReport) -> None:
    report.split_counts = dict(sorted(Counter(s.split for s in m.samples).items()))
    for split in report.split_counts:
        counts = {c: 0 for c in m.classes}
        for s in m.samples:
            if s.split == split:
                for c in s.positive_labels:
                    if c in counts:
                        counts[c] += 1
        report.class_balance[split] = counts
        for c, n in counts.items():
            if n == 0:
                report.findings.append(Finding(
                    "warning", "class_absent", f"class {c!r} has no positive sample in split {split!r}"))


def _rows(rows: list[tuple[int, str]]) -> str:
    return ", ".join(f"{r} ({sp})" for r, sp in rows[:5]) + (" ..." if len(rows) > 5 else "")


def _check_against(m: Manifest, other_path: str | Path, report: CheckReport) -> None:
    """Overlap with another manifest: identical image content and shared patient ids. Data in one split
    here and another split there (train vs test) is leakage, an error; the same split on both sides is
    a warning (a duplicated dataset)."""
    from medvl.data.leakage import crosses_splits, manifest_overlap

    other = load_manifest(other_path)
    ov = manifest_overlap(m, other)
    where = str(other.path)
    for rows_a, rows_b in ov.images:
        cross = crosses_splits([sp for _, sp in rows_a], [sp for _, sp in rows_b])
        report.findings.append(Finding(
            "error" if cross else "warning", "overlap_image",
            f"the same image content is in rows {_rows(rows_a)} here and rows {_rows(rows_b)} of the other "
            f"manifest{': train/test leakage' if cross else ''}", rows_a[0][0], where))
    first_row = {}
    for s in m.samples:
        first_row.setdefault(s.patient_id, s.row)
    for pid, (sa, sb) in ov.patients.items():
        cross = crosses_splits(sa, sb)
        report.findings.append(Finding(
            "error" if cross else "warning", "overlap_patient",
            f"patient {pid!r} is in split(s) {', '.join(sa)} here and {', '.join(sb)} in the other manifest"
            f"{': train/test leakage' if cross else ''}", first_row.get(pid), where))
    report.against = {"manifest": where, "n_rows": len(other), "shared_images": len(ov.images),
                      "shared_patients": len(ov.patients)}


def check_manifest(path: str | Path, *, verify_images: bool = True,
                   against: str | Path | None = None) -> CheckReport:
    """Run every check on a manifest (and its card) and return the findings; never raises on content.

    ``against``: a second manifest (e.g. the pretraining set) to report overlap with.
    """
    m = load_manifest(path)
    report = CheckReport(manifest=str(path), n_rows=len(m))
    shapes: dict[int, tuple[int, ...]] = {}
    hashes = _check_files(m, verify_images, report, shapes)
    _check_duplicates(m, hashes, report)
    _check_labels(m, m.card, report)
    _check_masks(m, m.card, shapes, verify_images, report)
    _check_splits(m, report)
    _class_balance(m, report)
    if against is not None:
        _check_against(m, against, report)
    return report
