"""Report baselines that papers forget, so every generated-report table can show them.

* :func:`retrieval_reports` -- the report of the most similar *training* image (cosine of the
  dual encoder's image embeddings, exact top-1 through a FAISS flat inner-product index; plain
  torch when faiss is missing). On datasets with templated reports this is hard to beat, and a
  captioning model that does not beat it has learned nothing beyond retrieval.
* :func:`normal_reports` -- the most frequent report among normal training studies (no positive
  label, or only "no finding"; the report labeler decides when the manifest has no labels), for
  every study: what a model that ignores the image can reach.
* :func:`template_reports` -- a linear probe on the frozen image embeddings predicts the labels;
  each study's labels are rendered with fixed sentences ("Pleural effusion is present." /
  "No pneumothorax."). It shows how much of a metric a label classifier already earns.

All take a dual encoder (:class:`~medvl.models.encoder.CLIPEncoder` or anything with
``encode_image``), the manifest, the split to write for and the split to learn from, and return
a :class:`~medvl.generate.reports.ReportRun` keyed like the model's reports.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from typing import Any

import numpy as np

from medvl.data.manifest import Manifest, Sample
from medvl.errors import ManifestError
from medvl.generate.reports import ReportRun, study_key, unique_studies

NORMAL_LABELS = {"no finding", "normal", "no_finding"}
BASELINES = ("retrieval", "normal", "template")


def _train_rows(manifest: Manifest, split: str) -> list[Sample]:
    rows = [s for s in manifest.samples if s.split == split and s.text.strip()]
    if not rows:
        raise ManifestError(f"{manifest.path}: no rows with a report in split {split!r} to build the baseline from; "
                            f"splits present: {', '.join(manifest.splits) or '(none)'}")
    return rows


def _features(encoder: Any, manifest: Manifest, samples: list[Sample]) -> np.ndarray:
    """L2-normalised image embeddings of ``samples`` in their order (evaluation preprocessing)."""
    from medvl.evaluate.features import extract_features

    sub = Manifest(manifest.path, [Sample(**{**vars(s), "split": "_q"}) for s in samples], manifest.classes,
                   manifest.card, manifest.label_format)
    feats = extract_features(encoder, sub, split="_q", batch_size=64, cache_dir=None)
    by_row = {int(r): i for i, r in enumerate(feats.rows)}
    return feats.x[[by_row[s.row] for s in samples]]


def top1(queries: np.ndarray, base: np.ndarray) -> np.ndarray:
    """Index of the largest inner product in ``base`` for each query (FAISS flat, else numpy)."""
    try:
        import faiss
    except ImportError:  # faiss is a server extra: the exact search is one matrix product
        return (queries @ base.T).argmax(axis=1)
    index = faiss.IndexFlatIP(base.shape[1])
    index.add(np.ascontiguousarray(base, np.float32))
    _, ids = index.search(np.ascontiguousarray(queries, np.float32), 1)
    return ids[:, 0]


def retrieval_reports(encoder: Any, manifest: Manifest, split: str | None = "test", train_split: str = "train",
                      query: Manifest | None = None) -> ReportRun:
    """Nearest training image's report for every study of ``split`` (of ``query`` if given)."""
    t0 = time.perf_counter()
    train = _train_rows(manifest, train_split)
    targets = unique_studies(query or manifest, split)
    base = _features(encoder, manifest, train)
    q = _features(encoder, query or manifest, targets)
    nearest = top1(q, base)
    reports = {study_key(s): train[int(i)].text for s, i in zip(targets, nearest, strict=True)}
    return ReportRun(reports, seconds=time.perf_counter() - t0,
                     meta={"system": "retrieval", "train_split": train_split, "n_train": len(train)})


def _normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip())


def is_normal(sample: Sample) -> bool:
    """No positive label, or only the card's normal class."""
    pos = {p.lower() for p in sample.positive_labels}
    return not pos or pos <= NORMAL_LABELS


def reads_normal(text: str) -> bool:
    """The report labeler finds no positive or uncertain finding (or says "No Finding")."""
    from medvl.text.labeler import label_report

    labels = label_report(text)
    findings = {k: v for k, v in labels.items() if k.lower() not in NORMAL_LABELS}
    return labels.get("No Finding") == 1.0 or not any(v in (1.0, -1.0) for v in findings.values())


def most_frequent_normal_report(manifest: Manifest, train_split: str = "train") -> str:
    """The most frequent report text among normal training studies (ties: first seen).

    Normal means no positive label; a manifest without any labels (report-only data such as IU
    X-ray) is read by the report labeler instead, so the baseline still picks a normal report.
    """
    train = _train_rows(manifest, train_split)
    labelled = any(s.labels for s in manifest.samples)
    normal = [s for s in train if is_normal(s)] if labelled else [s for s in train if reads_normal(s.text)]
    if not normal:
        raise ManifestError(f"{manifest.path}: no normal study (no positive label, or only 'no finding') with a "
                            f"report in split {train_split!r}; the 'normal' baseline needs one")
    counts = Counter(_normalise(s.text) for s in normal)
    return counts.most_common(1)[0][0]


def normal_reports(manifest: Manifest, split: str | None = "test", train_split: str = "train",
                   query: Manifest | None = None) -> ReportRun:
    """The same most frequent normal report for every study of ``split``."""
    t0 = time.perf_counter()
    text = most_frequent_normal_report(manifest, train_split)
    reports = {study_key(s): text for s in unique_studies(query or manifest, split)}
    return ReportRun(reports, seconds=time.perf_counter() - t0, meta={"system": "normal", "train_split": train_split})


def render_labels(positive: list[str], classes: list[str]) -> str:
    """Fixed sentences for a label set: positives first, then each absent finding negated."""
    findings = [c for c in classes if c.lower() not in NORMAL_LABELS]
    pos = [c for c in findings if c in positive]
    neg = [c for c in findings if c not in positive]
    sentences = [f"{c[0].upper()}{c[1:]} is present." for c in pos] + [f"No {c}." for c in neg]
    impression = ", ".join(pos) if pos else "no acute abnormality"
    return f"FINDINGS: {' '.join(sentences)} IMPRESSION: {impression[0].upper()}{impression[1:]}."


def template_reports(encoder: Any, manifest: Manifest, split: str | None = "test", train_split: str = "train",
                     C: float = 1.0, query: Manifest | None = None) -> ReportRun:
    """Labels from a multilabel linear probe (threshold 0.5) on frozen embeddings, rendered as text."""
    from medvl.evaluate.linear_probe import TorchLogisticRegression

    t0 = time.perf_counter()
    classes = list(manifest.classes)
    if not classes:
        raise ManifestError(f"{manifest.path}: no label classes; the 'template' baseline needs labelled training rows")
    train = [s for s in manifest.samples if s.split == train_split]
    if not train:
        raise ManifestError(f"{manifest.path}: no rows in split {train_split!r} to fit the label probe on")
    y = np.nan_to_num(manifest.subset(train).label_matrix(), nan=0.0)
    y = (y == 1).astype(np.float32)
    targets = unique_studies(query or manifest, split)
    x_train = _features(encoder, manifest, train)
    x_q = _features(encoder, query or manifest, targets)
    probe = TorchLogisticRegression(C=C, task="multilabel", n_classes=len(classes)).fit(x_train, y)
    pred = probe.predict(x_q)
    reports = {study_key(s): render_labels([c for c, on in zip(classes, row, strict=True) if on], classes)
               for s, row in zip(targets, pred, strict=True)}
    return ReportRun(reports, seconds=time.perf_counter() - t0,
                     meta={"system": "template", "train_split": train_split, "C": C})
