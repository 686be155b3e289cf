"""Bench evaluation tasks: one module per task type, each registering itself with ``@register_task``.

The contract (what ``run(ctx)`` gets and returns, params, ``needs_text``, ``deterministic``) is
documented in :mod:`medvl.bench.tasks.registry`. Every module of this package whose name does not
start with ``_`` (and is not ``registry``) is imported here, so adding a task type is adding one
module: nothing else lists the task types.
"""

from __future__ import annotations

import importlib
import pkgutil

from medvl.bench.tasks.registry import (
    IGNORED_PARAMS,
    TASKS,
    TaskContext,
    TaskDef,
    check_params,
    get_task,
    register_task,
    run_job,
    subset_features,
    tag_variant,
    task_names,
)

_BUILTIN_ORDER = ("zeroshot", "retrieval", "linear_probe", "knn", "finetune", "robustness", "grounding")


def _discover() -> None:
    """Import the built-in task modules (in the historical order), then any other module of the package."""
    names = [m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_") and m.name != "registry"]
    for name in sorted(names, key=lambda n: (_BUILTIN_ORDER.index(n) if n in _BUILTIN_ORDER else len(_BUILTIN_ORDER),
                                             n)):
        importlib.import_module(f"{__name__}.{name}")


_discover()

__all__ = ["IGNORED_PARAMS", "TASKS", "TaskContext", "TaskDef", "check_params", "get_task", "register_task",
           "run_job", "subset_features", "tag_variant", "task_names"]
