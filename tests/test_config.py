"""Configs: dotted overrides and strict keys (a typo must fail loudly, listing the valid keys)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from medvl.config import apply_overrides, from_dict, load_yaml, parse_override, save_yaml, to_dict
from medvl.errors import ConfigError


@dataclass
class Optim:
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.98)


@dataclass
class Run:
    name: str = "x"
    optim: Optim = field(default_factory=Optim)
    out: Path | None = None


def test_overrides_parse_yaml_values() -> None:
    assert parse_override("optim.lr=2e-4") == (["optim", "lr"], 2e-4)
    assert parse_override("name=hello") == (["name"], "hello")
    assert parse_override("flag=true") == (["flag"], True)
    assert parse_override("items=[1, 2]") == (["items"], [1, 2])
    with pytest.raises(ConfigError, match="key.subkey=value"):
        parse_override("novalue")


def test_apply_overrides_does_not_mutate_input() -> None:
    cfg = {"optim": {"lr": 1.0}}
    out = apply_overrides(cfg, ["optim.lr=0.5", "new.deep.key=3"])
    assert cfg == {"optim": {"lr": 1.0}}
    assert out == {"optim": {"lr": 0.5}, "new": {"deep": {"key": 3}}}


def test_from_dict_builds_nested_and_rejects_unknown_keys() -> None:
    run = from_dict(Run, {"name": "a", "optim": {"lr": 0.1}})
    assert run.optim.lr == 0.1 and run.optim.betas == (0.9, 0.98)
    with pytest.raises(ConfigError, match=r"unknown config key 'lrr' in 'optim'; valid keys: betas, lr"):
        from_dict(Run, {"optim": {"lrr": 0.1}})
    with pytest.raises(ConfigError, match="valid keys: name, optim, out"):
        from_dict(Run, {"nmae": "a"})


def test_yaml_round_trip_and_errors(tmp_path: Path) -> None:
    run = Run(name="b", out=tmp_path)
    save_yaml(to_dict(run), tmp_path / "c.yaml")
    data = load_yaml(tmp_path / "c.yaml")
    assert data["out"] == str(tmp_path) and data["optim"]["lr"] == 1e-3
    (tmp_path / "bad.yaml").write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_yaml(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_yaml(tmp_path / "list.yaml")
    with pytest.raises(ConfigError, match="not found"):
        load_yaml(tmp_path / "nope.yaml")


def test_yaml_files_read_scientific_notation_as_numbers(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("lr: 2e-4\nwd: 1.0e-2\nname: 1e\nn: 3\n")
    assert load_yaml(tmp_path / "c.yaml") == {"lr": 2e-4, "wd": 1e-2, "name": "1e", "n": 3}
