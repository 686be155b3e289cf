"""The bench suite file: which models, which datasets, which tasks, which seeds.

A suite is validated completely before anything runs: an unknown key, model, dataset or task
type is an error that names it and lists the valid choices, so a typo never costs an hour of
compute.

Example (``configs/bench-synth.yaml``)::

    name: synth
    datasets:
      phantoms: {manifest: phantoms/manifest.csv, synth: {n: 2000, size: 64, seed: 0}}
    models:
      clip-tiny: {train: configs/clip-tiny-synth.yaml, overrides: ["train.max_steps=300"]}
      random-init: {encoder: "timm:resnet18"}
    tasks:
      - {type: zeroshot, dataset: phantoms}
      - {type: linear_probe, dataset: phantoms, params: {fractions: [0.1, 1.0]}}
    seeds: [0, 1, 2]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medvl.config import from_dict, load_yaml
from medvl.errors import ConfigError

TASK_TYPES = ("zeroshot", "retrieval", "linear_probe", "knn", "finetune", "robustness")
TEXT_TASKS = ("zeroshot", "retrieval")


@dataclass
class DatasetSpec:
    """A manifest; ``synth`` or ``medmnist`` say how to create it when it does not exist yet."""

    manifest: str
    synth: dict[str, Any] | None = None
    medmnist: dict[str, Any] | None = None


@dataclass
class ModelSpec:
    """Either an encoder spec (checkpoint dir, ``timm:...``) or a training config to run first."""

    encoder: str | None = None
    train: str | None = None
    overrides: list[str] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)  # keyword options for load_encoder (e.g. image_size)
    label: str = ""


@dataclass
class TaskSpec:
    type: str
    dataset: str
    split: str = "test"
    models: list[str] | None = None
    params: dict[str, Any] = field(default_factory=dict)
    name: str = ""


@dataclass
class Suite:
    name: str
    datasets: dict[str, DatasetSpec]
    models: dict[str, ModelSpec]
    tasks: list[TaskSpec]
    seeds: list[int] = field(default_factory=lambda: [0])
    bootstrap: int = 1000
    device: str = "cpu"
    base_dir: Path = Path(".")

    def resolve(self, path: str) -> Path:
        """Paths in a suite are relative to the current directory (like the training configs)."""
        return Path(path)


def _choices(kind: str, name: str, valid: list[str] | tuple[str, ...]) -> ConfigError:
    return ConfigError(f"unknown {kind} {name!r}; valid {kind}s: {', '.join(valid) if valid else '(none defined)'}")


def suite_from_dict(data: dict[str, Any], source: str = "<suite>") -> Suite:
    valid_top = {"name", "datasets", "models", "tasks", "seeds", "bootstrap", "device"}
    unknown = sorted(set(data) - valid_top)
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {', '.join(map(repr, unknown))}; valid keys: "
                          f"{', '.join(sorted(valid_top))}")
    for key in ("datasets", "models", "tasks"):
        if not data.get(key):
            raise ConfigError(f"{source}: '{key}' is missing or empty")
    datasets = {n: from_dict(DatasetSpec, d, f"datasets.{n}") for n, d in data["datasets"].items()}
    models = {n: from_dict(ModelSpec, d, f"models.{n}") for n, d in data["models"].items()}
    for n, m in models.items():
        if bool(m.encoder) == bool(m.train):
            raise ConfigError(f"{source}: model {n!r} needs exactly one of 'encoder' or 'train'")
    tasks = []
    for i, t in enumerate(data["tasks"]):
        spec = from_dict(TaskSpec, t, f"tasks[{i}]")
        if spec.type not in TASK_TYPES:
            raise _choices("task type", spec.type, TASK_TYPES)
        if spec.dataset not in datasets:
            raise _choices("dataset", spec.dataset, list(datasets))
        for m in spec.models or []:
            if m not in models:
                raise _choices("model", m, list(models))
        spec.name = spec.name or spec.type
        tasks.append(spec)
    seeds = data.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise ConfigError(f"{source}: 'seeds' must be a non-empty list of integers, got {seeds!r}")
    return Suite(name=str(data.get("name", Path(source).stem)), datasets=datasets, models=models, tasks=tasks,
                 seeds=seeds, bootstrap=int(data.get("bootstrap", 1000)), device=str(data.get("device", "cpu")))


def load_suite(path: str | Path) -> Suite:
    return suite_from_dict(load_yaml(path), str(path))
