"""Training seeds: a ``train:`` model with ``train_seeds`` expands into one model per seed at load time."""

from __future__ import annotations

import pytest

from medvl.bench.runner import plan_jobs
from medvl.bench.suite import suite_from_dict
from medvl.errors import ConfigError


def _suite(**changes: object) -> dict:
    data: dict = {
        "name": "abl",
        "datasets": {"d": {"manifest": "x.csv"}},
        "models": {
            "plain": {"train": "cfg.yaml", "overrides": ["train.max_steps=600"], "train_seeds": [0, 1, 2]},
            "wide": {"train": "cfg.yaml", "overrides": ["model.width=2"], "train_seeds": [0, 1, 2]},
            "rand": {"encoder": "timm:test_resnet"},
        },
        "tasks": [{"type": "zeroshot", "dataset": "d", "models": ["plain", "wide"]},
                  {"type": "linear_probe", "dataset": "d"},
                  {"type": "grounding", "dataset": "d", "models": ["wide@1"]}],
        "seeds": [0, 1],
    }
    data.update(changes)
    return data


def test_train_seeds_expand_into_members_with_their_seed_override() -> None:
    suite = suite_from_dict(_suite())
    assert list(suite.models) == ["plain@0", "plain@1", "plain@2", "wide@0", "wide@1", "wide@2", "rand"]
    assert suite.models["plain@1"].overrides == ["train.max_steps=600", "train.seed=1"]
    assert suite.models["wide@2"].overrides == ["model.width=2", "train.seed=2"]
    assert all(not m.train_seeds for m in suite.models.values())
    assert suite.families == {"plain": {0: "plain@0", 1: "plain@1", 2: "plain@2"},
                              "wide": {0: "wide@0", 1: "wide@1", 2: "wide@2"}}
    assert suite.reference == "plain"  # default: the first family
    assert suite.family_of("wide@2") == ("wide", 2) and suite.family_of("rand") is None


def test_family_names_in_task_model_lists_mean_all_members() -> None:
    suite = suite_from_dict(_suite(reference="wide"))
    assert suite.reference == "wide"
    zs, lp, gr = suite.tasks
    assert zs.models == ["plain@0", "plain@1", "plain@2", "wide@0", "wide@1", "wide@2"]
    assert lp.models is None  # every model, members included
    assert gr.models == ["wide@1"]  # a single member can be named too
    jobs = plan_jobs(suite)
    # text tasks (zero-shot, grounding) run the first evaluation seed only; the probe runs both
    assert sorted({(j.task.type, j.seed) for j in jobs}) == [("grounding", 0), ("linear_probe", 0),
                                                             ("linear_probe", 1), ("zeroshot", 0)]
    assert sum(j.task.type == "linear_probe" for j in jobs) == 7 * 2


def test_suite_without_families_has_no_reference() -> None:
    suite = suite_from_dict(_suite(models={"m": {"train": "cfg.yaml"}}, tasks=[{"type": "knn", "dataset": "d"}]))
    assert suite.families == {} and suite.reference is None and list(suite.models) == ["m"]


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"models": {"enc": {"encoder": "timm:test_resnet", "train_seeds": [0, 1]}}},
         r"model 'enc' has 'train_seeds' but no 'train' config"),
        ({"models": {"p": {"train": "c.yaml", "train_seeds": []}}}, r"model 'p': 'train_seeds' must be a non-empty"),
        ({"models": {"p": {"train": "c.yaml", "train_seeds": [1, 1]}}}, r"list of distinct integers, got \[1, 1\]"),
        ({"models": {"p": {"train": "c.yaml", "train_seeds": "0,1"}}}, r"'train_seeds' must be a non-empty list"),
        ({"tasks": [{"type": "knn", "dataset": "d", "models": ["plian"]}]},
         r"unknown model 'plian'; valid models: rand, plain, wide, plain@0"),
        ({"tasks": [{"type": "knn", "dataset": "d", "models": ["plain@7"]}]}, r"unknown model 'plain@7'"),
        ({"reference": "wdie"}, r"unknown family 'wdie'; valid families: plain, wide"),
        ({"models": {"m": {"encoder": "timm:x"}}, "tasks": [{"type": "knn", "dataset": "d"}], "reference": "m"},
         r"unknown family 'm'; valid families: \(none defined\)"),
        ({"models": {"p": {"train": "c.yaml", "train_seeds": [0]}, "p@0": {"encoder": "timm:x"}}},
         r"'p@0' collide with the members of a family"),
    ],
)
def test_invalid_families_name_the_problem(changes: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        suite_from_dict(_suite(**changes))
