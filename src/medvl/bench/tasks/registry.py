"""The registry of bench evaluation tasks: a task type is one module + one ``@register_task`` line.

Contract of a task (what a new module in ``medvl/bench/tasks/`` provides)::

    from medvl.bench.tasks.registry import TaskContext, register_task

    @register_task("report_gen", params={"max_tokens", "beam"}, deterministic=True, headline="bleu4")
    def run(ctx: TaskContext) -> list[EvalResult] | str:
        from medvl.evaluate.report_gen import report_gen_eval   # evaluators are imported lazily

        inputs = ctx.inputs()                                   # encoder, manifest, task, classes (card required)
        return [report_gen_eval(inputs.encoder, inputs.manifest, split=ctx.split, seed=ctx.seed,
                                device=ctx.device, **ctx.params, **ctx.common)]

* ``name`` is the ``type:`` of a suite task. ``params`` is the exact set of keys a suite may give
  under ``params:`` (anything else is refused when the suite is loaded, naming the task and the
  valid keys); ``image_size`` is always accepted and ignored (the encoder's own preprocessing
  decides). ``ctx.params`` holds only the keys the suite gave: the task applies its defaults.
* ``needs_text``: the task reads the encoder's text tower; an image-only encoder is *skipped*
  (recorded with the reason, not failed) before ``run`` is called.
* ``deterministic``: the result does not depend on the evaluation seed (beyond the bootstrap),
  so only the suite's first seed runs. Defaults to ``needs_text`` (zero-shot, retrieval and
  grounding are both).
* ``headline``: the metric the leaderboard ranks and marks the best model on (when the result
  has it; else the first metric). Its direction comes from
  :func:`medvl.evaluate.metrics.higher_is_better`, so a lower-is-better metric declares that there.
* ``run(ctx)`` returns the :class:`~medvl.evaluate.results.EvalResult` list to store (the runner
  saves it at ``ctx.out_path``), or a string: the reason the job does not apply (a skip).
  Bad input raises a :class:`~medvl.errors.MedvlError` naming what and where; the runner
  records it as a failed job and the rest of the suite continues.
* Everything a task needs comes from the :class:`TaskContext`: the job, the suite, the encoder
  spec and options, the manifest path, ``common`` (``model_name``, ``dataset``, ``n_boot``: pass
  them to the evaluator so every record says where it came from) and lazy, cached helpers:
  :meth:`TaskContext.inputs` (the same model + data resolution as ``medvl eval``),
  :meth:`TaskContext.feats` (frozen features of a split, cached on disk under the bench folder so
  the tasks of one model share one pass over the images) and :meth:`TaskContext.val_or_none`.

Modules of this package are imported (and so registered) when the package is imported; module
names starting with ``_`` and this module are not tasks. No other file needs editing: the suite
loader, the planner and the runner all read :data:`TASKS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medvl.errors import ConfigError

if TYPE_CHECKING:
    from medvl.bench.jobs import Job
    from medvl.bench.suite import Suite
    from medvl.evaluate.features import EvalInputs, Features
    from medvl.evaluate.results import EvalResult

TaskFn = Callable[["TaskContext"], "list[EvalResult] | str"]
IGNORED_PARAMS = frozenset({"image_size"})  # informational in suites: the encoder's own preprocessing decides


@dataclass(frozen=True)
class TaskDef:
    """A registered task type: its function and what the suite loader and runner need to know."""

    name: str
    run: TaskFn
    params: frozenset[str]
    needs_text: bool = False
    deterministic: bool = False
    headline: str = ""
    doc: str = ""


TASKS: dict[str, TaskDef] = {}


def register_task(name: str, params: set[str] | frozenset[str] | tuple[str, ...] = (), needs_text: bool = False,
                  deterministic: bool | None = None, headline: str = "") -> Callable[[TaskFn], TaskFn]:
    """Register ``run(ctx) -> list[EvalResult] | str`` as the bench task type ``name`` (see the module doc)."""

    def deco(fn: TaskFn) -> TaskFn:
        if name in TASKS and TASKS[name].run is not fn:
            raise ConfigError(f"bench task type {name!r} is registered twice ({TASKS[name].run.__module__} and "
                              f"{fn.__module__})")
        doc = (fn.__doc__ or "").strip().splitlines()
        TASKS[name] = TaskDef(name=name, run=fn, params=frozenset(params), needs_text=needs_text,
                              deterministic=needs_text if deterministic is None else deterministic,
                              headline=headline, doc=doc[0] if doc else "")
        return fn

    return deco


def task_names() -> list[str]:
    """Registered task types, in registration order (the order of the error messages)."""
    return list(TASKS)


def get_task(name: str) -> TaskDef:
    """The task type ``name``; an unknown name is a :class:`ConfigError` listing the valid ones."""
    if name not in TASKS:
        raise ConfigError(f"unknown task type {name!r}; valid task types: {', '.join(TASKS) or '(none registered)'}")
    return TASKS[name]


def check_params(task_name: str, task_type: str, params: dict[str, Any]) -> dict[str, Any]:
    """The suite's params for a task, without ignored keys; unknown keys raise naming the task and the valid keys."""
    valid = get_task(task_type).params
    unknown = sorted(set(params) - valid - IGNORED_PARAMS)
    if unknown:
        raise ConfigError(f"task {task_name!r} ({task_type}): unknown param(s) {', '.join(unknown)}; "
                          f"valid: {', '.join(sorted(valid)) or '(none)'}")
    return {k: v for k, v in params.items() if k not in IGNORED_PARAMS}


@dataclass
class TaskContext:
    """Everything one job may read; the heavy parts (model, features) are loaded on first use only."""

    job: Job
    params: dict[str, Any]
    suite: Suite
    encoder_spec: str
    manifest_path: Path
    encoder_options: dict[str, Any]
    out_path: Path
    _inputs: EvalInputs | None = field(default=None, repr=False)
    _feats: dict[str, Features] = field(default_factory=dict, repr=False)

    @property
    def split(self) -> str:
        """The split the task evaluates on (the suite task's ``split``, default ``test``)."""
        return self.job.task.split

    @property
    def seed(self) -> int:
        return self.job.seed

    @property
    def device(self) -> str:
        return self.suite.device

    @property
    def common(self) -> dict[str, Any]:
        """Keyword arguments every evaluator takes: ``model_name``, ``dataset``, ``n_boot``."""
        return {"model_name": self.job.model, "dataset": self.job.task.dataset, "n_boot": self.suite.bootstrap}

    @property
    def out_dir(self) -> Path:
        """The folder of the job's result file (``<bench>/results``); write task extras beside it."""
        return self.out_path.parent

    @property
    def cache_dir(self) -> Path:
        """The bench's feature cache (``<bench>/features``), shared by all jobs of the bench."""
        return self.out_path.parent.parent / "features"

    def inputs(self) -> EvalInputs:
        """Encoder, manifest, task and classes, resolved like the ``medvl eval`` commands (card required)."""
        if self._inputs is None:
            from medvl.evaluate.features import load_eval_inputs

            self._inputs = load_eval_inputs(self.encoder_spec, self.manifest_path, self.suite.device,
                                            self.encoder_options)
        return self._inputs

    def feats(self, split: str) -> Features:
        """Frozen image features of ``split`` (cached in memory and under :attr:`cache_dir`)."""
        if split not in self._feats:
            from medvl.evaluate.features import extract_features

            inputs = self.inputs()
            self._feats[split] = extract_features(inputs.encoder, inputs.manifest, split, cache_dir=self.cache_dir)
        return self._feats[split]

    def val_or_none(self) -> Features | None:
        """Validation features when the manifest has a ``val`` split (for choosing C, k...), else None."""
        return self.feats("val") if "val" in self.inputs().manifest.splits else None


def run_job(job: Job, encoder_spec: str, manifest_path: Path, suite: Suite, out_path: Path,
            encoder_options: dict[str, Any] | None = None) -> str | None:
    """Run one job and save its results at ``out_path``; return a skip reason instead when it does not apply."""
    from medvl.evaluate.results import save_results

    task = get_task(job.task.type)
    params = check_params(job.task.name, job.task.type, dict(job.task.params))
    ctx = TaskContext(job=job, params=params, suite=suite, encoder_spec=encoder_spec,
                      manifest_path=Path(manifest_path), encoder_options=dict(encoder_options or {}),
                      out_path=Path(out_path))
    if task.needs_text and not ctx.inputs().encoder.has_text:
        return f"{job.model} has no text tower ({job.task.type} needs one)"
    out = task.run(ctx)
    if isinstance(out, str):
        return out
    from medvl.data.leakage import find_train_record, model_leakage
    from medvl.data.manifest import load_manifest
    from medvl.evaluate.features import record_leakage

    manifest = ctx._inputs.manifest if ctx._inputs is not None else (
        load_manifest(ctx.manifest_path) if find_train_record(encoder_spec) else None)  # only read when needed
    record_leakage(out, model_leakage(encoder_spec, manifest, ctx.split))  # pretraining overlap, in the result
    save_results(out, out_path)
    return None


# ------------------------------------------------------------------------------------------
# Helpers shared by task modules
# ------------------------------------------------------------------------------------------

def subset_features(feats: Features, mask: np.ndarray) -> Features:
    """Rows of ``feats`` where ``mask`` is true (a site, say), keeping everything aligned."""
    from medvl.evaluate.features import Features

    idx = np.flatnonzero(mask)
    return Features(x=feats.x[idx], labels=feats.labels[idx], ids=feats.ids[idx], rows=feats.rows[idx],
                    patient_ids=feats.patient_ids[idx], texts=[feats.texts[i] for i in idx],
                    classes=list(feats.classes), meta=dict(feats.meta))


def tag_variant(results: list[EvalResult], variant: str) -> list[EvalResult]:
    """Mark every record of ``results`` with ``config["variant"]`` (a report row per variant)."""
    for r in results:
        for rec in r.records:
            rec.config = {**(rec.config or {}), "variant": variant}
    return results
