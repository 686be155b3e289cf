"""``medvl data check``: find every problem in a manifest before training does.

Each finding names the row and file. Errors (missing/unreadable files, unknown labels, a patient
in two splits, the same image in two splits) make the check fail; warnings (empty text,
duplicates within a split, a class without positives in a split) are reported but do not.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from medvl.data.card import DatasetCard
from medvl.data.manifest import (
    POSITIVE,
    Manifest,
    load_manifest,
    patient_leak_message,
    patient_split_leaks,
    unknown_label_message,
    unknown_labels,
)
from medvl.errors import ImageReadError

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
            "findings": [asdict(f) for f in self.findings],
        }


def file_hash(path: Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes: identical files are the same image whatever their names."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _check_files(m: Manifest, verify_images: bool, report: CheckReport) -> dict[str, list[tuple[int, str]]]:
    """Existence/readability of images and masks; returns content hash -> [(row, split)]."""
    from medvl.data.io import read_image

    hashes: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for s in m.samples:
        if not s.image:
            report.findings.append(Finding("error", "missing_image_path", "the 'image' cell is empty", s.row))
            continue
        for rel in s.image:
            path = m.resolve(rel)
            if not path.is_file() and not path.is_dir():
                report.findings.append(Finding("error", "missing_file", "image file not found", s.row, str(path)))
                continue
            if verify_images:
                try:
                    read_image(path)
                except ImageReadError as exc:
                    report.findings.append(Finding("error", "unreadable", exc.reason, s.row, str(path)))
                    continue
            if path.is_file():
                hashes[file_hash(path)].append((s.row, s.split))
        for rel in filter(None, s.mask.split("|")):
            path = m.resolve(rel)
            if not path.exists():
                report.findings.append(Finding("error", "missing_mask", "mask file not found", s.row, str(path)))
    return hashes


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


def check_manifest(path: str | Path, *, verify_images: bool = True) -> CheckReport:
    """Run every check on a manifest (and its card) and return the findings; never raises on content."""
    m = load_manifest(path)
    report = CheckReport(manifest=str(path), n_rows=len(m))
    hashes = _check_files(m, verify_images, report)
    _check_duplicates(m, hashes, report)
    _check_labels(m, m.card, report)
    _check_splits(m, report)
    _class_balance(m, report)
    return report
