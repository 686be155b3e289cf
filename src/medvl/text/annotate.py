"""Manifest-level report tools: label every row (``medvl data label``) and describe the reports
(``medvl data reports``).

Why a separate module: the labeler works on strings; a manifest brings files, encodings, cards and
bad rows. Nothing is dropped: a row whose report cannot be labelled (empty, not UTF-8, HTML, not
English, absurdly long) stays in the output with blank labels, a ``label_status`` column saying why,
and a count in the summary. The output is a manifest with one column per class (1/0/-1/blank) and a
card beside it listing those classes, so it trains (``multipositive``) and evaluates (``medvl eval
zeroshot``) with no other step.
"""

from __future__ import annotations

import csv
import html
import os
import re
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medvl.data.card import ClassInfo, DatasetCard, find_card, load_card
from medvl.errors import ManifestError
from medvl.text.labeler import CHEXPERT_CLASSES, NO_FINDING, get_labeler
from medvl.text.sections import SECTION_NAMES, deid_tokens, split_sections
from medvl.text.sentences import split_sentences

__all__ = ["check_report", "normalise_markup", "read_report_rows", "label_manifest", "LabelSummary", "report_stats",
           "ReportStats",
           "chexpert_card", "MAX_CHARS"]

MAX_CHARS = 20_000
CLASS_CHOICES = ("auto", "card", "chexpert", "both")
_HTML = re.compile(r"<\s*/?\s*(?!X{2,}\s*>)(?![bB][rR]\s*/?\s*>)[a-zA-Z][a-zA-Z0-9]*(?:\s[^<>]*)?/?\s*>")
_ENTITY = re.compile(r"&(?:nbsp|amp|lt|gt|quot|apos|#\d{1,5});")
_BR = re.compile(r"<\s*br\s*/?\s*>", re.IGNORECASE)
_LETTER = re.compile(r"[^\W\d_]", re.UNICODE)
_WORDS = re.compile(r"[^\W\d_]+", re.UNICODE)
# Frequent function words of languages a report could come in; a report whose foreign ones
# outnumber its English ones is not labelled (the lexicon is English).
_STOPWORDS = {
    "en": {"the", "is", "are", "of", "and", "with", "there", "in", "no", "not", "without", "to", "on", "or", "be",
           "at", "this", "which", "was", "were", "has", "have", "seen", "size", "normal", "lungs", "heart"},
    "es": {"el", "la", "los", "las", "del", "de", "y", "con", "sin", "hay", "ni", "se", "que", "es", "una", "un",
           "derrame", "pulmones", "corazón", "tamaño"},
    "fr": {"le", "la", "les", "des", "du", "de", "et", "avec", "sans", "pas", "est", "une", "un", "au", "aux",
           "épanchement", "poumons", "cœur", "taille"},
    "de": {"der", "die", "das", "und", "mit", "ohne", "kein", "keine", "ist", "sind", "ein", "eine", "im", "nicht",
           "herz", "lunge", "erguss"},
    "pt": {"o", "os", "da", "do", "das", "dos", "e", "com", "sem", "não", "há", "uma", "um", "derrame", "coração"},
    "it": {"il", "lo", "gli", "della", "del", "e", "con", "senza", "non", "è", "una", "un", "versamento", "cuore"},
    "nl": {"de", "het", "een", "en", "met", "zonder", "geen", "is", "zijn", "hart", "longen"},
}


def normalise_markup(text: str) -> tuple[str, int]:
    """Line breaks (``<br>``) and character entities (``&lt;``) as plain text, *keeping every offset*:
    each replacement is padded with spaces to the original length. Returns (text, replacements).

    Real exports (IU X-ray's among them) carry a few of these; they are not a reason to drop a report.
    """
    n = 0

    def pad(m: re.Match[str], new: str) -> str:
        nonlocal n
        n += 1
        return new + " " * (len(m.group()) - len(new))

    text = _BR.sub(lambda m: pad(m, "\n"), text)
    text = _ENTITY.sub(lambda m: pad(m, html.unescape(m.group())), text)
    return text, n


def check_report(text: str, max_chars: int = MAX_CHARS) -> str | None:
    """Why ``text`` cannot be labelled, or None when it can. One short reason, with a position."""
    bad = next((i for i, c in enumerate(text) if 0xDC80 <= ord(c) <= 0xDCFF or c == "\ufffd"), None)
    if bad is not None:
        c = text[bad]
        byte = f"byte 0x{ord(c) - 0xDC00:02x}" if c != "\ufffd" else "a replacement character"
        return f"not valid UTF-8 ({byte} at character {bad})"
    if not text.strip():
        return "empty report"
    if len(text) > max_chars:
        return f"report has {len(text)} characters (limit {max_chars}); not one report? raise --max-chars if it is"
    m = _HTML.search(text)
    if m:
        return (f"contains HTML markup ({m.group()!r} at character {m.start()}); convert it to plain text first "
                "(<br> and entities such as &lt; are handled)")
    letters = _LETTER.findall(text)
    if letters and sum(not c.isascii() for c in letters) / len(letters) > 0.3:
        return "not English (mostly non-Latin script); the labeler's lexicon is English"
    words = [w.lower() for w in _WORDS.findall(text)]
    if len(words) >= 4:
        hits = {lang: sum(w in sw for w in words) for lang, sw in _STOPWORDS.items()}
        other, n_other = max(((k, v) for k, v in hits.items() if k != "en"), key=lambda kv: kv[1])
        if n_other > hits["en"]:
            return f"not English (looks like '{other}': {n_other} of its common words vs {hits['en']} English)"
    return None


def read_report_rows(path: str | Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Manifest rows as dicts, tolerating invalid UTF-8 inside cells (kept as surrogate escapes so
    :func:`check_report` can name the byte); also returns the column order."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        with path.open(newline="", encoding="utf-8", errors="surrogateescape") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None:
                raise ManifestError(f"{path}: empty manifest (no header)")
            rows = []
            for i, r in enumerate(reader, start=1):
                if None in r:
                    raise ManifestError(f"{path}, row {i}: more fields than the header has columns")
                rows.append(dict(r))
            return rows, list(reader.fieldnames)
    if suffix == ".jsonl":
        from medvl.data.jsonl import json_lines

        rows = [obj for _, obj in json_lines(path, error=ManifestError, encoding_errors="surrogateescape")]
        cols = list(dict.fromkeys(k for r in rows for k in r))
        return rows, cols
    from medvl.data.manifest import _read_rows

    rows = _read_rows(path)
    return rows, list(dict.fromkeys(k for r in rows for k in r))


def chexpert_card() -> DatasetCard:
    """A card for the 14 CheXpert observations (column names as CheXpert spells them)."""
    synonyms = {
        "Enlarged Cardiomediastinum": ["widened mediastinum"], "Cardiomegaly": ["enlarged heart"],
        "Lung Lesion": ["lung nodule", "lung mass"], "Lung Opacity": ["airspace opacity"],
        "Edema": ["pulmonary edema"], "Consolidation": ["airspace consolidation"], "Pneumonia": [],
        "Atelectasis": [], "Pneumothorax": [], "Pleural Effusion": ["pleural fluid"],
        "Pleural Other": ["pleural thickening"], "Fracture": ["rib fracture"],
        "Support Devices": ["support device", "medical device"],
    }
    classes = []
    for c in CHEXPERT_CLASSES:
        if c == NO_FINDING:
            classes.append(ClassInfo(c, ["a normal chest radiograph"], ["normal chest x-ray"],
                                     negatives=["abnormal chest radiograph", "chest x-ray with an acute abnormality"]))
        else:
            classes.append(ClassInfo(c, [], list(synonyms.get(c, []))))
    return DatasetCard(name="chexpert-labels", task="multilabel", classes=classes, modality="xray",
                       templates=["{label}", "a chest x-ray showing {label}", "findings consistent with {label}"],
                       negative_templates=["no {label}", "no evidence of {label}"],
                       description="Labels from medvl's CheXpert-style report labeler (medvl data label).")


def _output_card(card: DatasetCard | None, classes: str) -> DatasetCard:
    if classes not in CLASS_CHOICES:
        raise ManifestError(f"--classes must be one of {', '.join(CLASS_CHOICES)}, got {classes!r}")
    if classes == "auto":
        classes = "card" if card is not None else "chexpert"
    if classes in ("card", "both") and card is None:
        raise ManifestError(f"--classes {classes} needs a dataset card (card.yaml beside the manifest or --card)")
    if classes == "card":
        assert card is not None
        if card.task != "multilabel":
            raise ManifestError(f"card {card.name!r} is {card.task}; report labels (1/0/-1/blank per class) need a "
                                "multilabel card, or use --classes chexpert")
        return card
    chex = chexpert_card()
    if classes == "chexpert":
        return chex
    assert card is not None
    have = {c.lower() for c in card.class_names}
    extra = [c for c in chex.classes if c.name.lower() not in have]
    return DatasetCard(name=card.name, task="multilabel", classes=[*card.classes, *extra], modality=card.modality,
                       templates=list(card.templates), negative_templates=list(card.negative_templates),
                       description=card.description, license=card.license, extra=dict(card.extra))


@dataclass
class LabelSummary:
    """What ``label_manifest`` did: counts per class, the rows it could not label and why."""

    out: Path
    card_path: Path
    classes: list[str]
    n_rows: int
    counts: dict[str, dict[str, int]]  # class -> {"1": n, "0": n, "-1": n, "blank": n}
    problems: list[tuple[int, str]] = field(default_factory=list)  # (row, reason)
    section_missing: int = 0  # rows where the requested section was absent (whole report labelled)
    explanations: list[tuple[int, list[str]]] = field(default_factory=list)
    replaced_columns: list[str] = field(default_factory=list)
    normalised: int = 0  # rows whose <br> / &lt; markup was turned into plain text before labelling


def _clean_text(text: str) -> str:
    """Surrogate escapes (invalid bytes) -> U+FFFD so the output file is valid UTF-8."""
    return text.encode("utf-8", errors="surrogateescape").decode("utf-8", errors="replace")


def label_manifest(manifest: str | Path, out: str | Path, card: str | Path | None = None, section: str = "all",
                   classes: str = "auto", explain: bool = False, max_chars: int = MAX_CHARS,
                   text_column: str = "text", no_finding_zero: bool = True) -> LabelSummary:
    """Label every row's report and write ``out`` (CSV/JSONL/Parquet) plus ``card.yaml`` beside it.

    ``classes``: "card" (the card's classes; a multilabel card is required), "chexpert" (the 14
    observations), "both", or "auto" (card when there is one, else chexpert). ``section``: "all",
    "findings" or "impression" (absent sections fall back to the whole report, counted). An input
    ``labels`` column is renamed ``labels_source`` (the manifest reader would otherwise prefer it
    over the new columns); relative ``image``/``mask`` paths are rewritten relative to ``out``.

    ``no_finding_zero``: CheXpert leaves No Finding blank when another observation is positive; the
    manifest treats blank as unknown, so No Finding would never have a negative to train or evaluate
    on. By default it is written 0 when another observation (support devices excepted) is *positive*
    (it stays blank when they are only uncertain); ``False`` keeps CheXpert's blank.
    """
    from medvl.data.manifest import write_manifest

    src, out = Path(manifest), Path(out)
    if section not in ("all", *SECTION_NAMES):
        raise ManifestError(f"--section must be all, findings or impression, got {section!r}")
    if out.resolve() == src.resolve():
        raise ManifestError(f"--out {out} is the input manifest; write the labels to a new file")
    in_card = load_card(card) if card is not None else (load_card(p) if (p := find_card(src)) else None)
    ocard = _output_card(in_card, classes)
    names = ocard.class_names
    rows, columns = read_report_rows(src)
    if rows and text_column not in columns:
        raise ManifestError(f"{src}: no {text_column!r} column to label; columns: {', '.join(columns)}")
    labeler = get_labeler(names, ocard)
    counts = {c: {"1": 0, "0": 0, "-1": 0, "blank": 0} for c in names}
    summary = LabelSummary(out, out.parent / "card.yaml", names, len(rows), counts,
                           replaced_columns=[c for c in names if c in columns])
    out_rows = []
    for i, r in enumerate(rows, start=1):
        raw = r.get(text_column)
        problem = check_report("" if raw is None else str(raw), max_chars)
        text, fixed = normalise_markup("" if raw is None else str(raw))
        summary.normalised += int(fixed > 0)
        labels: dict[str, float | None] = {c: None for c in names}
        if problem is None:
            lab = labeler.label(text, section)
            labels = dict(lab.labels)
            if no_finding_zero:
                _no_finding_zero(labels, labeler)
            summary.section_missing += int(not lab.section_found)
            if explain:
                summary.explanations.append((i, lab.explain()))
        else:
            summary.problems.append((i, problem))
        row = {("labels_source" if k == "labels" else k): (_clean_text(v) if isinstance(v, str) else v)
               for k, v in r.items() if k not in names}
        for k in _PATH_COLUMNS:
            if isinstance(row.get(k), str) and row[k]:
                row[k] = _rebase(row[k], src.parent, out.parent)
        for c in names:
            v = labels[c]
            row[c] = "" if v is None else int(v)
            counts[c]["blank" if v is None else str(int(v))] += 1
        row["label_status"] = "ok" if problem is None else problem
        out_rows.append(row)
    _write_card(ocard, summary.card_path)
    write_manifest(out_rows, out)
    return summary


def _no_finding_zero(labels: dict[str, float | None], labeler: Any) -> None:
    for r in labeler.rules:
        if r.no_finding and labels[r.name] is None:
            others = [labels[o.name] for o in labeler.rules if not o.no_finding
                      and o.name.lower() != "support devices"]
            if 1.0 in others:
                labels[r.name] = 0.0


_PATH_COLUMNS = ("image", "mask")


def _rebase(paths: str, src_dir: Path, out_dir: Path) -> str:
    """``|``-separated paths relative to the input manifest -> relative to the output manifest."""
    if src_dir.resolve() == out_dir.resolve():
        return paths
    out = []
    for p in paths.split("|"):
        p = p.strip()
        if p and not Path(p).is_absolute():
            p = os.path.relpath((src_dir / p).resolve(), out_dir.resolve())
        out.append(p)
    return "|".join(out)


def _write_card(card: DatasetCard, path: Path) -> None:
    """Write the card beside the output, refusing to overwrite a different card there."""
    if path.is_file():
        existing = load_card(path)
        if existing.class_names == card.class_names:
            return
        raise ManifestError(f"{path} exists with classes {existing.class_names}, not the labelled classes "
                            f"{card.class_names}; write --out into another folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    card.save(path)


# ----------------------------------------------------------------------------- report statistics
@dataclass
class ReportStats:
    """What ``medvl data reports`` prints."""

    n_rows: int
    n_reports: int  # rows with a labellable report
    section_coverage: dict[str, float]  # section -> fraction of reports that have it
    headerless: int  # reports without any recognised header
    lengths: dict[str, dict[str, float]]  # chars/words/sentences -> mean, median, p95, max
    top_sentences: list[tuple[str, int]]
    deid: dict[str, int]  # token -> occurrences
    reports_with_deid: int
    problems: list[tuple[int, str]] = field(default_factory=list)


def _summary(values: list[int]) -> dict[str, float]:
    if not values:
        return {"mean": float("nan"), "median": float("nan"), "p95": float("nan"), "max": float("nan")}
    s = sorted(values)
    return {"mean": statistics.fmean(s), "median": float(statistics.median(s)),
            "p95": float(s[min(len(s) - 1, int(round(0.95 * (len(s) - 1))))]), "max": float(s[-1])}


def report_stats(manifest: str | Path, top: int = 10, text_column: str = "text",
                 max_chars: int = MAX_CHARS) -> ReportStats:
    """Section coverage, length statistics, the most frequent sentences and the de-id tokens of a manifest."""
    rows, columns = read_report_rows(manifest)
    if rows and text_column not in columns:
        raise ManifestError(f"{manifest}: no {text_column!r} column; columns: {', '.join(columns)}")
    cover: Counter[str] = Counter()
    sent_counts: Counter[str] = Counter()
    deid: Counter[str] = Counter()
    chars, words, sents = [], [], []
    problems: list[tuple[int, str]] = []
    headerless = with_deid = 0
    for i, r in enumerate(rows, start=1):
        raw = "" if r.get(text_column) is None else str(r.get(text_column))
        problem = check_report(raw, max_chars)
        text = normalise_markup(raw)[0]
        if problem:
            problems.append((i, problem))
            continue
        secs = split_sections(text)
        if all(s.header == "" for s in secs):
            headerless += 1
        for name in {s.name for s in secs}:
            cover[name] += 1
        ss = [x for sec in secs for x in split_sentences(sec.text, sec.start)]  # headers are not sentences
        for s in ss:
            sent_counts[re.sub(r"\s+", " ", s.text.lower()).strip()] += 1
        toks = deid_tokens(text)
        with_deid += bool(toks)
        deid.update(t.upper() if t.lower().startswith("x") else t for t in toks)
        chars.append(len(text))
        words.append(len(text.split()))
        sents.append(len(ss))
    n = len(chars)
    return ReportStats(
        n_rows=len(rows), n_reports=n,
        section_coverage={s: (cover[s] / n if n else 0.0) for s in (*SECTION_NAMES, "preamble")},
        headerless=headerless,
        lengths={"characters": _summary(chars), "words": _summary(words), "sentences": _summary(sents)},
        top_sentences=sent_counts.most_common(top), deid=dict(deid.most_common()), reports_with_deid=with_deid,
        problems=problems)
