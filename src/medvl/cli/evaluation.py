"""``medvl eval ...``: zeroshot, retrieval, linear-probe, knn, finetune, grounding, compare.

Each command parses its options, calls one library function of :mod:`medvl.evaluate` and prints
a rich table; ``--out results.json`` also writes the JSON records and the per-sample predictions
beside them (the input of ``medvl eval compare``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from medvl.cli.app import device_option, eval_app
from medvl.errors import ConfigError

console = Console()

MODEL_HELP = "Encoder: a medvl checkpoint directory, or timm:<name>[@weights.safetensors]."
DATA_HELP = "Manifest (CSV/JSONL/Parquet) with card.yaml beside it."


def _floats(text: str, what: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise ConfigError(f"{what}: expected comma-separated numbers, got {text!r}") from exc


def _ints(text: str, what: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise ConfigError(f"{what}: expected comma-separated integers, got {text!r}") from exc


def _mean_std(text: str | None) -> tuple[float, float] | None:
    """``"0.5,0.5"`` -> (0.5, 0.5); None stays None (the encoder's own statistics)."""
    if text is None:
        return None
    try:
        mean, std = (float(v) for v in text.split(","))
    except ValueError as exc:
        raise ConfigError(f"--normalise: expected MEAN,STD (two numbers), got {text!r}") from exc
    return mean, std  # the range is checked by protocol_config, for suites too


def _encoder_kwargs(model: str, image_size: int | None, in_chans: int | None) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    if image_size is not None:
        kwargs["image_size"] = image_size
    if in_chans is not None:
        kwargs["in_chans"] = in_chans
    if kwargs and not model.startswith(("timm:", "resnet3d:", "acs:", "2.5d:", "cine:")):
        raise ConfigError("--image-size/--in-chans apply to timm: and volume (resnet3d:/acs:/2.5d:) encoders; "
                          "a medvl checkpoint carries its own")
    return kwargs


def _cache(cache_dir: Path | None, no_cache: bool) -> Path | None:
    from medvl.evaluate.features import default_cache_dir

    return None if no_cache else (cache_dir or default_cache_dir())


def _report(results: Any, out: Path | None, title: str, leakage: dict[str, Any] | None = None) -> None:
    from medvl.evaluate.features import record_leakage
    from medvl.evaluate.results import EvalResult, records_table, save_results

    record_leakage(results, leakage)

    runs = [results] if isinstance(results, EvalResult) else list(results)
    console.print(records_table([r for run in runs for r in run.records], title=title))
    if out is not None:
        path = save_results(runs, out)
        console.print(f"results: {path} (+ per-sample predictions beside it)")


def _setup(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(message)s")


def _epoch_log() -> None:
    """Fine-tuning always prints its per-epoch line (loss, validation metric, seconds) so runs can be planned."""
    logger = logging.getLogger("medvl.evaluate.finetune")
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)


# Shared options (typer needs them per command).
_model = typer.Option(..., "--model", "-m", help=MODEL_HELP)
_data = typer.Option(..., "--data", "-d", help=DATA_HELP)
_split = typer.Option("test", "--split", help="Split to evaluate on.")
_out = typer.Option(None, "--out", "-o", help="Write JSON records here (+ .predictions.npz beside it).")
_n_boot = typer.Option(1000, "--n-boot", help="Bootstrap replicates for the 95% CIs (0 = no CIs).")
_seed = typer.Option(0, "--seed", help="Bootstrap (and subset) seed.")
_device = device_option()
_batch = typer.Option(128, "--batch-size", help="Encoding batch size.")
_cache_dir = typer.Option(None, "--cache-dir", help="Feature cache (default $MEDVL_CACHE_DIR/features or "
                                                   "~/.cache/medvl/features).")
_no_cache = typer.Option(False, "--no-cache", help="Do not read or write cached features.")
_image_size = typer.Option(None, "--image-size", help="timm encoders: input size (default: the model's).")
_in_chans = typer.Option(None, "--in-chans", help="timm encoders: input channels (default 3).")
_verbose = typer.Option(False, "--verbose", "-v", help="Log progress.")


@eval_app.command("zeroshot")
def zeroshot_cmd(model: str = _model, data: Path = _data, split: str = _split, out: Path | None = _out,
                 logit_scale: float | None = typer.Option(None, "--logit-scale",
                                                          help="Softmax temperature (default: the model's)."),
                 n_boot: int = _n_boot, seed: int = _seed, device: str = _device, batch_size: int = _batch,
                 cache_dir: Path | None = _cache_dir, no_cache: bool = _no_cache, verbose: bool = _verbose) -> None:
    """Zero-shot classification with the dataset card's prompts (ensembled), metrics with 95% CIs."""
    from medvl.evaluate.features import load_eval_inputs, split_features
    from medvl.evaluate.zeroshot import zeroshot_features

    _setup(verbose)
    inp = load_eval_inputs(model, data, device)
    feats = split_features(inp, [split], _cache(cache_dir, no_cache), batch_size)[split]
    assert feats is not None
    res = zeroshot_features(inp.encoder, feats, inp.manifest.card, inp.classes, inp.task, logit_scale,
                            inp.model_name, inp.dataset, split, n_boot, seed)
    _report(res, out, f"zero-shot: {inp.model_name} on {inp.dataset}/{split}", inp.leakage(split))


@eval_app.command("retrieval")
def retrieval_cmd(model: str = _model, data: Path = _data, split: str = _split, out: Path | None = _out,
                  ks: str = typer.Option("1,5,10", "--ks", help="K values for Recall@K and label precision@K."),
                  n_boot: int = _n_boot, seed: int = _seed, device: str = _device, batch_size: int = _batch,
                  cache_dir: Path | None = _cache_dir, no_cache: bool = _no_cache, verbose: bool = _verbose) -> None:
    """Image->text and text->image Recall@K, median rank and label-aware precision@K."""
    from medvl.evaluate.features import load_eval_inputs, split_features
    from medvl.evaluate.retrieval import retrieval_features

    _setup(verbose)
    inp = load_eval_inputs(model, data, device)
    feats = split_features(inp, [split], _cache(cache_dir, no_cache), batch_size)[split]
    assert feats is not None
    res = retrieval_features(inp.encoder, feats, inp.classes, _ints(ks, "--ks"), inp.model_name, inp.dataset,
                             split, n_boot, seed)
    _report(res, out, f"retrieval: {inp.model_name} on {inp.dataset}/{split}", inp.leakage(split))


@eval_app.command("grounding")
def grounding_cmd(model: str = _model, data: Path = _data, split: str = _split, out: Path | None = _out,
                  threshold: float = typer.Option(0.5, "--threshold",
                                                  help="IoU: binarise the min-max normalised map at this value."),
                  temperature: float = typer.Option(10.0, "--temperature",
                                                    help="Word-to-patch attention temperature (GLoRIA-style)."),
                  n_boot: int = _n_boot, seed: int = _seed, device: str = _device,
                  batch_size: int = typer.Option(64, "--batch-size", help="Images (and phrases) per batch."),
                  verbose: bool = _verbose) -> None:
    """Phrase grounding on the manifest's finding masks: pointing game, IoU, map AUROC with 95% CIs."""
    from medvl.evaluate.features import load_eval_inputs
    from medvl.evaluate.grounding import grounding_eval, grounding_table

    _setup(verbose)
    inp = load_eval_inputs(model, data, device)
    res = grounding_eval(inp.encoder, inp.manifest, split, n_boot=n_boot, seed=seed, batch_size=batch_size,
                         threshold=threshold, temperature=temperature, device=device, model_name=inp.model_name,
                         dataset=inp.dataset)
    _report(res, out, f"grounding: {inp.model_name} on {inp.dataset}/{split}", inp.leakage(split))
    console.print(grounding_table(res))


@eval_app.command("linear-probe")
def linear_probe_cmd(model: str = _model, data: Path = _data, split: str = _split, out: Path | None = _out,
                     fractions: str = typer.Option("1.0", "--fractions",
                                                   help="Training fractions, e.g. 0.01,0.1,1.0 (stratified)."),
                     seeds: str = typer.Option("0", "--seeds", help="Subset seeds, e.g. 0,1,2."),
                     c_grid: str | None = typer.Option(None, "--c-grid",
                                                       help="Inverse L2 strengths tried on validation "
                                                            "(default 1e-3..1e3, 7 values)."),
                     select_metric: str = typer.Option("auroc", "--select-metric",
                                                       help="Validation metric that picks C."),
                     n_boot: int = _n_boot, device: str = _device, batch_size: int = _batch,
                     cache_dir: Path | None = _cache_dir, no_cache: bool = _no_cache,
                     image_size: int | None = _image_size, in_chans: int | None = _in_chans,
                     verbose: bool = _verbose) -> None:
    """Logistic regression (torch L-BFGS) on frozen features, C chosen on validation, per fraction."""
    from medvl.evaluate.features import load_eval_inputs, split_features
    from medvl.evaluate.linear_probe import C_GRID, linear_probe_features

    _setup(verbose)
    inp = load_eval_inputs(model, data, device, _encoder_kwargs(model, image_size, in_chans))
    f = split_features(inp, ["train", "val", split], _cache(cache_dir, no_cache), batch_size)
    if f["train"] is None:
        raise ConfigError(f"{data}: linear probe needs a 'train' split; splits: {', '.join(inp.manifest.splits)}")
    res = linear_probe_features(f["train"], f["val"], f[split], inp.task, inp.classes,
                                _floats(fractions, "--fractions"), _ints(seeds, "--seeds"),
                                _floats(c_grid, "--c-grid") if c_grid else C_GRID, select_metric, device,
                                inp.model_name, inp.dataset, split, n_boot)
    _report(res, out, f"linear probe: {inp.model_name} on {inp.dataset}/{split}", inp.leakage(split))


@eval_app.command("knn")
def knn_cmd(model: str = _model, data: Path = _data, split: str = _split, out: Path | None = _out,
            k: str = typer.Option("20", "--k", help="Neighbours; several (5,10,20) are chosen on validation."),
            weights: str = typer.Option("distance", "--weights", help="distance (1/(1-cos)), uniform or exp."),
            temperature: float = typer.Option(0.07, "--temperature", help="For --weights exp."),
            n_boot: int = _n_boot, seed: int = _seed, device: str = _device, batch_size: int = _batch,
            cache_dir: Path | None = _cache_dir, no_cache: bool = _no_cache,
            image_size: int | None = _image_size, in_chans: int | None = _in_chans,
            verbose: bool = _verbose) -> None:
    """Cosine k-NN on frozen features with weighted votes (train split as the gallery)."""
    from medvl.evaluate.features import load_eval_inputs, split_features
    from medvl.evaluate.knn import knn_features

    _setup(verbose)
    inp = load_eval_inputs(model, data, device, _encoder_kwargs(model, image_size, in_chans))
    f = split_features(inp, ["train", "val", split], _cache(cache_dir, no_cache), batch_size)
    if f["train"] is None:
        raise ConfigError(f"{data}: kNN needs a 'train' split as its gallery")
    res = knn_features(f["train"], f["val"], f[split], inp.task, inp.classes, _ints(k, "--k"), weights,
                       temperature, device=device, model_name=inp.model_name, dataset=inp.dataset, split=split,
                       n_boot=n_boot, seed=seed)
    _report(res, out, f"kNN: {inp.model_name} on {inp.dataset}/{split}", inp.leakage(split))


@eval_app.command("finetune")
def finetune_cmd(model: str = _model, data: Path = _data, split: str = _split, out: Path | None = _out,
                 protocol: str = typer.Option("default", "--protocol",
                                              help="default (30 epochs, cosine, early stop) or medmnist "
                                                   "(MedMNIST v2: 100 epochs, lr 1e-3 x0.1 at 50/75, batch 128; "
                                                   "on volumes medmnist3d, batch 32)."),
                 epochs: int | None = typer.Option(None, "--epochs", help="Override (step milestones scale)."),
                 lr: float | None = typer.Option(None, "--lr"),
                 weight_decay: float | None = typer.Option(None, "--weight-decay"),
                 batch_size: int | None = typer.Option(None, "--batch-size"),
                 patience: int | None = typer.Option(None, "--patience", help="Early-stopping patience (epochs)."),
                 augment: bool | None = typer.Option(None, "--augment/--no-augment"),
                 small_stem: bool = typer.Option(False, "--small-stem",
                                                 help="ResNets: 3x3/1 stem, no max-pool (MedMNIST's 28-px ResNet)."),
                 torch_init: bool = typer.Option(False, "--torch-init",
                                                 help="Re-initialise the backbone with PyTorch's default layer init "
                                                      "(as the MedMNIST paper's ResNet); discards pretrained weights."),
                 normalise: str | None = typer.Option(None, "--normalise", metavar="MEAN,STD",
                                                      help="Input mean,std for every channel instead of the "
                                                           "encoder's own (MedMNIST paper: 0.5,0.5)."),
                 shape_transform: bool = typer.Option(False, "--shape-transform",
                                                      help="MedMNIST 3D shape sets: training voxels x U(0,1), "
                                                           "evaluation x 0.5 (the paper code's --shape_transform)."),
                 amp: bool = typer.Option(False, "--amp", help="bf16 autocast on CUDA."),
                 seeds: str = typer.Option("0", "--seeds", help="Training seeds, e.g. 0,1,2."),
                 image_size: int | None = _image_size, in_chans: int | None = _in_chans,
                 n_boot: int = _n_boot, device: str = _device, verbose: bool = _verbose) -> None:
    """Fine-tune the image tower + a linear head; model selection on validation AUROC."""
    from medvl.data.leakage import model_leakage
    from medvl.data.manifest import load_eval_manifest
    from medvl.evaluate.finetune import finetune, protocol_config, resolve_protocol, summarise_seeds

    _setup(verbose)
    _epoch_log()
    manifest = load_eval_manifest(data)
    resolved = resolve_protocol(protocol, manifest)
    if resolved != protocol:
        console.print(f"protocol {protocol} on volumes -> {resolved} (the paper's 3D recipe: batch 32)")
    protocol = resolved
    cfg = protocol_config(protocol, epochs=epochs, lr=lr, weight_decay=weight_decay, batch_size=batch_size,
                          patience=patience, augment=augment, small_stem=small_stem or None,
                          torch_init=torch_init or None, normalise=_mean_std(normalise),
                          shape_transform=shape_transform or None, amp=amp or None)
    seed_list = _ints(seeds, "--seeds")
    res = finetune(model, manifest, cfg, seed_list, device, split=split, n_boot=n_boot,
                   encoder_kwargs=_encoder_kwargs(model, image_size, in_chans))
    _report(res, out, f"fine-tune ({protocol}): {model} on {manifest.path.parent.name}/{split}",
            model_leakage(model, manifest, split))
    if len(res) > 1:
        summary = summarise_seeds(res)
        console.print("mean ± sd over seeds " + ", ".join(str(s) for s in seed_list) + ": " +
                      ", ".join(f"{m} {mu:.3f} ± {sd:.3f}" for m, (mu, sd) in summary.items()))


@eval_app.command("compare")
def compare_cmd(a: Path = typer.Argument(..., help="Result A (.json records or .predictions.npz)."),
                b: Path = typer.Argument(..., help="Result B, evaluated on the same samples."),
                metric: list[str] = typer.Option([], "--metric", help="Metric(s) to test (default: all)."),
                run_a: int | None = typer.Option(None, "--run-a", help="Run index when A holds several."),
                run_b: int | None = typer.Option(None, "--run-b", help="Run index when B holds several."),
                n_boot: int = _n_boot, seed: int = _seed, out: Path | None = _out) -> None:
    """Paired tests between two stored results: paired bootstrap, DeLong (AUROC), McNemar (accuracy)."""
    from medvl.evaluate.compare import compare_files, comparison_table

    comp = compare_files(a, b, metric or None, n_boot, seed, run_a, run_b)
    console.print(comparison_table(comp))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(comp.to_dict(), indent=1))
        console.print(f"comparison: {out}")
