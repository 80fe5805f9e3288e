"""The overfitting law: known parameters in, the same curves (and a held-out fraction) out."""

import numpy as np
import pytest

from mixer.errors import UsageError
from mixer.analysis.scaling import (Curve, curve_test, fit_gain, fit_law, fit_power_floor, gain_at, law, law_coefficients,
                           onset_tokens)
from runutil import TRUE_LAW

TOKENS = np.logspace(8.5, 11.3, 16)  # 316M .. 200B tokens, as the paper's checkpoints span


def noisy_curves(fractions, noise=0.002, seed=0, tokens=TOKENS):
    rng = np.random.default_rng(seed)
    out = []
    for d in fractions:
        c = law(TRUE_LAW, tokens, d)
        out.append(Curve(d, tokens, c["train"] * np.exp(rng.normal(0, noise, len(tokens))),
                         c["test"] * np.exp(rng.normal(0, noise, len(tokens)))))
    return out


def test_law_pieces_agree_and_onset_is_where_the_slope_turns():
    for d in (0.0, 0.01, 0.1):
        c = law_coefficients(TRUE_LAW, d)
        np.testing.assert_allclose(curve_test(c, TOKENS), law(TRUE_LAW, TOKENS, d)["test"], rtol=1e-12)
    c = law_coefficients(TRUE_LAW, 0.1)
    t = onset_tokens(c)
    assert 1e11 < t < 1e12
    slope = np.diff(curve_test(c, [t * 0.99, t * 1.01]))[0]
    assert abs(slope) < 1e-6 and np.diff(curve_test(c, [t * 0.5, t * 0.6]))[0] < 0
    assert np.diff(curve_test(c, [t * 2, t * 3]))[0] > 0
    assert onset_tokens(law_coefficients(TRUE_LAW, 0.01)) is None  # b_gap(0.01) < 0: never overfits
    assert law(TRUE_LAW, TOKENS, 0.0)["gap"].max() == 0.0  # no domain data, no gap


def test_power_law_with_floor_is_recovered_exactly():
    y = 350.0 * TOKENS**-0.31 + 1.42
    f = fit_power_floor(TOKENS, y)
    assert f["b"] == pytest.approx(-0.31, abs=1e-3) and f["C"] == pytest.approx(1.42, abs=2e-3)
    assert f["mean_abs_rel_error_pct"] < 0.01
    assert fit_power_floor(TOKENS[:2], y[:2]) is None


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_joint_fit_recovers_parameters_and_predicts_held_out_fraction(seed):
    """The paper's test: fit on 0-5%, predict the 10% curve. With 0.1% lognormal noise on
    every loss, the held-out curve is predicted within 1% on average. (Over 20 seeds: mean
    error median 0.22%, worst 0.56%; pointwise max median 0.45%, worst 1.17%. Extrapolating
    in the fraction is the hard part: the floor's slope k3 is seen only through d <= 5%.)"""
    curves = noisy_curves([0.0, 0.001, 0.01, 0.02, 0.05, 0.1], noise=0.001, seed=seed)
    fit = fit_law(curves, holdout=0.1)
    # Speed, measured as work rather than seconds (timings on shared cores are noise): one
    # evaluation of the objective and its gradient costs ~0.2 ms, so this is ~2 s at most.
    assert fit["law"]["evaluations"] < 10_000
    assert fit["not_fitted"] == [{"what": "finetuning gain", "why": fit["not_fitted"][0]["why"]}]
    p = fit["law"]["params"]
    assert fit["law"]["fractions"] == [0.0, 0.001, 0.01, 0.02, 0.05]
    assert fit["holdout"]["test"]["mean_abs_rel_error_pct"] < 1.0
    assert fit["holdout"]["test"]["max_abs_rel_error_pct"] < 1.5
    assert fit["holdout"]["train"]["mean_abs_rel_error_pct"] < 1.0
    # Exponents: the train exponent at d = 0 and the gap exponent where it matters.
    assert p["b_train_g"] == pytest.approx(TRUE_LAW["b_train_g"], abs=0.01)
    b_gap = lambda q, d: d * q["b_gap_s"] + (1 - d) * q["b_gap_g"]  # noqa: E731
    assert b_gap(p, 0.05) == pytest.approx(b_gap(TRUE_LAW, 0.05), abs=0.03)
    assert p["k1"] == pytest.approx(TRUE_LAW["k1"], rel=0.2)
    assert all(c["ok"] for c in fit["checks"])
    for e in fit["law"]["errors"][:-1]:
        assert e["test"]["mean_abs_rel_error_pct"] < 0.3  # noise is 0.1%


def test_too_few_fractions_fit_per_fraction_curves_and_say_why():
    fit = fit_law(noisy_curves([0.0, 0.02]))
    assert fit["law"] is None
    why = {n["what"]: n["why"] for n in fit["not_fitted"]}
    assert "needs >= 4" in why["joint law"] and "needs >= 3" in why["joint law"]
    assert [p["train"] is not None for p in fit["per_fraction"]] == [True, True]
    assert fit["per_fraction"][1]["gap"] is not None


def test_too_few_checkpoints_are_reported_per_fraction():
    fit = fit_law(noisy_curves([0.0, 0.02], tokens=TOKENS[:2]))
    assert all(p["train"] is None for p in fit["per_fraction"])
    assert any("fraction 0.02" in n["what"] and "needs 3" in n["why"] for n in fit["not_fitted"])


def test_holdout_fraction_must_be_measured():
    with pytest.raises(UsageError, match="no pretraining runs at that fraction"):
        fit_law(noisy_curves([0.0, 0.02]), holdout=0.1)


def test_finetuning_gain_power_law_and_constant_fallback():
    T = np.logspace(9, 11, 6)
    g = fit_gain(T, 5.0 * T**-0.1 + 0.02)
    assert g["kind"] == "power" and g["b"] == pytest.approx(-0.1, abs=0.01)
    np.testing.assert_allclose(gain_at(g, T), 5.0 * T**-0.1 + 0.02, rtol=1e-3)
    one = fit_gain(T[:1], np.array([0.3]))
    assert one["kind"] == "constant" and gain_at(one, 1e12) == pytest.approx(0.3) and "needs >= 3" in one["note"]


def test_a_curve_that_does_not_fall_is_fitted_as_a_constant():
    """NPT's domain loss often rises as the model specializes on general text: no power term."""
    rising = 6.2 + 0.1 * np.log(TOKENS / TOKENS[0]) / np.log(TOKENS[-1] / TOKENS[0])
    f = fit_power_floor(TOKENS, rising)
    assert f["flat"] and f["A"] == 0.0 and f["b"] == 0.0
    assert f["C"] == pytest.approx(rising.mean(), abs=0.06)
    assert not fit_power_floor(TOKENS, 350.0 * TOKENS**-0.31 + 1.42)["flat"]


def test_fraction_zero_is_fitted_to_the_test_loss():
    """Nothing trained on either split at d = 0, but their texts can differ: forecast the test loss."""
    from mixer.analysis.scaling import fit_fraction

    train = 350.0 * TOKENS**-0.31 + 1.42
    f = fit_fraction(Curve(0.0, TOKENS, train, train + 0.5))
    assert f["train"]["C"] == pytest.approx(1.92, abs=2e-3) and f["gap"] is None
    f = fit_fraction(Curve(0.05, TOKENS, train, train + 0.5))
    assert f["train"]["C"] == pytest.approx(1.42, abs=2e-3)


def test_the_gap_fit_keeps_negative_and_zero_gaps():
    """A gap of -0.1 nats (train sample harder than test) is -0.1, not a power law through noise."""
    from mixer.analysis.scaling import fit_power

    T = np.array([1e6, 2e6, 4e6])
    g = fit_power(T, np.array([-0.1, -0.1, -0.1]))
    assert g["g"] == pytest.approx(0.0, abs=1e-12) and g["G"] == pytest.approx(-0.1)  # u = 1: G = mean
    zero = fit_power(T, np.zeros(3))
    assert zero["G"] == 0.0 and zero["sse"] == 0.0
    # 0.02 (T / 1e6)^0.5 = 2e-5 T^0.5; one point below zero still counts (the old fit dropped it)
    g = fit_power(T, 2e-5 * T**0.5)
    assert g["g"] == pytest.approx(0.5) and g["G"] == pytest.approx(2e-5, rel=1e-9)
    mixed = fit_power(T, np.array([-0.02, 0.0, 0.02]))
    assert mixed["points"] == 3 and mixed["sse"] < 0.02**2 * 2


def test_fit_says_when_runs_measured_train_loss_on_different_samples(tmp_path):
    from mixer.analysis.fit import fit_inputs
    from mixer.formats.run import load_runs
    from runutil import write_run

    rows = lambda tag: [{"tokens": t, "domain_test_loss": 3.0, "domain_train_loss": 2.9, "general_val_loss": 3.0,  # noqa: E731
                         "domain_train_sample": tag} for t in (100, 200, 400)]
    a = write_run(tmp_path, "a", rows("500 docs/64100 tokens/aaaa"), fraction=0.0)
    b = write_run(tmp_path, "b", rows("500 docs/64100 tokens/aaaa"), fraction=0.05)
    assert not any("different samples" in n for n in fit_inputs(load_runs([a, b]))["notes"])
    c = write_run(tmp_path, "c", rows("8 docs/8192 tokens/bbbb"), fraction=0.1)
    notes = fit_inputs(load_runs([a, b, c]))["notes"]
    assert any("on 2 different samples" in n and "bbbb" in n for n in notes)
