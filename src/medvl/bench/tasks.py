"""One bench job = one call into :mod:`medvl.evaluate`, with the suite's seed and bootstrap size.

Features are extracted once per (encoder, split) and cached under the bench folder, so the linear
probe, kNN and robustness tasks of one model share a single pass over the images.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medvl.bench.suite import TEXT_TASKS
from medvl.errors import ConfigError

if TYPE_CHECKING:
    from medvl.bench.runner import Job
    from medvl.bench.suite import Suite
    from medvl.evaluate.features import Features
    from medvl.evaluate.results import EvalResult

PARAMS = {
    "zeroshot": set(),
    "retrieval": {"ks"},
    "linear_probe": {"fractions", "c_grid"},
    "knn": {"ks", "temperature"},
    "finetune": {"protocol", "epochs", "lr", "weight_decay", "batch_size", "patience", "augment", "small_stem",
                 "torch_init", "normalise"},
    "robustness": {"in_site", "fractions"},
    "grounding": {"threshold", "temperature", "batch_size"},
}
IGNORED_PARAMS = {"image_size"}  # informational in suites: the encoder's own preprocessing decides


def _check_params(job: Job) -> dict[str, Any]:
    params = dict(job.task.params)
    valid = PARAMS[job.task.type]
    unknown = sorted(set(params) - valid - IGNORED_PARAMS)
    if unknown:
        raise ConfigError(f"task {job.task.name!r} ({job.task.type}): unknown param(s) {', '.join(unknown)}; "
                          f"valid: {', '.join(sorted(valid)) or '(none)'}")
    return {k: v for k, v in params.items() if k not in IGNORED_PARAMS}


def subset_features(feats: Features, mask: np.ndarray) -> Features:
    """Rows of ``feats`` where ``mask`` is true (a site, say), keeping everything aligned."""
    from medvl.evaluate.features import Features

    idx = np.flatnonzero(mask)
    return Features(x=feats.x[idx], labels=feats.labels[idx], ids=feats.ids[idx], rows=feats.rows[idx],
                    patient_ids=feats.patient_ids[idx], texts=[feats.texts[i] for i in idx],
                    classes=list(feats.classes), meta=dict(feats.meta))


def _tag(results: list[EvalResult], variant: str) -> list[EvalResult]:
    for r in results:
        for rec in r.records:
            rec.config = {**(rec.config or {}), "variant": variant}
    return results


def _t2i_top(encoder: Any, test: Features, k: int = 5) -> np.ndarray:
    """For each report of the split, the indices of the k most similar images (report examples)."""
    import torch

    txt = encoder.encode_text(list(test.texts)).float()
    sim = txt @ torch.as_tensor(test.x).float().T
    return sim.topk(min(k, sim.shape[1]), dim=1).indices.numpy()


def run_job(job: Job, encoder_spec: str, manifest_path: Path, suite: Suite, out_path: Path,
            encoder_options: dict[str, Any] | None = None) -> str | None:
    """Run one job and save its results at ``out_path``; return a skip reason instead when it does not apply."""
    from medvl.evaluate.features import extract_features, load_eval_inputs
    from medvl.evaluate.results import save_results

    params = _check_params(job)
    dataset = job.task.dataset
    common = {"model_name": job.model, "dataset": dataset, "n_boot": suite.bootstrap}
    cache = out_path.parent.parent / "features"

    if job.task.type == "finetune":  # builds fresh encoders itself, one per seed
        from medvl.data.manifest import load_manifest
        from medvl.evaluate.finetune import finetune, protocol_config

        protocol = params.pop("protocol", "default")
        cfg = protocol_config(protocol, **params)
        results = finetune(encoder_spec, load_manifest(manifest_path), cfg, seeds=[job.seed], device=suite.device,
                           split=job.task.split, encoder_kwargs=encoder_options or {}, model_name=job.model,
                           n_boot=suite.bootstrap)
        save_results(results, out_path)
        return None

    # the same resolution of model + data as the `medvl eval` commands (card required)
    inputs = load_eval_inputs(encoder_spec, manifest_path, suite.device, encoder_options)
    encoder, manifest, task, classes = inputs.encoder, inputs.manifest, inputs.task, inputs.classes
    if job.task.type in TEXT_TASKS and not encoder.has_text:
        return f"{job.model} has no text tower ({job.task.type} needs one)"
    if job.task.type == "grounding":  # reads the image tower's patch tokens itself: no pooled features needed
        save_results(_grounding(job, encoder, manifest, params, common, suite.device), out_path)
        return None

    def feats(split: str) -> Features:
        return extract_features(encoder, manifest, split, cache_dir=cache)

    def val_or_none() -> Features | None:
        return feats("val") if "val" in manifest.splits else None

    test = feats(job.task.split)
    if job.task.type == "zeroshot":
        from medvl.evaluate.zeroshot import zeroshot_features

        results = [zeroshot_features(encoder, test, manifest.card, classes, task, split=job.task.split,
                                     seed=job.seed, **common)]
    elif job.task.type == "retrieval":
        from medvl.evaluate.retrieval import retrieval_features

        kw = {"ks": params["ks"]} if "ks" in params else {}
        result = retrieval_features(encoder, test, classes, split=job.task.split, seed=job.seed, **kw, **common)
        if result.predictions is not None:
            result.predictions.extra["t2i_top"] = _t2i_top(encoder, test)
        results = [result]
    elif job.task.type == "linear_probe":
        from medvl.evaluate.linear_probe import linear_probe_features

        fractions = list(params.get("fractions", [1.0]))
        kw = {"c_grid": params["c_grid"]} if "c_grid" in params else {}
        results = linear_probe_features(feats("train"), val_or_none(), test, task, classes, fractions=fractions,
                                        seeds=[job.seed], device=suite.device, split=job.task.split, **kw, **common)
        for r, fraction in zip(results, fractions, strict=True):
            _tag([r], f"{fraction * 100:g}% labels")
    elif job.task.type == "knn":
        from medvl.evaluate.knn import knn_features

        kw = {k: params[k] for k in ("ks", "temperature") if k in params}
        results = [knn_features(feats("train"), val_or_none(), test, task, classes, split=job.task.split,
                                seed=job.seed, device=suite.device, **kw, **common)]
    elif job.task.type == "robustness":
        results = _robustness(job, params, manifest, feats, val_or_none, test, task, classes, suite, common)
    else:  # validated by the suite loader; kept for safety
        raise ConfigError(f"unknown task type {job.task.type!r}")
    save_results(results, out_path)
    return None


def _robustness(job: Job, params: dict[str, Any], manifest: Any, feats: Any, val_or_none: Any, test: Features,
                task: str, classes: list[str], suite: Suite, common: dict[str, Any]) -> list[EvalResult]:
    """Linear probe trained on one site, tested on that site ("in:") and on every other site ("shift:")."""
    from medvl.evaluate.linear_probe import linear_probe_features

    site_of = {s.row: s.site for s in manifest.samples}
    in_site = params.get("in_site")
    sites = sorted({site_of[int(r)] for r in test.rows})
    if in_site is None:
        in_site = sites[0] if sites else ""
    if in_site not in sites or len(sites) < 2:
        raise ConfigError(f"robustness: needs site {in_site!r} and at least one other site in split "
                          f"{job.task.split!r}; sites present: {', '.join(map(repr, sites)) or '(none)'}")

    def on_site(f: Features, site: str, same: bool = True) -> Features:
        mask = np.array([(site_of[int(r)] == site) == same for r in f.rows])
        return subset_features(f, mask)

    train = on_site(feats("train"), in_site)
    val = val_or_none()
    val = on_site(val, in_site) if val is not None else None
    fractions = list(params.get("fractions", [1.0]))[:1]
    results: list[EvalResult] = []
    for site in sites:
        part = on_site(test, site)
        tag = f"in:{site}" if site == in_site else f"shift:{site}"
        res = linear_probe_features(train, val, part, task, classes, fractions=fractions, seeds=[job.seed],
                                    device=suite.device, split=job.task.split, **common)
        results += _tag(res, tag)
    return results


def _grounding(job: Job, encoder: Any, manifest: Any, params: dict[str, Any], common: dict[str, Any],
               device: str) -> list[EvalResult]:
    """Phrase grounding (pointing game, IoU, map AUROC) via :func:`medvl.evaluate.grounding.grounding_eval`."""
    from medvl.evaluate.grounding import grounding_eval

    return [grounding_eval(encoder, manifest, split=job.task.split, n_boot=common["n_boot"], seed=job.seed,
                           device=device, model_name=job.model, dataset=common["dataset"], **params)]
