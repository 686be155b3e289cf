"""Run a bench suite: prepare datasets, train what must be trained, run the missing jobs.

Every job (model x task x seed) is cached in a :class:`ResultStore` under a content hash, so a
second run of a finished suite does no work and says so. A job that fails is recorded with its
reason; the rest of the suite still runs and the exit status says something failed.
"""

from __future__ import annotations

import json
import shutil
import time
import traceback
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from medvl.bench.jobs import BenchOutcome, Job
from medvl.bench.store import (
    PROTOCOL_VERSION,
    ResultStore,
    dataset_fingerprint,
    encoder_fingerprint,
    stable_hash,
    train_run_dir,
)
from medvl.bench.suite import DatasetSpec, ModelSpec, Suite
from medvl.bench.tasks import get_task
from medvl.errors import ConfigError, MedvlError

__all__ = ["BenchOutcome", "Job", "plan_jobs", "prepare_dataset", "resolve_model", "run_suite", "train_run_dir"]

console = Console()


# ------------------------------------------------------------------------------------------
# Datasets and models
# ------------------------------------------------------------------------------------------

def prepare_dataset(name: str, spec: DatasetSpec) -> Path:
    """Create the dataset when its manifest is missing and the suite says how; else it must exist."""
    manifest = Path(spec.manifest)
    if manifest.is_file():
        return manifest
    if spec.synth is not None:
        from medvl.data.synthetic import generate_phantoms

        console.print(f"[bold]dataset {name}[/]: generating phantoms into {manifest.parent}")
        generate_phantoms(manifest.parent, **spec.synth)
    elif spec.medmnist is not None:
        from medvl.data.medmnist import convert_medmnist

        console.print(f"[bold]dataset {name}[/]: converting MedMNIST into {manifest.parent}")
        convert_medmnist(out_dir=manifest.parent, **spec.medmnist)
    if not manifest.is_file():
        raise ConfigError(f"dataset {name!r}: manifest {manifest} does not exist and no 'synth'/'medmnist' recipe "
                          "says how to create it")
    return manifest


def resolve_model(name: str, spec: ModelSpec, out_dir: Path, data_fps: dict[str, str]) -> tuple[str, str]:
    """Return (encoder spec, fingerprint); trains the model first when the suite says so (cached)."""
    if spec.encoder:
        return spec.encoder, encoder_fingerprint(spec.encoder)
    assert spec.train is not None
    run_dir = train_run_dir(name, spec, out_dir, data_fps)
    final = run_dir / "final"
    if (final / "weights.safetensors").is_file():
        return str(final), encoder_fingerprint(str(final))
    from medvl.models import load_model, save_model
    from medvl.train.config import load_train_config
    from medvl.train.trainer import train

    cfg = load_train_config(spec.train, [*spec.overrides, f"train.out_dir={run_dir}"])
    resume = run_dir.is_dir() and any(run_dir.glob("checkpoints/*"))
    console.print(f"[bold]model {name}[/]: training ({spec.train}) into {run_dir}" + (" — resuming" if resume else ""))
    result = train(cfg, resume=resume)
    if result.last_checkpoint is None:
        raise MedvlError(f"model {name!r}: training finished without a checkpoint in {run_dir}")
    model = load_model(result.last_checkpoint)
    tmp = run_dir / "final.tmp"
    save_model(model, tmp)
    # What evaluators read beside the weights: the training-data record (pretraining-evaluation leakage),
    # the training config, and -- for a caption objective, whose decoder lives in the objective state --
    # the train state (report_gen's report writer).
    keep = ["train_data.json", "train_config.yaml"]
    if any(o.get("name") == "caption" for o in cfg.objectives or []):
        keep.append("train_state.pt")
    for name_ in keep:
        src = Path(result.last_checkpoint) / name_
        if src.is_file():
            shutil.copy2(src, tmp / name_)
    tmp.replace(final)
    return str(final), encoder_fingerprint(str(final))


# ------------------------------------------------------------------------------------------
# The suite
# ------------------------------------------------------------------------------------------

def plan_jobs(suite: Suite) -> list[Job]:
    jobs = []
    for task in suite.tasks:
        for model in task.models or list(suite.models):
            # deterministic tasks (zero-shot, retrieval, grounding): one seed is enough
            seeds = [suite.seeds[0]] if get_task(task.type).deterministic else suite.seeds
            for seed in seeds:
                jobs.append(Job(model=model, task=task, seed=seed))
    return jobs


def _job_key(job: Job, model_fp: str, data_fp: str, suite: Suite) -> str:
    task = {"type": job.task.type, "split": job.task.split, "params": job.task.params}
    return stable_hash({"model": model_fp, "task": task, "data": data_fp, "seed": job.seed,
                        "bootstrap": suite.bootstrap, "v": PROTOCOL_VERSION})


def run_suite(suite: Suite, out_dir: str | Path, *, rerun_failed: bool = True) -> BenchOutcome:
    """Run every missing job of ``suite`` into ``out_dir`` and render the report."""
    from medvl.bench.report import write_reports

    start = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    store = ResultStore(out_dir)
    manifests = {n: prepare_dataset(n, spec) for n, spec in suite.datasets.items()}
    data_fps = {n: dataset_fingerprint(p) for n, p in manifests.items()}
    jobs = plan_jobs(suite)

    # Fingerprints of models that need no training are known now; trained ones only once trained,
    # unless their final checkpoint is already there.
    encoders: dict[str, tuple[str, str]] = {}
    for name, spec in suite.models.items():
        if spec.encoder or _trained_final(name, spec, out_dir, data_fps) is not None:
            encoders[name] = resolve_model(name, spec, out_dir, data_fps)
    for job in jobs:
        if job.model in encoders:
            job.key = _job_key(job, encoders[job.model][1], data_fps[job.task.dataset], suite)
    cached = [j for j in jobs if j.key and store.has(j.key)]
    todo = [j for j in jobs if not (j.key and store.has(j.key))]
    outcome = BenchOutcome(out_dir=out_dir, n_jobs=len(jobs), n_cached=len(cached), n_run=0)
    if not todo:
        console.print(f"[green]nothing to do[/]: all {len(jobs)} results of suite {suite.name!r} are cached in "
                      f"{store.root}")
    else:
        console.print(f"suite {suite.name!r}: {len(jobs)} jobs, {len(cached)} cached, {len(todo)} to run")
        _run_jobs(suite, todo, encoders, manifests, data_fps, out_dir, store, outcome)
    done = [(j, store.path(j.key)) for j in jobs if j.key and store.has_result(j.key)]
    for j in jobs:
        if j.key and store.skipped_path(j.key).is_file() and not any(s["job"] == j.label for s in outcome.skipped):
            outcome.skipped.append(json.loads(store.skipped_path(j.key).read_text()))
    # The family members' run directories hold their training logs (samples/s for the ablation's cost column).
    train_runs = {m: train_run_dir(m, suite.models[m], out_dir, data_fps)
                  for members in suite.families.values() for m in members.values()}
    outcome.results_path, outcome.leaderboard_path, outcome.report_path = write_reports(
        suite, done, outcome, manifests, out_dir, train_runs=train_runs)
    outcome.wall_s = time.perf_counter() - start
    return outcome


def _trained_final(name: str, spec: ModelSpec, out_dir: Path, data_fps: dict[str, str]) -> Path | None:
    if not spec.train:
        return None
    final = train_run_dir(name, spec, out_dir, data_fps) / "final"
    return final if (final / "weights.safetensors").is_file() else None


def _run_jobs(suite: Suite, todo: list[Job], encoders: dict[str, tuple[str, str]], manifests: dict[str, Path],
              data_fps: dict[str, str], out_dir: Path, store: ResultStore, outcome: BenchOutcome) -> None:
    from medvl.bench.tasks import run_job

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("ETA"), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        bar = progress.add_task("bench", total=len(todo))
        for job in todo:
            progress.update(bar, description=job.label)
            try:
                if job.model not in encoders:
                    encoders[job.model] = resolve_model(job.model, suite.models[job.model], out_dir, data_fps)
                job.key = _job_key(job, encoders[job.model][1], data_fps[job.task.dataset], suite)
                if store.has(job.key):  # the freshly trained model matched a cached result
                    progress.advance(bar)
                    continue
                status = run_job(job, encoders[job.model][0], manifests[job.task.dataset], suite,
                                 store.path(job.key), suite.models[job.model].options)
                store.clear_failed(job.key)
                if status:
                    store.mark_skipped(job.key, {"job": job.label, "reason": status})
                    outcome.skipped.append({"job": job.label, "reason": status})
                    progress.console.print(f"[yellow]skipped[/] {job.label}: {status}")
                else:
                    outcome.n_run += 1
            except Exception as exc:  # noqa: BLE001 - a failing job must not stop the suite
                reason = str(exc) if isinstance(exc, MedvlError) else f"{type(exc).__name__}: {exc}"
                info = {"job": job.label, "model": job.model, "task": job.task.name, "seed": job.seed,
                        "reason": reason, "traceback": traceback.format_exc()}
                outcome.failed.append(info)
                if job.key:
                    store.mark_failed(job.key, info)
                progress.console.print(f"[red]failed[/] {job.label}: {reason}")
            progress.advance(bar)
    (out_dir / "failed.json").write_text(json.dumps(outcome.failed, indent=2))
