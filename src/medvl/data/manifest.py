"""The manifest: one row per sample, in CSV, JSONL or Parquet (see DESIGN.md, "data contract").

Columns: ``image`` (path relative to the manifest; ``|`` separates views), ``text``, ``labels``
(class names separated by ``|``) *or* one column per card class holding 1/0/-1/blank
(positive/negative/uncertain/unknown, CheXpert style), ``split``, ``patient_id`` and the optional
``study_id``, ``site``, ``modality``, ``mask``. Any other column is kept in ``Sample.extra``.

Loading never drops a row: structural problems raise :class:`ManifestError` with the row number;
content problems (missing files, unknown labels...) are reported by :mod:`medvl.data.check`.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medvl.data.card import DatasetCard, find_card, load_card
from medvl.errors import ManifestError

CORE_COLUMNS = ("image", "text", "labels", "split", "patient_id", "study_id", "site", "modality", "mask")
FORMATS = (".csv", ".jsonl", ".parquet")
POSITIVE, NEGATIVE, UNCERTAIN = 1.0, 0.0, -1.0


@dataclass
class Sample:
    """One manifest row. ``row`` is the 1-based data row number (header not counted)."""

    row: int
    image: list[str]
    text: str = ""
    labels: dict[str, float] = field(default_factory=dict)
    split: str = "train"
    patient_id: str = ""
    study_id: str = ""
    site: str = ""
    modality: str = ""
    mask: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def positive_labels(self) -> list[str]:
        return [k for k, v in self.labels.items() if v == POSITIVE]

    @property
    def group_id(self) -> str:
        """The unit of independence for statistics and splits: patient, else the row itself."""
        return self.patient_id or f"row{self.row}"


@dataclass
class Manifest:
    path: Path
    samples: list[Sample]
    classes: list[str]
    card: DatasetCard | None = None
    label_format: str = "labels"  # "labels" (pipe-separated names) or "columns" (one column per class)

    @property
    def root(self) -> Path:
        return self.path.parent

    def __len__(self) -> int:
        return len(self.samples)

    def resolve(self, relpath: str) -> Path:
        p = Path(relpath)
        return p if p.is_absolute() else self.root / p

    def image_paths(self, sample: Sample) -> list[Path]:
        return [self.resolve(p) for p in sample.image]

    def split(self, name: str) -> Manifest:
        """A view restricted to one split (same classes and card)."""
        return Manifest(self.path, [s for s in self.samples if s.split == name], self.classes, self.card,
                        self.label_format)

    def subset(self, samples: Sequence[Sample]) -> Manifest:
        return Manifest(self.path, list(samples), self.classes, self.card, self.label_format)

    @property
    def splits(self) -> list[str]:
        return sorted({s.split for s in self.samples})

    def label_matrix(self) -> np.ndarray:
        """[N, K] float32 with 1/0/-1 and NaN for unknown, columns in ``self.classes`` order."""
        out = np.full((len(self.samples), len(self.classes)), np.nan, dtype=np.float32)
        for i, s in enumerate(self.samples):
            for j, c in enumerate(self.classes):
                if c in s.labels:
                    out[i, j] = s.labels[c]
                elif self.label_format == "labels":
                    out[i, j] = NEGATIVE
        return out

    def class_index(self) -> np.ndarray:
        """[N] int index of the single positive class (binary/multiclass tasks); -1 when none."""
        m = self.label_matrix()
        idx = np.full(len(m), -1, dtype=np.int64)
        for i, row in enumerate(m):
            pos = np.flatnonzero(row == POSITIVE)
            if len(pos) == 1:
                idx[i] = pos[0]
        return idx


def _read_rows(path: Path) -> list[dict[str, Any]]:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None:
                raise ManifestError(f"{path}: empty manifest (no header)")
            rows = []
            for i, r in enumerate(reader, start=1):
                if None in r:
                    raise ManifestError(f"{path}, row {i}: more fields than the header has columns")
                rows.append(r)
            return rows
    if suffix == ".jsonl":
        from medvl.data.jsonl import json_lines

        return [obj for _, obj in json_lines(path, error=ManifestError)]
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path).to_pylist()
        except Exception as exc:  # pyarrow raises many types for corrupt files
            raise ManifestError(f"{path}: unreadable Parquet file ({exc})") from exc
    raise ManifestError(f"{path}: unsupported manifest format {suffix!r}; use one of {', '.join(FORMATS)}")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and math.isnan(value):
        return ""
    return str(value).strip()


def _label_value(raw: Any, where: str) -> float | None:
    text = _cell(raw)
    if text == "":
        return None
    try:
        v = float(text)
    except ValueError as exc:
        raise ManifestError(f"{where}: label value {text!r} is not one of 1/0/-1/blank") from exc
    if v not in (POSITIVE, NEGATIVE, UNCERTAIN):
        raise ManifestError(f"{where}: label value {text!r} is not one of 1/0/-1/blank")
    return v


def load_manifest(path: str | Path, card: DatasetCard | str | Path | None = None) -> Manifest:
    """Load a manifest and its card (``card.yaml`` beside it unless given)."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest not found: {path}")
    if card is None:
        cp = find_card(path)
        card = load_card(cp) if cp else None
    elif not isinstance(card, DatasetCard):
        card = load_card(card)
    rows = _read_rows(path)
    if rows and "image" not in rows[0]:
        raise ManifestError(f"{path}: required column 'image' is missing; columns: {', '.join(rows[0])}")
    card_classes = card.class_names if card else []
    columns = set(rows[0]) if rows else set()
    class_columns = [c for c in card_classes if c in columns]
    label_format = "columns" if class_columns and "labels" not in columns else "labels"
    samples: list[Sample] = []
    for i, r in enumerate(rows, start=1):
        where = f"{path}, row {i}"
        image = [p.strip() for p in _cell(r.get("image")).split("|") if p.strip()]
        labels: dict[str, float] = {}
        if label_format == "columns":
            for c in class_columns:
                v = _label_value(r.get(c), f"{where}, column {c!r}")
                if v is not None:
                    labels[c] = v
        else:
            for name in _cell(r.get("labels")).split("|"):
                if name.strip():
                    labels[name.strip()] = POSITIVE
        used = set(CORE_COLUMNS) | set(class_columns)
        samples.append(
            Sample(
                row=i,
                image=image,
                text=_cell(r.get("text")),
                labels=labels,
                split=_cell(r.get("split")) or "train",
                patient_id=_cell(r.get("patient_id")),
                study_id=_cell(r.get("study_id")),
                site=_cell(r.get("site")),
                modality=_cell(r.get("modality")),
                mask=_cell(r.get("mask")),
                extra={k: v for k, v in r.items() if k not in used},
            )
        )
    if card_classes:
        classes = list(card_classes)
    else:
        classes = sorted({c for s in samples for c in s.labels})
    return Manifest(path=path, samples=samples, classes=classes, card=card, label_format=label_format)


def unknown_label_message(unknown: Sequence[str], known: Sequence[str]) -> str:
    """The one wording of an unknown-label problem, shared by ``medvl data check`` and every loader."""
    return f"label(s) {', '.join(map(repr, unknown))} not in the card; known: {', '.join(known)}"


def unknown_labels(manifest: Manifest, samples: Sequence[Sample] | None = None) -> list[tuple[Sample, list[str]]]:
    """Rows whose labels name a class the card does not know, with those names.

    Why it matters: a typo (``nodul`` for ``nodule``) is not a column of the label matrix, so the
    row would silently read as negative for every class. Without a card there is nothing to check
    (classes are then the labels themselves).
    """
    if manifest.card is None:
        return []
    known = set(manifest.card.class_names)
    out = []
    for s in manifest.samples if samples is None else samples:
        bad = sorted(set(s.labels) - known)
        if bad:
            out.append((s, bad))
    return out


def unknown_label_error(manifest: Manifest, bad: Sequence[tuple[Sample, list[str]]]) -> ManifestError:
    """One line naming the first offending row, its label(s) and the known labels (plus how many more)."""
    s, names = bad[0]
    assert manifest.card is not None
    more = (f" (and {len(bad) - 1} more row(s); `medvl data check {manifest.path}` lists them all, "
            "on_error=skip leaves them out)") if len(bad) > 1 else ""
    return ManifestError(f"{manifest.path}, row {s.row}: {unknown_label_message(names, manifest.card.class_names)}"
                         f"{more}")


def require_known_labels(manifest: Manifest, samples: Sequence[Sample] | None = None) -> None:
    """Raise :class:`ManifestError` when any row (of ``samples``, default all) has an unknown label."""
    bad = unknown_labels(manifest, samples)
    if bad:
        raise unknown_label_error(manifest, bad)


def patient_split_leaks(manifest: Manifest) -> list[tuple[str, list[str], int]]:
    """Patients found in more than one split: ``(patient_id, sorted splits, first row)``."""
    splits: dict[str, set[str]] = {}
    first: dict[str, int] = {}
    for s in manifest.samples:
        if s.patient_id:
            splits.setdefault(s.patient_id, set()).add(s.split)
            first.setdefault(s.patient_id, s.row)
    return [(pid, sorted(sp), first[pid]) for pid, sp in splits.items() if len(sp) > 1]


def patient_leak_message(patient_id: str, splits: Sequence[str]) -> str:
    """The one wording of a patient-in-two-splits problem (data check and evaluation share it)."""
    return f"patient {patient_id!r} appears in splits {', '.join(splits)}"


def require_no_patient_leak(manifest: Manifest) -> None:
    """Raise :class:`ManifestError` when a patient spans splits: evaluation on such a split is leaked."""
    leaks = patient_split_leaks(manifest)
    if leaks:
        pid, splits, row = leaks[0]
        more = f" (and {len(leaks) - 1} more patient(s))" if len(leaks) > 1 else ""
        raise ManifestError(f"{manifest.path}, row {row}: {patient_leak_message(pid, splits)}{more}; "
                            "re-split by patient (`medvl data split`) before evaluating")


def load_eval_manifest(path: str | Path, card: DatasetCard | str | Path | None = None) -> Manifest:
    """:func:`load_manifest` plus the checks evaluation cannot do without: known labels, no patient leak."""
    m = load_manifest(path, card)
    require_known_labels(m)
    require_no_patient_leak(m)
    return m


def sample_to_row(s: Sample, label_format: str = "labels", classes: Sequence[str] = ()) -> dict[str, Any]:
    row: dict[str, Any] = {"image": "|".join(s.image), "text": s.text}
    if label_format == "columns":
        for c in classes:
            v = s.labels.get(c)
            row[c] = "" if v is None else int(v)
    else:
        row["labels"] = "|".join(s.positive_labels)
    row.update({"split": s.split, "patient_id": s.patient_id, "study_id": s.study_id, "site": s.site,
                "modality": s.modality, "mask": s.mask})
    row.update(s.extra)
    return row


def write_manifest(rows: Iterable[dict[str, Any]], path: str | Path) -> Path:
    """Write plain dict rows as CSV, JSONL or Parquet (chosen by suffix), atomically."""
    path = Path(path)
    rows = list(rows)
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise ManifestError(f"{path}: unsupported manifest format {suffix!r}; use one of {', '.join(FORMATS)}")
    columns: list[str] = []
    for r in rows:
        for k in r:
            if k not in columns:
                columns.append(k)
    tmp = path.with_name(path.name + ".tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".csv":
        with tmp.open("w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=columns)
            w.writeheader()
            for r in rows:
                w.writerow({k: r.get(k, "") for k in columns})
    elif suffix == ".jsonl":
        with tmp.open("w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table({k: [None if r.get(k) is None else str(r.get(k)) for r in rows] for k in columns})
        pq.write_table(table, tmp)
    tmp.replace(path)
    return path
