"""The bench task registry: a new task type is one module + one ``@register_task`` line, nothing else.

A toy task registered here (and removed afterwards) must be accepted by the suite loader, planned
with the right number of seeds, get its params checked, run through :func:`run_job` into a result
file, and be skipped (not failed) when it returns a reason.
"""

from __future__ import annotations

import pkgutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import medvl.bench.tasks as tasks_pkg
from medvl.bench.jobs import Job
from medvl.bench.runner import plan_jobs
from medvl.bench.suite import suite_from_dict
from medvl.bench.tasks import TASKS, TaskContext, get_task, register_task, run_job
from medvl.errors import ConfigError
from medvl.evaluate.metrics import higher_is_better, metric_info, oriented, register_metric_info
from medvl.evaluate.results import EvalResult, MetricRecord, load_records


@pytest.fixture
def toy_tasks() -> Iterator[list[TaskContext]]:
    """Registers ``toy`` (seeded) and ``toy_text`` (deterministic, needs text); unregisters them after."""
    seen: list[TaskContext] = []

    @register_task("toy", params={"alpha"}, headline="auroc")
    def run_toy(ctx: TaskContext) -> list[EvalResult] | str:
        seen.append(ctx)
        if ctx.params.get("alpha") == "skip-me":
            return "toy does not apply here"
        rec = MetricRecord(model=ctx.common["model_name"], task="toy", dataset=ctx.common["dataset"], split=ctx.split,
                           metric="auroc", value=0.5 + 0.1 * float(ctx.params.get("alpha", 0)), n=ctx.seed)
        return [EvalResult([rec])]

    @register_task("toy_text", params=set(), needs_text=True)
    def run_toy_text(ctx: TaskContext) -> list[EvalResult]:  # pragma: no cover - never planned to run here
        raise AssertionError("not run")

    try:
        yield seen
    finally:
        TASKS.pop("toy", None)
        TASKS.pop("toy_text", None)


def _suite(tasks: list[dict]) -> dict:
    return {"name": "t", "datasets": {"d": {"manifest": "x.csv"}}, "models": {"m": {"encoder": "timm:test_resnet"}},
            "tasks": tasks, "seeds": [3, 4]}


def test_every_module_of_the_package_registers_a_task() -> None:
    """Discovery imports every task module: the registered functions cover all modules of the package."""
    modules = {m.name for m in pkgutil.iter_modules(tasks_pkg.__path__)
               if not m.name.startswith("_") and m.name != "registry"}
    registered = {spec.run.__module__.rsplit(".", 1)[1] for spec in TASKS.values()
                  if spec.run.__module__.startswith("medvl.bench.tasks.")}
    assert modules <= registered
    assert {"zeroshot", "retrieval", "linear_probe", "knn", "finetune", "robustness", "grounding"} <= set(TASKS)
    assert get_task("zeroshot").needs_text and get_task("zeroshot").deterministic
    assert not get_task("linear_probe").needs_text and not get_task("linear_probe").deterministic
    assert get_task("retrieval").headline == "t2i_R@5"


def test_a_registered_task_is_a_suite_task_type(toy_tasks: list[TaskContext]) -> None:
    suite = suite_from_dict(_suite([{"type": "toy", "dataset": "d", "params": {"alpha": 1}},
                                    {"type": "toy_text", "dataset": "d"}]))
    jobs = plan_jobs(suite)
    assert [(j.task.type, j.seed) for j in jobs] == [("toy", 3), ("toy", 4), ("toy_text", 3)]
    with pytest.raises(ConfigError, match=r"task 'toy' \(toy\): unknown param\(s\) beta; valid: alpha"):
        suite_from_dict(_suite([{"type": "toy", "dataset": "d", "params": {"beta": 1}}]))
    with pytest.raises(ConfigError, match=r"unknown task type 'toy2'; valid task types: .*toy, toy_text"):
        suite_from_dict(_suite([{"type": "toy2", "dataset": "d"}]))
    with pytest.raises(ConfigError, match="registered twice"):
        register_task("toy")(lambda ctx: "other")


def test_run_job_saves_results_or_returns_the_skip_reason(toy_tasks: list[TaskContext], tmp_path: Path) -> None:
    suite = suite_from_dict(_suite([{"type": "toy", "dataset": "d", "params": {"alpha": 2, "image_size": 224}},
                                    {"type": "toy", "dataset": "d", "params": {"alpha": "skip-me"}}]))
    job, skip_job = Job("m", suite.tasks[0], 4), Job("m", suite.tasks[1], 3)
    (tmp_path / "x.csv").write_text("image,text,split,patient_id\na.png,a report,test,p1\n")
    out = tmp_path / "results" / "k.json"
    assert run_job(job, "timm:test_resnet", tmp_path / "x.csv", suite, out, {"image_size": 32}) is None
    (rec,) = load_records(out)
    assert (rec.model, rec.task, rec.dataset, rec.split, rec.n) == ("m", "toy", "d", "test", 4)
    assert rec.value == pytest.approx(0.7)
    ctx = toy_tasks[0]
    assert ctx.params == {"alpha": 2}  # image_size is informational: dropped before the task sees it
    assert ctx.encoder_options == {"image_size": 32} and ctx.out_dir == tmp_path / "results"
    assert ctx.cache_dir == tmp_path / "features" and ctx.common["n_boot"] == suite.bootstrap

    out2 = tmp_path / "results" / "k2.json"
    assert run_job(skip_job, "timm:test_resnet", tmp_path / "x.csv", suite, out2) == "toy does not apply here"
    assert not out2.exists()


def test_metric_direction_lives_with_the_metric() -> None:
    assert higher_is_better("auroc") and higher_is_better("t2i_R@5") and higher_is_better("pointing_game")
    assert not higher_is_better("ece")
    assert not higher_is_better("i2t_median_rank") and not higher_is_better("t2i_median_rank")
    assert oriented("ece", 0.1) == -0.1 and oriented("auroc", 0.8) == 0.8
    assert metric_info("ece").description
    try:
        register_metric_info("toy_distance", higher_is_better=False)
        assert not higher_is_better("toy_distance")
    finally:
        from medvl.evaluate.metrics import METRIC_INFO

        METRIC_INFO.pop("toy_distance", None)


def test_report_ranks_lower_is_better_metrics_ascending() -> None:
    """The leaderboard's best marker reads the direction from the metric table (ECE: smallest is best)."""
    from medvl.bench.report import _ranked

    def runs(v: float) -> list[tuple[int, EvalResult]]:
        rec = MetricRecord(model="x", task="t", dataset="d", split="test", metric="ece", value=v, n=10)
        rec2 = MetricRecord(model="x", task="t", dataset="d", split="test", metric="auroc", value=1 - v, n=10)
        return [(0, EvalResult([rec, rec2]))]

    models = {"a": runs(0.3), "b": runs(0.1), "c": runs(np.float64(0.2))}
    assert _ranked(models, "ece") == ["b", "c", "a"]
    assert _ranked(models, "auroc") == ["b", "c", "a"]
