"""Confusable pairs (MediConfusion's idea): images the model cannot tell apart although their labels differ.

MediConfusion (Sepehri et al. 2024) built pairs of medical images that a vision encoder embeds
almost identically but that differ clinically, and showed that models answering questions about
both are right on *both* far less often than chance. For an embedding model the same probe is
cheap and needs no curation: among the test images, find pairs whose embeddings are nearly
identical (cosine at or above a threshold) but whose labels differ, then ask how often the
classifier (zero-shot or probe) gets both images of such a pair right. A model whose features
collapse the two classes there cannot get both right, whatever its head.

Threshold: absolute when given; by default the 99th percentile of the cosine over all test
pairs (the closest 1 % of pairs), which adapts to encoders whose embeddings are all similar
(random towers sit near cosine 1 everywhere). The report gives the threshold it used.

:func:`answer_pair_accuracy` scores a generative model's answers (JSONL, one row per image and
question with a ``pair_id``): the question-level accuracy and MediConfusion's pair accuracy (a
pair counts only when every question of it is answered correctly), with CIs over pairs.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medvl.data.jsonl import json_lines
from medvl.errors import ManifestError, MedvlError
from medvl.evaluate.metrics import Prepared

DEFAULT_QUANTILE = 0.99
MAX_LISTED = 20


@dataclass
class ConfusableReport:
    threshold: float
    threshold_rule: str
    n_images: int
    n_pairs: int
    n_different_label_pairs: int
    pair_accuracy: float  # both images right, over confusable pairs
    chance_pair_accuracy: float  # product of the images' overall accuracy (independent errors)
    image_accuracy: float  # accuracy of all test images
    pairs: list[dict[str, Any]] = field(default_factory=list)  # the closest MAX_LISTED pairs

    def to_dict(self) -> dict[str, Any]:
        from medvl.evaluate.results import _clean

        return _clean(asdict(self))


def _label_keys(p: Prepared) -> list[str]:
    if p.task == "multilabel":
        return ["|".join(n for n, v in zip(p.class_names, row, strict=True) if v == 1) or "(none)" for row in p.y]
    return [p.class_names[int(i)] for i in p.y]


def _correct(p: Prepared) -> np.ndarray:
    if p.task == "multilabel":
        valid = ~np.isnan(p.y)
        hit = ((p.s > 0.5) == (p.y == 1)) | ~valid
        return hit.all(1)
    return p.s.argmax(1) == p.y


def confusable_pairs(feats: Any, preds: Prepared, ids: Sequence[str] | None = None, threshold: float | None = None,
                     quantile: float = DEFAULT_QUANTILE, max_listed: int = MAX_LISTED) -> ConfusableReport:
    """Different-label test pairs with near-identical embeddings and how often both are classified right."""
    x = np.asarray(feats.x if hasattr(feats, "x") else feats, dtype=np.float64)
    n = x.shape[0]
    if n != preds.n:
        raise MedvlError(f"confusable pairs: {n} embeddings but {preds.n} predictions")
    if n < 2:
        raise MedvlError("confusable pairs: need at least 2 test images")
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    sim = x @ x.T
    iu = np.triu_indices(n, k=1)
    cos = sim[iu]
    if threshold is None:
        thr = float(np.quantile(cos, quantile))
        rule = f"{quantile:.0%} quantile of all {cos.size} test-pair cosines"
    else:
        if not -1.0 <= threshold <= 1.0:
            raise MedvlError(f"confusable pairs: threshold is a cosine in [-1, 1], got {threshold}")
        thr, rule = float(threshold), "given"
    keys = np.array(_label_keys(preds))
    diff = keys[iu[0]] != keys[iu[1]]
    sel = np.flatnonzero(diff & (cos >= thr))
    correct = _correct(preds)
    both = correct[iu[0][sel]] & correct[iu[1][sel]]
    acc = float(correct.mean())
    order = sel[np.argsort(-cos[sel], kind="stable")][:max_listed]
    names = list(ids) if ids is not None else [str(i) for i in range(n)]
    listed = [{"a": names[iu[0][k]], "b": names[iu[1][k]], "label_a": str(keys[iu[0][k]]),
               "label_b": str(keys[iu[1][k]]), "cosine": float(cos[k]),
               "both_right": bool(correct[iu[0][k]] and correct[iu[1][k]])} for k in order]
    return ConfusableReport(thr, rule, n, int(sel.size), int(diff.sum()),
                            float(both.mean()) if sel.size else math.nan, acc * acc, acc, listed)


# ------------------------------------------------------------------ generative answers (MediConfusion)
ANSWER_KEYS = ("image", "question", "pair_id", "prediction", "answer")


def _norm(text: Any) -> str:
    return re.sub(r"[\s.]+$", "", re.sub(r"\s+", " ", str(text).strip().lower()))


@dataclass
class AnswerPairReport:
    n_rows: int
    n_pairs: int
    question_accuracy: Any  # Interval
    pair_accuracy: Any  # Interval
    worst_pairs: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"n_rows": self.n_rows, "n_pairs": self.n_pairs, "question_accuracy": asdict(self.question_accuracy),
                "pair_accuracy": asdict(self.pair_accuracy), "worst_pairs": self.worst_pairs}


def answer_pair_accuracy(path: str | Path, n_boot: int = 1000, seed: int = 0) -> AnswerPairReport:
    """Question-level and pair-level accuracy of a JSONL answer file (keys: image, question, pair_id,
    prediction, answer); answers match after lower-casing and trimming whitespace and a final period."""
    from medvl.evaluate.calibration import Interval
    from medvl.evaluate.stats import bootstrap_statistic

    path = Path(path)
    if not path.is_file():
        raise MedvlError(f"answer file not found: {path}")
    rows = []
    for i, d in json_lines(path, error=ManifestError):
        missing = [k for k in ANSWER_KEYS if k not in d]
        if missing:
            raise ManifestError(f"{path}, line {i}: missing key(s) {', '.join(missing)}; each row needs "
                                f"{', '.join(ANSWER_KEYS)}")
        rows.append((i, d))
    if not rows:
        raise ManifestError(f"{path}: no answer rows")
    seen: dict[tuple[str, str], int] = {}
    pairs: dict[str, list[bool]] = {}
    images: dict[str, set[str]] = {}
    for i, d in rows:
        key = (str(d["image"]), str(d["question"]))
        if key in seen:
            raise ManifestError(f"{path}, line {i}: image {key[0]!r} with this question already answered on line "
                                f"{seen[key]}")
        seen[key] = i
        pid = str(d["pair_id"])
        pairs.setdefault(pid, []).append(_norm(d["prediction"]) == _norm(d["answer"]))
        images.setdefault(pid, set()).add(key[0])
    single = [p for p, im in images.items() if len(im) < 2]
    if single:
        raise ManifestError(f"{path}: pair_id {single[0]!r} has rows for one image only ({len(single)} such pairs); "
                            "a confusable pair needs both images")
    pair_ids = sorted(pairs)
    hits = np.array([all(pairs[p]) for p in pair_ids], dtype=np.float64)
    q_hits = [np.mean(pairs[p]) for p in pair_ids]
    pa = bootstrap_statistic(hits, n_boot=n_boot, seed=seed, name="pair_accuracy") if n_boot else None
    # question accuracy resampled by pair too (questions of a pair are not independent)
    weights = np.array([len(pairs[p]) for p in pair_ids], dtype=np.float64)
    qa_val = float(np.sum(np.array(q_hits) * weights) / weights.sum())
    if n_boot:
        rng = np.random.default_rng(seed)
        reps = []
        for _ in range(n_boot):
            idx = rng.integers(0, len(pair_ids), len(pair_ids))
            reps.append(float(np.sum(np.array(q_hits)[idx] * weights[idx]) / weights[idx].sum()))
        lo, hi = np.percentile(reps, [2.5, 97.5])
        qa = Interval(qa_val, float(lo), float(hi))
        pai = Interval(pa.value, pa.low, pa.high)
    else:
        qa, pai = Interval(qa_val), Interval(float(hits.mean()))
    worst = [p for p in pair_ids if not any(pairs[p])][:MAX_LISTED]
    return AnswerPairReport(len(rows), len(pair_ids), qa, pai, worst)
