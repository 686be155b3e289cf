"""Leaderboard cells: a spread is shown only where there is one (two or more seeds)."""

from __future__ import annotations

from medvl.bench.ablation import cell_text
from medvl.bench.report import _cell


def test_single_seed_cells_show_no_spread() -> None:
    one = {"mean": 0.75, "sd": 0.0, "ci_low": 0.7, "ci_high": 0.8, "seeds": 1, "n": 10}
    assert _cell(one) == "0.750 [0.700, 0.800]"
    three = {**one, "sd": 0.02, "seeds": 3, "varies": True}
    assert _cell(three) == "0.750 ± 0.020 [0.700, 0.800]"
    # three seeds of a deterministic task on one trained model (kNN, full-label probe): no "± 0.000"
    same = {**one, "sd": 0.0, "seeds": 3, "varies": False}
    assert _cell(same) == "0.750 [0.700, 0.800]"
    assert cell_text({"mean": 0.75, "sd": None, "n_seeds": 1}) == "0.750 (n=1)"
    assert cell_text({"mean": 0.75, "sd": 0.01, "n_seeds": 3}) == "0.750 ± 0.010 (n=3)"


def test_pages_named_by_records_are_listed_once() -> None:
    """Model cards (config.model_card) and side-by-side report pages (config.side_by_side) get report links."""
    from medvl.bench.report import model_card_links
    from medvl.evaluate.results import EvalResult, MetricRecord

    def result(**config: str) -> EvalResult:
        return EvalResult(records=[MetricRecord(model="m", task="t", dataset="d", split="test", metric=k,
                                                value=0.5, config=dict(config)) for k in ("bleu4", "rouge_l")])

    table = {("report_gen", "d", "test"): {"cap": [(0, result(side_by_side="results/rg.reports/side_by_side.html"))]},
             ("trust", "d", "test"): {"cap": [(0, result(model_card="cards/cap.html"))]}}
    page = "results/rg.reports/side_by_side.html"
    assert model_card_links(table, "side_by_side") == [("report_gen", "d", "cap", page)]
    assert model_card_links(table) == [("trust", "d", "cap", "cards/cap.html")]


def test_identical_seed_values_are_summarised_without_spread() -> None:
    from medvl.bench.report import _cell, _summary
    from medvl.evaluate.results import EvalResult, MetricRecord

    def run(seed: int, value: float) -> tuple[int, EvalResult]:
        rec = MetricRecord(model="m", task="knn", dataset="d", split="test", metric="auroc", value=value,
                           ci_low=value - 0.02, ci_high=value + 0.02)
        return seed, EvalResult(records=[rec])

    same = _summary([run(0, 0.752), run(1, 0.752), run(2, 0.752)], "auroc")
    assert same["seeds"] == 3 and not same["varies"] and "±" not in _cell(same)
    varied = _summary([run(0, 0.75), run(1, 0.77), run(2, 0.76)], "auroc")
    assert varied["varies"] and _cell(varied).startswith("0.760 ± 0.010")
