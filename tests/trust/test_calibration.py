"""Known-answer tests of the calibration module (ECE, MCE, Brier, NLL, temperature, AURC)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import brier_score_loss, log_loss

from medvl.errors import MedvlError
from medvl.evaluate.calibration import (
    apply_temperature,
    aurc_from,
    brier,
    calibration_of,
    decisions,
    ece,
    fit_temperature,
    mce,
    nll,
    optimal_aurc,
    plot_reliability,
    plot_risk_coverage,
    reliability,
    risk_coverage,
)
from medvl.evaluate.metrics import _ece_from, prepare


def _calibrated_binary(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores p ~ U(0,1) and labels drawn as Bernoulli(p): perfectly calibrated by construction."""
    rng = np.random.default_rng(seed)
    p = rng.uniform(0, 1, n)
    return p, (rng.uniform(0, 1, n) < p).astype(int)


def test_ece_of_perfectly_calibrated_scores_is_near_zero() -> None:
    p, y = _calibrated_binary(200_000, 0)
    d = decisions(prepare(p, y, "binary"))
    assert ece(d.conf, d.correct, 15, "width") < 0.01
    assert ece(d.conf, d.correct, 15, "mass") < 0.01
    # an overconfident version of the same model is clearly miscalibrated
    sharp = 1 / (1 + np.exp(-3 * np.log(p / (1 - p))))
    d2 = decisions(prepare(sharp, y, "binary"))
    assert ece(d2.conf, d2.correct) > 0.05


def test_hand_computed_small_example() -> None:
    conf = np.array([0.55, 0.65, 0.95, 0.95])
    correct = np.array([True, False, True, False])
    # width, 2 bins (0,0.5],(0.5,1]: one bin with conf 0.775, acc 0.5 -> ECE 0.275
    assert ece(conf, correct, 2, "width") == pytest.approx(0.275)
    # width, 10 bins: (0.5,0.6] {0.55: acc 1}, (0.6,0.7] {0.65: acc 0}, (0.9,1] {0.95,0.95: acc .5}
    # ECE = 1/4*0.45 + 1/4*0.65 + 2/4*0.45 = 0.5
    assert ece(conf, correct, 10, "width") == pytest.approx(0.5)
    assert mce(conf, correct, 10, "width") == pytest.approx(0.65)
    # mass, 2 bins: {0.55, 0.65} conf .6 acc .5 ; {0.95, 0.95} conf .95 acc .5 -> (0.1 + 0.45)/2
    assert ece(conf, correct, 2, "mass") == pytest.approx(0.275)
    r = reliability(conf, correct, 2, "mass")
    assert r.count.tolist() == [2, 2]
    assert r.confidence.tolist() == pytest.approx([0.6, 0.95])


def test_width_ece_matches_the_metrics_module() -> None:
    rng = np.random.default_rng(1)
    s = rng.dirichlet(np.ones(4), 300)
    y = rng.integers(0, 4, 300)
    d = decisions(prepare(s, y, "multiclass"))
    assert ece(d.conf, d.correct) == pytest.approx(_ece_from(d.conf, d.correct))


def test_brier_and_nll_match_sklearn() -> None:
    p, y = _calibrated_binary(500, 2)
    prep = prepare(p, y, "binary")
    assert brier(prep) == pytest.approx(brier_score_loss(y, p))
    assert nll(prep) == pytest.approx(log_loss(y, p))
    rng = np.random.default_rng(3)
    s = rng.dirichlet(np.ones(3), 200)
    yy = rng.integers(0, 3, 200)
    pm = prepare(s, yy, "multiclass")
    assert nll(pm) == pytest.approx(log_loss(yy, s, labels=[0, 1, 2]))
    assert brier(pm) == pytest.approx(np.mean(((s - np.eye(3)[yy]) ** 2).sum(1)))


def test_multilabel_ignores_unknown_entries() -> None:
    s = np.array([[0.9, 0.2], [0.3, 0.8]])
    y = np.array([[1, np.nan], [0, -1]])
    p = prepare(s, y, "multilabel")
    d = decisions(p)
    assert d.conf.tolist() == pytest.approx([0.9, 0.7])
    assert d.correct.tolist() == [True, True]
    assert brier(p) == pytest.approx((0.01 + 0.09) / 2)


def test_temperature_recovers_a_known_sharpening() -> None:
    """Logits of a calibrated model multiplied by 2.5 -> the fitted temperature is ~2.5, and ECE drops."""
    rng = np.random.default_rng(4)
    n, k = 20_000, 3
    z = rng.normal(0, 1.5, (n, k))
    prob = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    y = np.array([rng.choice(k, p=row) for row in prob])
    sharp = np.exp(2.5 * z) / np.exp(2.5 * z).sum(1, keepdims=True)
    p = prepare(sharp, y, "multiclass")
    t = fit_temperature(p.take(np.arange(n // 2)))
    assert t == pytest.approx(2.5, rel=0.08)
    test = p.take(np.arange(n // 2, n))
    d0, d1 = decisions(test), decisions(apply_temperature(test, t))
    assert ece(d1.conf, d1.correct) < 0.5 * ece(d0.conf, d0.correct)
    # argmax (accuracy) unchanged by temperature
    assert (apply_temperature(test, t).s.argmax(1) == test.s.argmax(1)).all()


def test_temperature_on_sigmoid_outputs_is_exact_inverse() -> None:
    p = prepare(np.array([[0.9, 0.1], [0.2, 0.7]]), np.array([[1, 0], [0, 1]]), "multilabel")
    back = apply_temperature(apply_temperature(p, 2.0), 0.5)
    assert back.s == pytest.approx(p.s, abs=1e-9)
    with pytest.raises(MedvlError, match="positive"):
        apply_temperature(p, 0.0)


def test_aurc_of_a_perfect_ranker_is_the_optimum() -> None:
    correct = np.array([True] * 7 + [False] * 3)
    conf = np.linspace(1.0, 0.1, 10)  # every error less confident than every correct decision
    rc = risk_coverage(conf, correct)
    assert rc.aurc == pytest.approx(optimal_aurc(10, 3))
    # optimum by hand: k=8..10 -> 1/8, 2/9, 3/10 over 10 coverages
    assert optimal_aurc(10, 3) == pytest.approx((1 / 8 + 2 / 9 + 3 / 10) / 10)
    assert rc.e_aurc == pytest.approx(0.0)
    assert rc.risk_at(0.7) == 0.0 and rc.risk_at(1.0) == pytest.approx(0.3)
    worst = risk_coverage(conf[::-1], correct)
    assert worst.aurc > rc.aurc
    assert aurc_from(conf, correct) == pytest.approx(rc.aurc)


def test_report_fits_on_val_and_gives_cis() -> None:
    rng = np.random.default_rng(5)
    z = rng.normal(0, 1.5, 1200)
    y = (rng.uniform(size=1200) < 1 / (1 + np.exp(-z))).astype(int)
    p = 1 / (1 + np.exp(-3 * z))  # overconfident by 3x
    groups = np.repeat(np.arange(300), 2)  # two images per patient in test
    rep = calibration_of(p[600:], y[600:], "binary", p[:600], y[:600], groups=groups, n_boot=200)
    assert rep.temperature == pytest.approx(3.0, rel=0.25)
    ch = rep.change["ece"]
    assert ch.value < 0 and ch.high < 0 and ch.low <= ch.value <= ch.high
    assert rep.n_groups == 300
    assert rep.after["nll"].value < rep.before["nll"].value
    no_val = calibration_of(p[600:], y[600:], "binary", n_boot=0)
    assert no_val.temperature == 1.0 and "not fitted" in no_val.notes[0]
    assert np.isnan(no_val.before["ece"].low)


def test_plots_write_pngs(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    p, y = _calibrated_binary(300, 6)
    d = decisions(prepare(p, y, "binary"))
    a = plot_reliability(reliability(d.conf, d.correct), tmp_path / "rel.png")
    b = plot_risk_coverage([("m", risk_coverage(d.conf, d.correct))], tmp_path / "rc.png")
    assert a.stat().st_size > 1000 and b.stat().st_size > 1000


def test_bad_input_is_one_clear_error() -> None:
    with pytest.raises(MedvlError, match="bin strategy"):
        ece(np.array([0.6]), np.array([True]), 10, "quantile")
    with pytest.raises(MedvlError, match="at least 2 validation"):
        fit_temperature(prepare(np.array([0.7]), np.array([1]), "binary"))
    with pytest.raises(MedvlError, match="no decisions"):
        risk_coverage(np.array([]), np.array([], dtype=bool))
