"""Leaderboard cells: a spread is shown only where there is one (two or more seeds)."""

from __future__ import annotations

from medvl.bench.ablation import cell_text
from medvl.bench.report import _cell


def test_single_seed_cells_show_no_spread() -> None:
    one = {"mean": 0.75, "sd": 0.0, "ci_low": 0.7, "ci_high": 0.8, "seeds": 1, "n": 10}
    assert _cell(one) == "0.750 [0.700, 0.800]"
    three = {**one, "sd": 0.02, "seeds": 3}
    assert _cell(three) == "0.750 ± 0.020 [0.700, 0.800]"
    assert cell_text({"mean": 0.75, "sd": None, "n_seeds": 1}) == "0.750 (n=1)"
    assert cell_text({"mean": 0.75, "sd": 0.01, "n_seeds": 3}) == "0.750 ± 0.010 (n=3)"
