"""Image<->text retrieval on a split's image-report pairs (``medvl eval retrieval``).

For every image the gallery is every text of the split (and vice versa); the match is the
sample's own text. Reported per direction (``i2t``, ``t2i``):

* ``R@K``: fraction of queries whose match ranks in the top K (K = 1, 5, 10);
* ``median_rank`` (1 = best);
* ``P@K(label)``: label-aware precision, the fraction of the top K retrieved items whose
  positive-label *set* equals the query's, so that a different report of the same findings is
  not counted as a miss (many report datasets repeat near-identical normal reports).

Ties: a match's rank is ``1 + #(strictly more similar items)``, so identical duplicate texts do
not push each other down. Samples with an empty text are left out, with a warning giving the
count. CIs are patient-level bootstraps of the per-query values, which are also stored (as
``extra`` arrays of the predictions) so ``compare`` can run paired tests later.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medvl.errors import ManifestError, MedvlError

KS = (1, 5, 10)


def _label_keys(labels: np.ndarray) -> np.ndarray:
    """One integer id per distinct positive-label set (row of a [N, K] 1/0/-1/NaN matrix)."""
    pos = np.asarray(labels) == 1
    _, keys = np.unique(pos, axis=0, return_inverse=True)
    return keys.reshape(-1)


@torch.no_grad()
def _direction(q: torch.Tensor, g: torch.Tensor, keys: np.ndarray, ks: Sequence[int],
               chunk: int = 2048) -> dict[str, np.ndarray]:
    """Per-query rank of the paired item (query i <-> gallery i) and label precision@K."""
    n = q.shape[0]
    kmax = min(max(ks), n)
    keys_t = torch.as_tensor(keys)
    ranks = np.empty(n, dtype=np.int64)
    prec = {k: np.empty(n, dtype=np.float64) for k in ks}
    for i in range(0, n, chunk):
        sim = q[i:i + chunk] @ g.T  # [B, N]
        rows = torch.arange(i, min(i + chunk, n))
        own = sim[torch.arange(sim.shape[0]), rows]
        ranks[i:i + chunk] = ((sim > own[:, None]).sum(1) + 1).numpy()
        top = sim.topk(kmax, dim=1).indices
        same = (keys_t[top] == keys_t[rows][:, None]).double()
        for k in ks:
            prec[k][i:i + chunk] = same[:, : min(k, n)].mean(1).numpy()
    out: dict[str, np.ndarray] = {"rank": ranks}
    for k in ks:
        out[f"R@{k}"] = (ranks <= k).astype(np.float64)
        out[f"P@{k}(label)"] = prec[k]
    return out


def retrieval_per_query(image_emb: np.ndarray, text_emb: np.ndarray, labels: np.ndarray | None = None,
                        ks: Sequence[int] = KS) -> dict[str, np.ndarray]:
    """Per-query values for both directions, keys like ``i2t_R@1``, ``t2i_rank``, ``i2t_P@5(label)``."""
    img = F.normalize(torch.as_tensor(np.asarray(image_emb)).float(), dim=-1)
    txt = F.normalize(torch.as_tensor(np.asarray(text_emb)).float(), dim=-1)
    if img.shape != txt.shape:
        raise ValueError(f"image and text embeddings differ in shape: {tuple(img.shape)} vs {tuple(txt.shape)}")
    keys = _label_keys(labels) if labels is not None else np.arange(img.shape[0])
    out: dict[str, np.ndarray] = {}
    for name, q, g in (("i2t", img, txt), ("t2i", txt, img)):
        for k, v in _direction(q, g, keys, ks).items():
            out[f"{name}_{k}"] = v
    return out


def summarise(per_query: dict[str, np.ndarray]) -> dict[str, float]:
    """Means of hits/precisions and medians of ranks."""
    out = {}
    for k, v in per_query.items():
        if k.endswith("_rank"):
            out[k.replace("_rank", "_median_rank")] = float(np.median(v))
        else:
            out[k] = float(np.mean(v))
    return out


def retrieval_features(encoder: Any, test: Any, classes: Sequence[str], ks: Sequence[int] = KS,
                       model_name: str = "", dataset: str = "", split: str = "test", n_boot: int = 1000,
                       seed: int = 0, batch_size: int = 256) -> Any:
    """Retrieval result on extracted image features (the split's texts are encoded here)."""
    from medvl.evaluate.results import EvalResult, MetricRecord, Predictions, _clean
    from medvl.evaluate.stats import bootstrap_statistic

    if not getattr(encoder, "has_text", False):
        raise MedvlError("retrieval needs an encoder with a text tower; "
                         f"{getattr(encoder, 'name', encoder)!r} has none")
    keep = np.array([bool(t.strip()) for t in test.texts])
    if not keep.any():
        raise ManifestError(f"retrieval: no sample of split {split!r} has a text (the manifest's 'text' column)")
    if not keep.all():
        warnings.warn(f"retrieval: {int((~keep).sum())} of {len(keep)} samples have an empty text and are left out",
                      RuntimeWarning, stacklevel=2)
    texts = [t for t, k in zip(test.texts, keep, strict=True) if k]
    text_emb = encoder.encode_text(texts, batch_size=batch_size)
    per = retrieval_per_query(test.x[keep], text_emb, test.labels[keep], ks)
    groups = test.patient_ids[keep]
    groups_or_none = groups if any(groups) else None
    preds = Predictions(ids=test.ids[keep], scores=np.zeros((int(keep.sum()), 0)), labels=test.labels[keep],
                        label_task="", classes=list(classes), patient_ids=groups, rows=test.rows[keep],
                        extra=per)
    config = {"ks": list(ks), "n_texts": len(texts), "n_boot": n_boot, "bootstrap_seed": seed}
    preds.meta.update({"model": model_name, "task": "retrieval", "dataset": dataset, "split": split,
                       "config": config})
    records = []
    for key, values in per.items():
        stat = np.median if key.endswith("_rank") else np.mean
        name = key.replace("_rank", "_median_rank") if key.endswith("_rank") else key
        ci = bootstrap_statistic(values, stat, groups_or_none, n_boot=n_boot, seed=seed, name=name) if n_boot else None
        records.append(MetricRecord(
            model=model_name, task="retrieval", dataset=dataset, split=split, metric=name,
            value=float(stat(values)), ci_low=ci.low if ci else None, ci_high=ci.high if ci else None,
            n=preds.n, n_groups=preds.n_groups, config=_clean(config), classes=list(classes)))
    return EvalResult(records=records, predictions=preds)
