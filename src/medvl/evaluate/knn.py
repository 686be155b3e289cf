"""Cosine k-nearest-neighbour classification on frozen features, weighted votes.

Written in torch (a chunked ``test @ train.T`` plus ``topk``) rather than through
``sklearn.neighbors.KNeighborsClassifier`` so that it runs on the GPU for large galleries and
handles masked multilabel targets; with ``weights="distance"`` or ``"uniform"`` its
probabilities equal sklearn's ``KNeighborsClassifier(metric="cosine")`` (tests). ``"exp"`` is
the DINO-style vote ``exp(cos / T)`` (Wu et al. 2018, T = 0.07).

Weights (distance d = 1 - cos):

* ``uniform``: 1 per neighbour;
* ``distance``: ``1 / d``; a query with exact duplicates (d = 0) in its neighbours gives them
  weight 1 and the others 0, exactly as sklearn does;
* ``exp``: ``exp(cos / temperature)``.

Multilabel: per class, the weighted fraction of positive neighbours among those whose label for
that class is known; a class with no known neighbour label gets 0.5.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medvl.errors import ConfigError

log = logging.getLogger(__name__)
WEIGHTS = ("distance", "uniform", "exp")


def _vote_weights(sim: torch.Tensor, weights: str, temperature: float) -> torch.Tensor:
    if weights == "uniform":
        return torch.ones_like(sim)
    if weights == "exp":
        return torch.exp((sim - 1.0) / temperature)  # shift by the max possible cos: same ratios, no overflow
    dist = (1.0 - sim).clamp_min(0.0)
    zero = dist <= 0
    w = 1.0 / dist.clamp_min(torch.finfo(dist.dtype).tiny)
    has_zero = zero.any(dim=1, keepdim=True)
    return torch.where(has_zero, zero.to(w.dtype), w)


@torch.no_grad()
def knn_scores(train_x: np.ndarray | torch.Tensor, train_labels: np.ndarray, test_x: np.ndarray | torch.Tensor,
               task: str, k: int = 20, weights: str = "distance", temperature: float = 0.07,
               device: str = "cpu", chunk: int = 4096, exclude_self: bool = False) -> np.ndarray:
    """Class probabilities [N_test, K] from the ``k`` most cosine-similar training samples.

    ``train_labels``: [N, K] (one-hot for binary/multiclass; 1/0/-1/NaN for multilabel) or [N]
    class indices. ``exclude_self`` drops each query's best match (leave-one-out on the gallery).
    """
    if weights not in WEIGHTS:
        raise ConfigError(f"knn weights must be one of {', '.join(WEIGHTS)}, got {weights!r}")
    dev = torch.device(device)
    tr = F.normalize(torch.as_tensor(np.asarray(train_x), dtype=torch.float64).to(dev), dim=1)
    te = F.normalize(torch.as_tensor(np.asarray(test_x), dtype=torch.float64).to(dev), dim=1)
    y = np.asarray(train_labels, dtype=np.float64)
    if task == "multilabel":
        if y.ndim != 2:
            raise ValueError("multilabel knn needs [N, K] labels")
        known = torch.as_tensor((y == 0) | (y == 1), dtype=torch.float64, device=dev)
        target = torch.as_tensor(np.where(y == 1, 1.0, 0.0), device=dev)
    else:
        if y.ndim == 2 and y.shape[1] > 1:
            idx = y.argmax(1)
            n_classes = y.shape[1]
        else:
            idx = y.reshape(-1).astype(np.int64)
            n_classes = max(2, int(idx.max()) + 1)
        target = F.one_hot(torch.as_tensor(idx, device=dev), n_classes).to(torch.float64)
        known = torch.ones_like(target)
    kk = min(k + int(exclude_self), tr.shape[0])
    if kk < k:
        warnings.warn(f"knn: k={k} but only {tr.shape[0]} training samples; using all of them", RuntimeWarning,
                      stacklevel=2)
    out = []
    for i in range(0, te.shape[0], chunk):
        sim = te[i:i + chunk] @ tr.T
        top, nn_idx = sim.topk(kk, dim=1)
        if exclude_self:
            top, nn_idx = top[:, 1:], nn_idx[:, 1:]
        w = _vote_weights(top, weights, temperature)  # [B, k]
        t = target[nn_idx]  # [B, k, K]
        m = known[nn_idx]
        num = torch.einsum("bk,bkc->bc", w, t * m)
        den = torch.einsum("bk,bkc->bc", w, m)
        if task == "multilabel":
            p = torch.where(den > 0, num / den.clamp_min(1e-300), torch.full_like(num, 0.5))
        else:
            p = num / den.clamp_min(1e-300)
        out.append(p.float().cpu())
    scores = torch.cat(out).numpy()
    if task == "binary" and np.asarray(train_labels).ndim == 2 and np.asarray(train_labels).shape[1] == 1:
        return scores[:, 1:]
    return scores


def knn_features(train: Any, val: Any | None, test: Any, task: str, classes: Sequence[str],
                 ks: Sequence[int] = (20,), weights: str = "distance", temperature: float = 0.07,
                 select_metric: str = "auroc", device: str = "cpu", model_name: str = "", dataset: str = "",
                 split: str = "test", n_boot: int = 1000, seed: int = 0) -> Any:
    """k-NN protocol on extracted features; with several ``ks`` the best on validation is used."""
    from medvl.evaluate.features import classification_labels
    from medvl.evaluate.metrics import compute_metrics, oriented
    from medvl.evaluate.results import Predictions, make_result

    y_tr = classification_labels(train, task)
    y_te = classification_labels(test, task)
    ks = sorted(set(int(k) for k in ks))
    curve: dict[int, float] = {}
    k_best = ks[0]
    if len(ks) > 1:
        if val is None:
            raise ConfigError("several k values need a validation split to choose from; give one k")
        y_val = classification_labels(val, task)
        best = -np.inf
        for k in ks:
            s = knn_scores(train.x, y_tr, val.x, task, k, weights, temperature, device)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                v = compute_metrics(s, y_val, task, [select_metric], classes, warn=False)[select_metric].value
            v = oriented(select_metric, v)
            curve[k] = float(v)
            if v > best:
                best, k_best = v, k
        log.info("knn: chose k=%d on validation (%s)", k_best, curve)
    scores = knn_scores(train.x, y_tr, test.x, task, k_best, weights, temperature, device)
    preds = Predictions(ids=test.ids, scores=scores, labels=y_te, label_task=task, classes=list(classes),
                        patient_ids=test.patient_ids, rows=test.rows)
    config = {"k": k_best, "weights": weights, "temperature": temperature if weights == "exp" else None,
              "k_grid": ks, "val_curve": {str(k): v for k, v in curve.items()}, "n_train": int(train.n)}
    return make_result(preds, model_name, "knn", dataset, split, config, n_boot=n_boot, seed=seed)
