"""Report-generation metrics: BLEU-1..4, ROUGE-L, CIDEr-D and clinical efficacy (CE).

Why re-implemented: the field reports these numbers with the MS-COCO caption code (pycocoevalcap),
which needs Java for its tokenizer and is not a maintained library; the formulas below are the
same (BLEU with the "closest" reference length and its 1e-15/1e-9 smoothing, ROUGE-L with
beta = 1.2, CIDEr-D with sigma = 6, clipping, the x10 scale and document frequencies from the
references) and a test checks equality with pycocoevalcap to 1e-6 on the same tokens. Everything is
pure Python and deterministic; each function also returns per-sample values (or sufficient
statistics) so that :mod:`medvl.evaluate.reports` can bootstrap patients and run paired tests.

All text goes through :func:`tokenize` first: lower case, words and numbers (``2.5`` stays one
token), punctuation dropped -- the usual R2Gen preprocessing.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["tokenize", "bleu", "bleu_from_stats", "rouge_l", "cider_d", "meteor", "meteor_unavailable",
           "clinical_efficacy", "ce_from_counts", "binarize"]

_TOKEN = re.compile(r"[a-z0-9]+(?:[.'][a-z0-9]+)*")
_TINY, _SMALL = 1e-15, 1e-9


def tokenize(text: str) -> list[str]:
    """Lower-cased word/number tokens of ``text``; punctuation is dropped ("2.5 cm." -> ["2.5", "cm"])."""
    return _TOKEN.findall(text.lower())


def _tokens(x: str | Sequence[str]) -> list[str]:
    return tokenize(x) if isinstance(x, str) else list(x)


def _ngrams(words: Sequence[str], n: int) -> Counter[tuple[str, ...]]:
    c: Counter[tuple[str, ...]] = Counter()
    for k in range(1, n + 1):
        for i in range(len(words) - k + 1):
            c[tuple(words[i:i + k])] += 1
    return c


def _check(preds: Sequence[Any], refs: Sequence[Any]) -> None:
    if len(preds) != len(refs):
        raise ValueError(f"{len(preds)} predictions but {len(refs)} references")


# ----------------------------------------------------------------------------- BLEU
def _refs_list(r: Any) -> list[list[str]]:
    """References of one sample -> token lists: a string is one reference, a list holds several
    (strings, or token lists already tokenised)."""
    if isinstance(r, str):
        return [tokenize(r)]
    out = [_tokens(x) for x in r]
    if not out:
        raise ValueError("a sample has an empty list of references")
    return out


def bleu_stats(pred: str | Sequence[str], refs: Any, n: int = 4) -> list[float]:
    """Sufficient statistics of one pair: ``[testlen, reflen, guess_1..n, correct_1..n]``.

    ``reflen`` is the reference length closest to the prediction's (ties: the shorter).
    """
    words = _tokens(pred)
    rlist = _refs_list(refs)
    maxcounts: dict[tuple[str, ...], int] = {}
    for r in rlist:
        for g, c in _ngrams(r, n).items():
            maxcounts[g] = max(maxcounts.get(g, 0), c)
    testlen = len(words)
    reflen = min((abs(len(r) - testlen), len(r)) for r in rlist)[1]
    counts = _ngrams(words, n)
    correct = [0] * n
    for g, c in counts.items():
        correct[len(g) - 1] += min(maxcounts.get(g, 0), c)
    guess = [max(0, testlen - k + 1) for k in range(1, n + 1)]
    return [float(testlen), float(reflen), *map(float, guess), *map(float, correct)]


def bleu_from_stats(stats: Sequence[Sequence[float]], n: int = 4) -> list[float]:
    """Corpus BLEU-1..n from summed per-sample statistics (pycocoevalcap's smoothing and brevity penalty)."""
    tot = [sum(s[i] for s in stats) for i in range(2 + 2 * n)]
    testlen, reflen, guess, correct = tot[0], tot[1], tot[2:2 + n], tot[2 + n:2 + 2 * n]
    out, prod = [], 1.0
    for k in range(n):
        prod *= (correct[k] + _TINY) / (guess[k] + _SMALL)
        out.append(prod ** (1.0 / (k + 1)))
    ratio = (testlen + _TINY) / (reflen + _SMALL)
    if ratio < 1:
        out = [b * math.exp(1 - 1 / ratio) for b in out]
    return out


def bleu(preds: Sequence[str], refs: Sequence[Any], n: int = 4) -> dict[str, Any]:
    """Corpus BLEU-1..n (``"bleu1"``..) plus ``"per_sample"`` (sentence BLEU-k lists) and ``"stats"``.

    ``refs[i]`` is one reference string or a list of references (strings, or token lists). Strings
    are tokenised with :func:`tokenize`; a prediction given as a token list is used as is.
    """
    _check(preds, refs)
    stats = [bleu_stats(p, r, n) for p, r in zip(preds, refs, strict=True)]
    corpus = bleu_from_stats(stats, n)
    per_sample = [bleu_from_stats([s], n) for s in stats]
    out: dict[str, Any] = {f"bleu{k + 1}": corpus[k] for k in range(n)}
    out["per_sample"] = {f"bleu{k + 1}": [ps[k] for ps in per_sample] for k in range(n)}
    out["stats"] = stats
    return out


# ----------------------------------------------------------------------------- ROUGE-L
def _lcs(a: Sequence[str], b: Sequence[str]) -> int:
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, start=1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def rouge_l(preds: Sequence[str], refs: Sequence[Any], beta: float = 1.2) -> dict[str, Any]:
    """Mean ROUGE-L F-measure (``"rouge_l"``) and ``"per_sample"`` scores (max P and R over references)."""
    _check(preds, refs)
    scores = []
    for p, r in zip(preds, refs, strict=True):
        c = _tokens(p)
        prec, rec = [], []
        for ref in _refs_list(r):
            lcs = _lcs(ref, c)
            prec.append(lcs / len(c) if c else 0.0)
            rec.append(lcs / len(ref) if ref else 0.0)
        pm, rm = max(prec), max(rec)
        scores.append((1 + beta ** 2) * pm * rm / (rm + beta ** 2 * pm) if pm and rm else 0.0)
    return {"rouge_l": sum(scores) / len(scores) if scores else float("nan"), "per_sample": scores}


# ----------------------------------------------------------------------------- CIDEr-D
def cider_d(preds: Sequence[str], refs: Sequence[Any], n: int = 4, sigma: float = 6.0) -> dict[str, Any]:
    """CIDEr-D (``"cider_d"``, x10 scale) and ``"per_sample"`` scores.

    Document frequencies come from the references of this corpus (as in pycocoevalcap), so a score
    depends on the whole set; the corpus score is the mean of the per-sample ones. The length
    penalty uses pycocoevalcap's length (its count of bigrams), reproduced for equal numbers.
    """
    _check(preds, refs)
    crefs = [[_ngrams(r, n) for r in _refs_list(x)] for x in refs]
    ctest = [_ngrams(_tokens(p), n) for p in preds]
    df: Counter[tuple[str, ...]] = Counter()
    for rs in crefs:
        for g in {g for r in rs for g in r}:
            df[g] += 1
    ref_len = math.log(float(len(crefs))) if crefs else 0.0

    def vec(cnts: Mapping[tuple[str, ...], int]) -> tuple[list[dict[tuple[str, ...], float]], list[float], int]:
        v: list[dict[tuple[str, ...], float]] = [{} for _ in range(n)]
        norm = [0.0] * n
        length = 0
        for g, tf in cnts.items():
            k = len(g) - 1
            w = float(tf) * (ref_len - math.log(max(1.0, df.get(g, 0.0))))
            v[k][g] = w
            norm[k] += w * w
            if k == 1:
                length += tf
        return v, [math.sqrt(x) for x in norm], length

    scores = []
    for test, rs in zip(ctest, crefs, strict=True):
        vh, nh, lh = vec(test)
        acc = [0.0] * n
        for r in rs:
            vr, nr, lr = vec(r)
            delta = float(lh - lr)
            for k in range(n):
                val = sum(min(w, vr[k].get(g, 0.0)) * vr[k].get(g, 0.0) for g, w in vh[k].items())
                if nh[k] != 0 and nr[k] != 0:
                    val /= nh[k] * nr[k]
                acc[k] += val * math.e ** (-(delta ** 2) / (2 * sigma ** 2))
        scores.append(sum(acc) / n / len(rs) * 10.0)
    return {"cider_d": sum(scores) / len(scores) if scores else float("nan"), "per_sample": scores}


# ----------------------------------------------------------------------------- METEOR (optional)
def meteor_unavailable() -> str | None:
    """Why :func:`meteor` cannot run here, or None when it can.

    METEOR 1.5 is a Java program (with WordNet-derived paraphrase tables) that pycocoevalcap ships as a
    jar; no pure-Python implementation reproduces it, and NLTK's variant needs WordNet data downloaded
    at run time. So METEOR is computed only where ``pycocoevalcap`` is installed and ``java`` is on PATH.
    """
    import importlib.util
    import shutil

    if importlib.util.find_spec("pycocoevalcap") is None:
        return "METEOR needs the pycocoevalcap package (pip install pycocoevalcap), which ships the METEOR 1.5 jar"
    if shutil.which("java") is None:
        return "METEOR needs a Java runtime on PATH (the METEOR 1.5 jar shipped by pycocoevalcap is Java)"
    return None


def meteor(preds: Sequence[str], refs: Sequence[Any]) -> dict[str, Any]:
    """METEOR 1.5 through pycocoevalcap's jar on :func:`tokenize`-d text: the corpus score (``"meteor"``,
    the jar's aggregate, as papers report it) and ``"per_sample"`` segment scores.

    Raises RuntimeError naming what is missing (see :func:`meteor_unavailable`). Slow to start (the JVM
    loads the paraphrase table, ~10-30 s).
    """
    _check(preds, refs)
    why = meteor_unavailable()
    if why:
        raise RuntimeError(why)
    from pycocoevalcap.meteor.meteor import Meteor

    gts = {i: [" ".join(t) for t in _refs_list(r)] for i, r in enumerate(refs)}
    res = {i: [" ".join(_tokens(p)) or "empty"] for i, p in enumerate(preds)}
    scorer = Meteor()
    corpus, per = scorer.compute_score(gts, res)
    del scorer  # its __del__ stops the JVM
    return {"meteor": float(corpus), "per_sample": [float(x) for x in per]}


# ----------------------------------------------------------------------------- clinical efficacy
def binarize(value: float | None, uncertain_as: str = "negative") -> int:
    """A label as 0/1 for CE: positive -> 1; uncertain -> 0 (R2Gen's convention) or 1; else 0."""
    if value == 1.0:
        return 1
    if value == -1.0 and uncertain_as == "positive":
        return 1
    return 0


def ce_from_counts(counts: Mapping[str, Sequence[float]]) -> dict[str, Any]:
    """P/R/F1 per class and micro/macro from ``{class: (tp, fp, fn)}``.

    Per-class values are NaN where undefined (no predicted positive for P, no reference positive for
    R, neither for F1). Macro averages run over the classes present in the references (at least one
    reference positive), where a class never predicted counts precision 0 (scikit-learn's
    ``zero_division=0``): a system that only ever says "no finding" must not get the macro precision
    of its one class. Classes absent from the references are left out (their recall is undefined).
    """
    per: dict[str, dict[str, float]] = {}
    for c, (tp, fp, fn) in counts.items():
        p = tp / (tp + fp) if tp + fp else float("nan")
        r = tp / (tp + fn) if tp + fn else float("nan")
        if tp + fp + fn == 0:
            f = float("nan")
        else:
            f = 2 * tp / (2 * tp + fp + fn)
        per[c] = {"precision": p, "recall": r, "f1": f}
    tp = sum(v[0] for v in counts.values())
    fp = sum(v[1] for v in counts.values())
    fn = sum(v[2] for v in counts.values())
    out: dict[str, Any] = {
        "precision_micro": tp / (tp + fp) if tp + fp else float("nan"),
        "recall_micro": tp / (tp + fn) if tp + fn else float("nan"),
        "f1_micro": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan"),
        "per_class": per,
    }
    present = [c for c, (tp_, _, fn_) in counts.items() if tp_ + fn_ > 0]
    for m in ("precision", "recall", "f1"):
        vals = [0.0 if math.isnan(per[c][m]) else per[c][m] for c in present]
        out[f"{m}_macro"] = sum(vals) / len(vals) if vals else float("nan")
    return out


def clinical_efficacy(pred_labels: Sequence[Mapping[str, float | None]],
                      ref_labels: Sequence[Mapping[str, float | None]], classes: Sequence[str] | None = None,
                      uncertain_as: str = "negative") -> dict[str, Any]:
    """CE metrics: labeler output on generated vs reference reports -> P/R/F1 per class and micro/macro.

    ``pred_labels[i]`` / ``ref_labels[i]`` map class -> 1/0/-1/None (as
    :func:`medvl.text.labeler.label_report` returns). Following R2Gen, only positives count as
    positive; ``uncertain_as="positive"`` counts uncertain ones too. Returns the averages, the
    ``per_class`` values and ``"counts"`` (class -> [tp, fp, fn]).
    """
    _check(pred_labels, ref_labels)
    if uncertain_as not in ("negative", "positive"):
        raise ValueError(f"uncertain_as must be 'negative' or 'positive', got {uncertain_as!r}")
    if classes is None:
        classes = list(dict.fromkeys(c for lab in ref_labels for c in lab))
    counts: dict[str, list[float]] = {c: [0.0, 0.0, 0.0] for c in classes}
    for p, r in zip(pred_labels, ref_labels, strict=True):
        for c in classes:
            yp, yr = binarize(p.get(c), uncertain_as), binarize(r.get(c), uncertain_as)
            if yp and yr:
                counts[c][0] += 1
            elif yp:
                counts[c][1] += 1
            elif yr:
                counts[c][2] += 1
    out = ce_from_counts(counts)
    out["counts"] = counts
    return out
