"""Score generated reports against a manifest's reference reports, with patient-level CIs.

Predictions come from any system as JSONL keyed by study id (:func:`read_predictions`), so an
external VLM's outputs are scored under the same protocol as medvl's own. Metrics: BLEU-1..4,
ROUGE-L, CIDEr-D (:mod:`medvl.text.metrics`, equal to pycocoevalcap's) and clinical efficacy (CE:
the labeler of :mod:`medvl.text.labeler` on generated vs reference reports -> precision, recall, F1
micro and macro, per class). Every metric gets a 95% percentile bootstrap CI that resamples
*patients* (:class:`medvl.evaluate.stats.GroupResampler`): a patient's studies are correlated.

Corpus metrics (BLEU, CE) are not means of per-sample values, so the stored per-sample arrays are
their sufficient statistics (n-gram counts; 0/1 label matrices) and every bootstrap replicate
recomputes the corpus value from them; :func:`paired_report_tests` uses the same arrays for
``medvl eval compare``. CIDEr-D's document frequencies are computed once from all references and
kept fixed across replicates (the corpus is the population the scores refer to).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medvl.data.jsonl import json_lines
from medvl.errors import ConfigError, ManifestError, MedvlError
from medvl.evaluate.results import EvalResult, MetricRecord, Predictions, _clean
from medvl.evaluate.stats import DEFAULT_N_BOOT, GroupResampler, PairedTest, _paired_p_value, _percentile_interval
from medvl.text.labeler import CHEXPERT_CLASSES, get_labeler
from medvl.text.metrics import binarize, bleu_from_stats, bleu_stats, ce_from_counts, cider_d, rouge_l

__all__ = ["read_predictions", "evaluate_reports", "report_references", "paired_report_tests", "REPORT_METRICS",
           "TASK"]

TASK = "reports"
BLEU = ("bleu1", "bleu2", "bleu3", "bleu4")
CE = tuple(f"ce_{m}_{a}" for a in ("micro", "macro") for m in ("precision", "recall", "f1"))
REPORT_METRICS = (*BLEU, "rouge_l", "cider_d", *CE)
_ID_KEYS = ("study_id", "id")
_TEXT_KEYS = ("report", "text", "prediction")


def read_predictions(path: str | Path) -> dict[str, str]:
    """Generated reports from JSONL, one object per line: ``{"study_id": ..., "report": ...}``.

    Aliases accepted: ``id`` for ``study_id``; ``text`` or ``prediction`` for ``report``. Blank lines
    are skipped; a malformed line, a missing key, a non-string report or a repeated id is an error
    naming the file and line. Ids are compared as strings.
    """
    path = Path(path)
    if not path.is_file():
        raise MedvlError(f"predictions file not found: {path}")
    out: dict[str, str] = {}
    for i, obj in json_lines(path):
        where = f"{path}, line {i}"
        key = next((k for k in _ID_KEYS if k in obj), None)
        tkey = next((k for k in _TEXT_KEYS if k in obj), None)
        if key is None or tkey is None:
            raise MedvlError(f"{where}: needs a study id ({' or '.join(_ID_KEYS)}) and a report "
                             f"({' or '.join(_TEXT_KEYS)}); keys: {', '.join(obj)}")
        sid, text = str(obj[key]).strip(), obj[tkey]
        if not isinstance(text, str):
            raise MedvlError(f"{where}: the report must be a string, got {type(text).__name__}")
        if sid in out:
            raise MedvlError(f"{where}: study id {sid!r} appears twice")
        out[sid] = text
    if not out:
        raise MedvlError(f"{path}: no predictions (empty file)")
    return out


def report_references(manifest: Any, split: str | None = None,
                      card: Any = None) -> tuple[list[str], list[str], list[str], list[int], Any]:
    """Unique studies of a manifest: (ids, reference texts, patient ids, first rows, manifest).

    The id is the row's ``study_id``, else its ``id`` column, else its row number; rows of one study
    (several views) must carry the same report.
    """
    from medvl.data.manifest import Manifest, load_manifest

    m = manifest if isinstance(manifest, Manifest) else load_manifest(manifest, card)
    if split is not None:
        if split not in m.splits:
            raise ManifestError(f"{m.path}: no rows in split {split!r}; splits: {', '.join(m.splits) or 'none'}")
        m = m.split(split)
    ids: list[str] = []
    texts: dict[str, str] = {}
    patients: dict[str, str] = {}
    rows: dict[str, int] = {}
    for s in m.samples:
        sid = s.study_id or str(s.extra.get("id") or "").strip() or str(s.row)
        if sid in texts:
            if texts[sid].strip() != s.text.strip():
                raise ManifestError(f"{m.path}, row {s.row}: study {sid!r} has a different report than row "
                                    f"{rows[sid]}; one study must have one reference report")
            continue
        ids.append(sid)
        texts[sid] = s.text
        patients[sid] = s.patient_id or sid
        rows[sid] = s.row
    empty = [i for i in ids if not texts[i].strip()]
    if empty:
        raise ManifestError(f"{m.path}: {len(empty)} studies have an empty reference report (e.g. "
                            f"{', '.join(empty[:5])}); they cannot be scored")
    return ids, [texts[i] for i in ids], [patients[i] for i in ids], [rows[i] for i in ids], m


def _match(predictions: Mapping[str, str], ids: Sequence[str], all_ids: set[str], where: str) -> list[str]:
    keys = {str(k) for k in predictions}
    missing = [i for i in ids if i not in keys]
    unknown = sorted(keys - set(ids))
    if unknown:
        elsewhere = [u for u in unknown if u in all_ids]
        hint = f" ({len(elsewhere)} of them are in other splits of the manifest)" if elsewhere else ""
        raise MedvlError(f"{len(unknown)} predicted study ids are not in {where}{hint}: "
                         f"{', '.join(unknown[:8])}{' ...' if len(unknown) > 8 else ''}")
    if missing:
        raise MedvlError(f"{len(missing)} studies of {where} have no prediction: "
                         f"{', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
    return [predictions[i] for i in ids]


def _values(arr: Mapping[str, np.ndarray], idx: np.ndarray | None = None) -> dict[str, float]:
    """Every report metric on the samples ``idx`` (all when None) from the per-sample arrays."""
    def take(a: np.ndarray) -> np.ndarray:
        return a if idx is None else a[idx]

    out = dict(zip(BLEU, bleu_from_stats([take(arr["bleu_stats"]).sum(0).tolist()]), strict=True))
    out["rouge_l"] = float(np.mean(take(arr["rouge_l"])))
    out["cider_d"] = float(np.mean(take(arr["cider_d"])))
    p, r = take(arr["ce_pred"]) > 0.5, take(arr["ce_ref"]) > 0.5
    tp, fp, fn = (p & r).sum(0), (p & ~r).sum(0), (~p & r).sum(0)
    ce = ce_from_counts({str(k): (tp[k], fp[k], fn[k]) for k in range(p.shape[1])})
    for name in CE:
        _, m, a = name.split("_")
        out[name] = float(ce[f"{m}_{a}"])
    return out


def _per_class(arr: Mapping[str, np.ndarray], classes: Sequence[str]) -> dict[str, dict[str, float]]:
    p, r = arr["ce_pred"] > 0.5, arr["ce_ref"] > 0.5
    tp, fp, fn = (p & r).sum(0), (p & ~r).sum(0), (~p & r).sum(0)
    return ce_from_counts({c: (tp[k], fp[k], fn[k]) for k, c in enumerate(classes)})["per_class"]


def evaluate_reports(predictions: dict[str, str], manifest: Any, *, split: str | None = None, model_name: str = "",
                     dataset: str = "", n_boot: int = DEFAULT_N_BOOT, seed: int = 0, card: Any = None,
                     classes: Sequence[str] | None = None, section: str = "all",
                     uncertain_as: str = "negative", meteor: bool = False) -> list[EvalResult]:
    """Score ``predictions`` (study id -> generated report) against the manifest's reports.

    Every study of the manifest (of ``split`` when given) needs a prediction and every prediction
    a study; anything else is an error naming the ids. Returns one :class:`EvalResult` (a list, so
    that callers can treat it like the other evaluators' runs) holding a record per metric of
    :data:`REPORT_METRICS` with its patient-level 95% bootstrap CI, and per-sample arrays for
    ``medvl eval compare``. CE uses ``classes`` (default: the 14 CheXpert observations), the labeler
    on ``section`` of both texts, and counts uncertain labels as ``uncertain_as``.

    ``meteor=True`` adds METEOR 1.5 (needs pycocoevalcap and Java; an error says which is missing).
    Its value is the jar's corpus aggregate, as papers report it; its CI is a patient bootstrap of the
    mean segment score (the jar cannot be re-run per replicate), stated in the record's config.
    """
    if uncertain_as not in ("negative", "positive"):
        raise ConfigError(f"uncertain_as must be 'negative' or 'positive', got {uncertain_as!r}")
    if section not in ("all", "findings", "impression"):
        raise ConfigError(f"section must be all, findings or impression, got {section!r}")
    if meteor:
        from medvl.text.metrics import meteor_unavailable

        why = meteor_unavailable()
        if why:
            raise MedvlError(f"--meteor: {why}")
    ids, refs, patients, rows, m = report_references(manifest, split, card)
    where = f"{m.path}" + (f" split {split!r}" if split else "")
    from medvl.data.manifest import load_manifest

    all_ids = set(report_references(load_manifest(m.path, m.card))[0]) if split else set(ids)
    preds = _match(predictions, ids, all_ids, where)
    classes = list(classes or CHEXPERT_CLASSES)
    lab = get_labeler(classes, None)
    pred_lab = [lab.label(t, section).labels for t in preds]
    ref_lab = [lab.label(t, section).labels for t in refs]
    arr: dict[str, np.ndarray] = {
        "bleu_stats": np.array([bleu_stats(p, r) for p, r in zip(preds, refs, strict=True)], dtype=np.float64),
        "rouge_l": np.array(rouge_l(preds, refs)["per_sample"], dtype=np.float64),
        "cider_d": np.array(cider_d(preds, refs)["per_sample"], dtype=np.float64),
        "ce_pred": np.array([[binarize(d[c], uncertain_as) for c in classes] for d in pred_lab], dtype=np.float32),
        "ce_ref": np.array([[binarize(d[c], uncertain_as) for c in classes] for d in ref_lab], dtype=np.float32),
    }
    point = _values(arr)
    names = list(REPORT_METRICS)
    if meteor:
        from medvl.text.metrics import meteor as meteor_score

        met = meteor_score(preds, refs)
        arr["meteor"] = np.array(met["per_sample"], dtype=np.float64)
        point["meteor"] = met["meteor"]
        names.insert(6, "meteor")
    res = GroupResampler(len(ids), patients)
    reps = {k: np.full(n_boot, np.nan) for k in names}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for b, idx in enumerate(res.replicates(n_boot, seed)):
            for k, v in _values(arr, idx).items():
                reps[k][b] = v
            if meteor:
                reps["meteor"][b] = float(np.mean(arr["meteor"][idx]))
    per_class = _per_class(arr, classes)
    config = {"n_boot": n_boot, "bootstrap_seed": seed, "section": section, "uncertain_as": uncertain_as,
              "tokenizer": "medvl.text.metrics.tokenize"}
    split_name = split or ",".join(m.splits)
    dataset = dataset or (m.card.name if m.card else m.path.stem)
    records = []
    for k in names:
        lo, hi, _ = _percentile_interval(reps[k], 0.95) if n_boot else (None, None, 0)
        pc = None
        if k.startswith("ce_"):
            metric = k.split("_")[1]
            pc = {c: per_class[c][metric] for c in classes}
        conf = dict(config)
        if k == "meteor":
            conf["meteor"] = ("METEOR 1.5 via pycocoevalcap's jar: value = corpus aggregate; CI = patient bootstrap "
                              "of the mean segment score")
        records.append(MetricRecord(model=model_name, task=TASK, dataset=dataset, split=split_name, metric=k,
                                    value=point[k], ci_low=lo, ci_high=hi, n=len(ids), n_groups=res.n_groups,
                                    config=conf, classes=list(classes), per_class=_clean(pc)))
    p = Predictions(ids=np.array(ids), scores=arr["ce_pred"], labels=arr["ce_ref"], label_task="", classes=classes,
                    patient_ids=np.array(patients), rows=np.array(rows), meta={
                        "model": model_name, "task": TASK, "dataset": dataset, "split": split_name, "config": config},
                    extra={k: arr[k] for k in ("bleu_stats", "rouge_l", "cider_d", "meteor") if k in arr})
    return [EvalResult(records=records, predictions=p)]


def paired_report_tests(a: Predictions, b: Predictions, groups: Sequence | None = None,
                        n_boot: int = DEFAULT_N_BOOT, seed: int = 0,
                        metrics: Sequence[str] | None = None) -> list[PairedTest]:
    """Paired bootstrap tests (delta = A - B) of the corpus metrics (BLEU-1..4, CE) of two aligned runs.

    ROUGE-L and CIDEr-D are means of their per-sample values, which ``compare`` tests on its own.
    """
    def arrays(p: Predictions) -> dict[str, np.ndarray]:
        if "bleu_stats" not in p.extra:
            raise MedvlError("report predictions lack 'bleu_stats'; re-run `medvl eval reports --out`")
        return {"bleu_stats": np.asarray(p.extra["bleu_stats"], dtype=np.float64),
                "rouge_l": np.asarray(p.extra["rouge_l"]), "cider_d": np.asarray(p.extra["cider_d"]),
                "ce_pred": p.scores, "ce_ref": p.labels}

    aa, ab = arrays(a), arrays(b)
    names = [k for k in (*BLEU, *CE) if metrics is None or k in metrics]
    va, vb = _values(aa), _values(ab)
    res = GroupResampler(a.n, groups)
    deltas = {k: np.full(n_boot, np.nan) for k in names}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for i, idx in enumerate(res.replicates(n_boot, seed)):
            xa, xb = _values(aa, idx), _values(ab, idx)
            for k in names:
                deltas[k][i] = xa[k] - xb[k]
    out = []
    for k in names:
        d = va[k] - vb[k]
        lo, hi, _ = _percentile_interval(deltas[k], 0.95)
        out.append(PairedTest(k, "paired bootstrap", va[k], vb[k], d, _paired_p_value(deltas[k], d), lo, hi,
                              n=a.n, n_groups=res.n_groups, detail=f"B={n_boot}, seed={seed}"))
    return out
