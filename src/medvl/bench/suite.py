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

Pretraining variance (ablations): a ``train:`` model with ``train_seeds: [0, 1, 2]`` is a *family*.
It expands at load time into the models ``NAME@0``, ``NAME@1``, ``NAME@2``, each trained with the
extra override ``train.seed=<s>`` (in its own run directory) and evaluated like any other model.
``seeds`` stay *evaluation* seeds (linear-probe subsets, bootstrap). A task's ``models:`` may name
the family, meaning all its members. ``reference: NAME`` picks the family that the ablation
summary compares the others against (default: the first family)::

    models:
      plain:   {train: configs/clip-tiny-synth.yaml, train_seeds: [0, 1, 2]}
      low-lr:  {train: configs/clip-tiny-synth.yaml, overrides: ["optim.lr=1e-4"], train_seeds: [0, 1, 2]}
    tasks:
      - {type: zeroshot, dataset: phantoms, models: [plain, low-lr]}   # = plain@0..2, low-lr@0..2
      - {type: grounding, dataset: phantoms}
    reference: plain
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medvl.config import from_dict, load_yaml
from medvl.errors import ConfigError

FAMILY_SEP = "@"  # family member names: "<family>@<train seed>"


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
    # Training seeds (pretraining variance): the model becomes a family NAME@s, one training run per seed.
    train_seeds: list[int] = field(default_factory=list)


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
    # family -> {training seed: member model name}; members are ordinary entries of ``models``
    families: dict[str, dict[int, str]] = field(default_factory=dict)
    reference: str | None = None  # the family the ablation summary compares against

    def family_of(self, model: str) -> tuple[str, int] | None:
        """(family, training seed) of a family member, None for an ordinary model."""
        for fam, members in self.families.items():
            for seed, name in members.items():
                if name == model:
                    return fam, seed
        return None

    def resolve(self, path: str) -> Path:
        """Paths in a suite are relative to the current directory (like the training configs)."""
        return Path(path)


def _choices(kind: str, name: str, valid: list[str] | tuple[str, ...]) -> ConfigError:
    kinds = kind[:-1] + "ies" if kind.endswith("y") else kind + "s"
    return ConfigError(f"unknown {kind} {name!r}; valid {kinds}: {', '.join(valid) if valid else '(none defined)'}")


def suite_from_dict(data: dict[str, Any], source: str = "<suite>") -> Suite:
    valid_top = {"name", "datasets", "models", "tasks", "seeds", "bootstrap", "device", "reference"}
    unknown = sorted(set(data) - valid_top)
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {', '.join(map(repr, unknown))}; valid keys: "
                          f"{', '.join(sorted(valid_top))}")
    for key in ("datasets", "models", "tasks"):
        if not data.get(key):
            raise ConfigError(f"{source}: '{key}' is missing or empty")
    datasets = {n: from_dict(DatasetSpec, d, f"datasets.{n}") for n, d in data["datasets"].items()}
    declared = {n: from_dict(ModelSpec, d, f"models.{n}") for n, d in data["models"].items()}
    for n, m in declared.items():
        if bool(m.encoder) == bool(m.train):
            raise ConfigError(f"{source}: model {n!r} needs exactly one of 'encoder' or 'train'")
    models, families = _expand_families(declared, data["models"], source)
    # The task types are whatever medvl.bench.tasks registers (imported here: task modules may import this one).
    from medvl.bench import tasks

    specs: list[TaskSpec] = []
    for i, t in enumerate(data["tasks"]):
        spec = from_dict(TaskSpec, t, f"tasks[{i}]")
        if spec.type not in tasks.TASKS:
            raise _choices("task type", spec.type, tasks.task_names())
        if spec.dataset not in datasets:
            raise _choices("dataset", spec.dataset, list(datasets))
        if spec.models is not None:
            spec.models = _task_models(spec.models, models, families)
        spec.name = spec.name or spec.type
        tasks.check_params(spec.name, spec.type, dict(spec.params))  # a typo fails now, not an hour in
        specs.append(spec)
    seeds = data.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise ConfigError(f"{source}: 'seeds' must be a non-empty list of integers, got {seeds!r}")
    reference = data.get("reference")
    if reference is not None and reference not in families:
        raise _choices("family", str(reference), list(families))
    if reference is None and families:
        reference = next(iter(families))
    return Suite(name=str(data.get("name", Path(source).stem)), datasets=datasets, models=models, tasks=specs,
                 seeds=seeds, bootstrap=int(data.get("bootstrap", 1000)), device=str(data.get("device", "cpu")),
                 families=families, reference=reference)


def member_name(family: str, seed: int) -> str:
    return f"{family}{FAMILY_SEP}{seed}"


def _expand_families(declared: dict[str, ModelSpec], raw: dict[str, Any],
                     source: str) -> tuple[dict[str, ModelSpec], dict[str, dict[int, str]]]:
    """Replace every model with ``train_seeds`` by one member per seed (``NAME@s``, override ``train.seed=s``).

    Expanding at load time means the runner, the cache and the reports see ordinary models: each
    member has its own training fingerprint (the seed is part of the resolved training config), so
    adding a seed trains only that member and a re-run finds every member cached.
    """
    models: dict[str, ModelSpec] = {}
    families: dict[str, dict[int, str]] = {}
    for name, spec in declared.items():
        given = isinstance(raw.get(name), dict) and "train_seeds" in raw[name]
        if not given:
            models[name] = spec
            continue
        seeds = spec.train_seeds
        if spec.encoder:
            raise ConfigError(f"{source}: model {name!r} has 'train_seeds' but no 'train' config; training seeds "
                              "only apply to models the bench trains (use 'train:', not 'encoder:')")
        if (not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool)
                                                                for s in seeds) or len(set(seeds)) != len(seeds)):
            raise ConfigError(f"{source}: model {name!r}: 'train_seeds' must be a non-empty list of distinct "
                              f"integers, got {seeds!r}")
        families[name] = {}
        for seed in seeds:
            member = member_name(name, seed)
            models[member] = ModelSpec(train=spec.train, overrides=[*spec.overrides, f"train.seed={seed}"],
                                       options=dict(spec.options), label=f"{spec.label or name} (train seed {seed})")
            families[name][seed] = member
    clash = sorted(set(declared) & {m for members in families.values() for m in members.values()})
    if clash:
        raise ConfigError(f"{source}: model name(s) {', '.join(map(repr, clash))} collide with the members of a "
                          "family (NAME@seed); rename them")
    return models, families


def _task_models(names: list[str], models: dict[str, ModelSpec], families: dict[str, dict[int, str]]) -> list[str]:
    """A task's model list with family names replaced by their members (in seed order, no duplicates)."""
    out: list[str] = []
    for n in names:
        if n in families:
            out += [m for m in families[n].values() if m not in out]
        elif n in models:
            if n not in out:
                out.append(n)
        else:
            raise _choices("model", n, [*(m for m in models if not _is_member(m, families)), *families,
                                        *(m for m in models if _is_member(m, families))])
    return out


def _is_member(name: str, families: dict[str, dict[int, str]]) -> bool:
    return any(name in members.values() for members in families.values())


def load_suite(path: str | Path) -> Suite:
    return suite_from_dict(load_yaml(path), str(path))
