"""The MedMNIST subset table is a data file (``medmnist_subsets.yaml``) shipped with the package."""

from __future__ import annotations

import fnmatch
from pathlib import Path

import pytest
import tomllib

from medvl.data.medmnist import SUBSETS, SUBSETS_FILE, load_subsets
from medvl.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_the_table_is_read_from_the_shipped_data_file() -> None:
    assert SUBSETS_FILE.is_file()
    assert load_subsets() == SUBSETS
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["medvl"]
    rel = SUBSETS_FILE.relative_to(ROOT / "src" / "medvl").as_posix()
    assert any(fnmatch.fnmatch(rel, p) for p in patterns), f"{rel} is not in pyproject's package-data"


def test_facts_match_medmnist_info() -> None:
    """Spot checks against MedMNIST's INFO (medmnist 3.0.2): 12 2D + 6 3D subsets, sizes, orders, checksums."""
    assert len(SUBSETS) == 18 and sum(s.is_3d for s in SUBSETS.values()) == 6
    b = SUBSETS["breastmnist"]
    assert (b.n_samples, b.class_names, b.md5[28]) == ({"train": 546, "val": 78, "test": 156},
                                                       ["malignant", "normal, benign"],
                                                       "750601b1f35ba3300ea97c75c52ff8f6")
    assert SUBSETS["vesselmnist3d"].n_samples == {"train": 1335, "val": 191, "test": 382}
    assert SUBSETS["organamnist"].class_names[:2] == ["bladder", "femur-left"]  # 2D order
    assert SUBSETS["organmnist3d"].class_names[:2] == ["liver", "kidney-right"]  # 3D order differs
    assert SUBSETS["retinamnist"].class_names == ["0", "1", "2", "3", "4"] and SUBSETS["retinamnist"].ordinal
    assert SUBSETS["dermamnist"].license == "CC BY-NC 4.0" and SUBSETS["pathmnist"].license == "CC BY 4.0"
    for s in SUBSETS.values():
        assert set(s.md5) <= set(s.sizes) and set(s.n_samples) == {"train", "val", "test"}
        assert all(len(h) == 32 for h in s.md5.values())


def test_a_malformed_entry_names_the_subset(tmp_path: Path) -> None:
    bad = tmp_path / "subsets.yaml"
    bad.write_text("subsets:\n  foomnist: {python_class: Foo, modality: ct}\n")
    with pytest.raises(ConfigError, match=r"subsets.yaml: subsets.foomnist: malformed entry \(KeyError"):
        load_subsets(bad)
