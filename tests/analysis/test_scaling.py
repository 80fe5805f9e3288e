"""The overfitting law and its fit (appendix D): hand-evaluated values of each equation, then
recovery of parameters from data written out here term by term, not by the module's law().
(tests/analysis/test_law_known_answer.py holds the known-answer tests at 0.5% noise.)"""

import math

import numpy as np
import pytest

from mixer.analysis.scaling import (Curve, MIN_FRACTIONS, curve_test, fit_gain, fit_gap_stage, fit_law,
                                    fit_train_stage, floor_shape, gain_at, gap_shape, law, law_coefficients,
                                    onset_tokens)
from mixer.errors import UsageError

TOKENS = np.logspace(8.5, 11.3, 16)  # 316M .. 200B tokens, as the paper's checkpoints span
UNIT = 1e8  # the fit's token unit for these checkpoints: the power of ten at or below 316M
# The paper's signs: the gap exponent rises with d, the kernel peaks near 1.4% (a2 / -a3), the
# floor stays >= 0 at every fraction (C(1) = 0.1).
P = {"A_train": 1.6, "b_train_s": -0.6, "b_train_g": -0.3, "a1": 5.0, "a2": 0.75, "a3": -55.0,
     "b_gap_s": 2.0, "b_gap_g": -0.1, "k0": 1.0, "k1": 0.1, "k2": 0.002, "k3": 0.9}


def written_out(T: np.ndarray, d: float, p: dict = P) -> tuple[np.ndarray, np.ndarray]:
    """(L_train, L_test) from docs/science.md's equations, spelled out independently of law(),
    tokens in units of UNIT."""
    T = T / UNIT
    b_train = d * p["b_train_s"] + (1 - d) * p["b_train_g"]
    floor = p["k0"] - p["k1"] * math.log(d + p["k2"]) - p["k3"] * d
    train = p["A_train"] * T**b_train + floor
    if d == 0:
        return train, train.copy()
    a_gap = p["a1"] * d ** p["a2"] * math.exp(p["a3"] * d)
    return train, train + a_gap * T ** (d * p["b_gap_s"] + (1 - d) * p["b_gap_g"])


def noisy_curves(fractions, noise=0.002, seed=0, tokens=TOKENS):
    rng = np.random.default_rng(seed)
    out = []
    for d in fractions:
        train, test = written_out(tokens, d)
        out.append(Curve(d, tokens, train * np.exp(rng.normal(0, noise, len(tokens))),
                         test * np.exp(rng.normal(0, noise, len(tokens)))))
    return out


def test_law_at_one_point_by_hand():
    p = {"A_train": 100.0, "b_train_s": -0.6, "b_train_g": -0.4, "a1": 2.0, "a2": 1.0, "a3": -10.0,
         "b_gap_s": 1.0, "b_gap_g": -0.5, "k0": 1.0, "k1": 0.1, "k2": 0.01, "k3": 2.0}
    got = law(p, 1e6, 0.1)
    # b_train(0.1) = -0.42: 100 * 10^-2.52 = 0.30199517; C(0.1) = 1 - 0.1 ln 0.11 - 0.2 = 1.02072749
    assert float(got["train"]) == pytest.approx(1.32272266, rel=1e-8)
    # A_gap(0.1) = 2 * 0.1 * e^-1 = 0.07357589; b_gap(0.1) = -0.35: 10^-2.1 = 0.00794328
    assert float(got["gap"]) == pytest.approx(5.8443405e-4, rel=1e-7)
    assert float(got["test"]) == pytest.approx(1.32330710, rel=1e-8)
    # d = 0: 100 * 10^-2.4 + 1 - 0.1 ln 0.01, and no gap
    zero = law(p, 1e6, 0.0)
    assert float(zero["test"]) == float(zero["train"]) == pytest.approx(1.85862419, rel=1e-8)
    assert float(zero["gap"]) == 0.0
    c = law_coefficients(p, 0.1)
    assert (c["b"], c["g"]) == (pytest.approx(-0.42), pytest.approx(-0.35))
    assert float(curve_test(c, 1e6)) == pytest.approx(1.32330710, rel=1e-8)
    # In a token unit of 1e3, 1e9 tokens are T = 1e6: the same values.
    assert float(law(p, 1e9, 0.1, unit=1e3)["test"]) == pytest.approx(1.32330710, rel=1e-8)
    assert float(curve_test(law_coefficients(p, 0.1, unit=1e3), 1e9)) == pytest.approx(1.32330710, rel=1e-8)
    # onset: 4 T^-1 + 1 + T turns at T = 2, i.e. at 2,000 tokens in a unit of 1,000
    assert onset_tokens({"A": 4.0, "b": -1.0, "C": 1.0, "G": 1.0, "g": 1.0, "unit": 1e3}) == pytest.approx(2e3)


def test_onset_is_where_the_slope_turns_by_hand():
    # d/dT (4 T^-1 + 1 + T^1) = -4 / T^2 + 1 = 0 at T = 2
    assert onset_tokens({"A": 4.0, "b": -1.0, "C": 1.0, "G": 1.0, "g": 1.0}) == pytest.approx(2.0)
    # (A |b| / (G g))^(1 / (g - b)) = (3 * 0.5 / (0.5 * 0.25))^(1 / 0.75) = 12^(4/3) = 27.473
    assert onset_tokens({"A": 3.0, "b": -0.5, "C": 0.0, "G": 0.5, "g": 0.25}) == pytest.approx(27.47314, rel=1e-6)
    assert onset_tokens({"A": 3.0, "b": -0.5, "C": 0.0, "G": 0.5, "g": -0.1}) is None  # a shrinking gap
    assert onset_tokens({"A": 3.0, "b": -0.5, "C": 0.0, "G": -0.5, "g": 0.5}) is None  # a negative gap


def test_train_stage_recovers_a_power_law_with_a_floor_exactly():
    y = 350.0 * TOKENS**-0.31 + 1.42
    f = fit_train_stage([Curve(0.05, TOKENS, y, y + 0.1)])
    assert f["b_train_g"] == pytest.approx(-0.31, abs=1e-4) and f["C"][0.05] == pytest.approx(1.42, abs=2e-4)
    assert f["A_train"] == pytest.approx(350.0, rel=5e-3)
    assert fit_train_stage([Curve(0.05, TOKENS[:2], y[:2], y[:2])]) is None  # 2 points for 3 coefficients


def test_train_stage_shares_one_amplitude_and_an_exponent_line_across_fractions():
    """200 T^b(d) + C_d with b(d) = -0.3 + d (-0.8 + 0.3): one A, the exponent line, a floor each."""
    floors = {0.0: 2.0, 0.02: 1.9, 0.1: 1.7}
    curves = []
    for d, c in floors.items():
        y = 200.0 * TOKENS ** (-0.3 + d * (-0.8 + 0.3)) + c
        curves.append(Curve(d, TOKENS, np.full(len(TOKENS), np.nan) if d == 0 else y, y))
    f = fit_train_stage(curves)
    assert f["A_train"] == pytest.approx(200.0, rel=1e-3)
    assert (f["b_train_g"], f["b_train_s"]) == (pytest.approx(-0.3, abs=1e-5), pytest.approx(-0.8, abs=1e-3))
    assert f["C"] == {d: pytest.approx(c, abs=1e-5) for d, c in floors.items()}
    assert f["sse"] < 1e-10 and f["points"] == 48


def test_gap_stage_keeps_negative_amplitudes_and_shares_the_exponent_line():
    """Gaps A_d T^(0.1 + 20 d) at d = 1%, 2%, 3%, the last with a negative amplitude (its test split
    easier than the train sample): one exponent line, the amplitudes as they are."""
    amps = {0.01: 3e-4, 0.02: 1e-4, 0.03: -2e-5}
    curves = []
    for d, a in amps.items():
        train = np.full(len(TOKENS), 2.0)
        curves.append(Curve(d, TOKENS, train, train + a * TOKENS ** (0.1 + 20 * d)))
    g = fit_gap_stage(curves)
    assert (g["b_gap_g"], g["b_gap_s"]) == (pytest.approx(0.1, abs=1e-5), pytest.approx(20.1, abs=1e-3))
    assert g["A"] == {d: pytest.approx(a, rel=1e-4) for d, a in amps.items()}  # the negative one included


def test_floor_shape_check_by_hand_and_no_check_without_spare_fractions():
    d = [0.0, 0.001, 0.01, 0.02, 0.05]
    C = {x: 1.0 - 0.1 * math.log(x + 0.002) - 1.0 * x for x in d}
    # C(0) = 1 - 0.1 ln 0.002 = 1.62146081
    assert C[0.0] == pytest.approx(1.62146081, rel=1e-8)
    s = floor_shape(C)
    assert s["dof"] == 1 and s["rms_residual"] < 1e-7 and "note" not in s
    assert s["params"] == {"k0": pytest.approx(1.0, abs=1e-5), "k1": pytest.approx(0.1, abs=1e-6),
                           "k2": pytest.approx(0.002, rel=1e-4), "k3": pytest.approx(1.0, abs=1e-4)}
    bent = C | {0.02: C[0.02] + 0.05}
    assert floor_shape(bent)["rms_residual"] > 0.005  # a floor off the shape shows in the residuals
    four = floor_shape({x: C[x] for x in d[:4]})
    assert four["dof"] == 0 and "no check" in four["note"]


def test_gap_kernel_shape_check_by_hand():
    d = [0.001, 0.01, 0.02, 0.05]
    A = {x: 12.8 * x**0.75 * math.exp(-55 * x) for x in d}
    # 12.8 * 0.01^0.75 * e^-0.55 = 12.8 * 0.0316228 * 0.5769498 = 0.23353286
    assert A[0.01] == pytest.approx(0.23353286, rel=1e-7)
    s = gap_shape(A)
    assert s["dof"] == 1 and s["rms_residual"] < 1e-10
    assert s["params"] == {"a1": pytest.approx(12.8), "a2": pytest.approx(0.75), "a3": pytest.approx(-55.0)}
    neg = gap_shape(A | {0.05: -0.01})
    assert neg["not_positive"] == [0.05] and "cannot follow" in neg["note"] and neg["dof"] == 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_joint_fit_recovers_parameters_and_predicts_held_out_fraction(seed):
    """The paper's test: fit on 0-5%, predict the 10% curve, with 0.1% lognormal noise on every
    loss: the held-out curve is predicted within 1% on average, every checkpoint reported."""
    curves = noisy_curves([0.0, 0.001, 0.01, 0.02, 0.05, 0.1], noise=0.001, seed=seed)
    fit = fit_law(curves, holdout=0.1)
    assert fit["loss"] == "sse" and fit["law"]["loss"] == "sse" and fit["units"]["token_unit"] == UNIT
    assert fit["npt"]["enters"] and fit["law"]["starts"] >= 64 and fit["law"]["converged"]
    p = fit["law"]["params"]
    assert fit["law"]["fractions"] == [0.0, 0.001, 0.01, 0.02, 0.05]
    assert fit["stage1"]["fractions"] == [0.0, 0.001, 0.01, 0.02, 0.05]
    h = fit["holdout"]
    assert h["test"]["mean_abs_rel_error_pct"] < 1.0 and h["test"]["max_abs_rel_error_pct"] < 1.5
    assert h["train"]["mean_abs_rel_error_pct"] < 1.0
    assert len(h["curve"]) == len(TOKENS) == h["points"]
    assert h["curve"][3]["test_observed"] == pytest.approx(curves[-1].test[3])
    assert p["b_train_g"] == pytest.approx(P["b_train_g"], abs=0.01)
    assert p["b_train_s"] == pytest.approx(P["b_train_s"], abs=0.1)
    assert p["k1"] == pytest.approx(P["k1"], rel=0.2)
    assert all(c["ok"] for c in fit["checks"])
    floor, kernel = fit["shape_checks"]
    assert floor["dof"] == 1 and kernel["dof"] == 1 and floor["rms_residual"] < 0.005
    for e in fit["law"]["errors"][:-1]:
        assert e["test"]["mean_abs_rel_error_pct"] < 0.3  # noise is 0.1%


def test_the_joint_objective_is_half_the_squared_error_in_nats():
    curves = noisy_curves([0.0, 0.001, 0.01, 0.02, 0.05], noise=0.001)
    fit = fit_law(curves)
    p = fit["law"]["params"]
    sse = 0.0
    for c in curves:
        pred = law(p, c.tokens, c.fraction, UNIT)
        sse += ((pred["test"] - c.test) ** 2).sum() + (((pred["train"] - c.train) ** 2).sum() if c.fraction else 0)
    assert fit["law"]["objective"] == pytest.approx(0.5 * sse, rel=1e-9)
    assert fit["law"]["points"] == 5 * 16 + 4 * 16  # NPT's train points are not in it


def test_npt_train_points_do_not_move_the_joint_law():
    """At d = 0 the law has no gap and stage 1 fits the test loss: a train split 0.5 nats easier
    (different texts) must not pull the joint fit."""
    curves = noisy_curves([0.0, 0.001, 0.01, 0.02, 0.05], noise=0.001)
    npt = curves[0]
    shifted = [Curve(0.0, npt.tokens, npt.test - 0.5, npt.test)] + curves[1:]
    a, b = fit_law(curves)["law"]["params"], fit_law(shifted)["law"]["params"]
    assert a == b


def test_huber_on_log_residuals_is_an_option():
    curves = noisy_curves([0.0, 0.001, 0.01, 0.02, 0.05], noise=0.001)
    fit = fit_law(curves, loss="huber-log")
    assert fit["loss"] == "huber-log" and fit["law"]["params"]["b_train_g"] == pytest.approx(-0.3, abs=0.02)
    with pytest.raises(UsageError, match="--loss 'l1'"):
        fit_law(curves, loss="l1")


def test_three_fractions_above_zero_are_not_enough_for_the_joint_law():
    """The kernel's 3 coefficients need a spare fraction above 0 (NPT has no gap)."""
    assert MIN_FRACTIONS == 4
    fit = fit_law(noisy_curves([0.0, 0.01, 0.02, 0.05]))
    assert fit["law"] is None
    why = {n["what"]: n["why"] for n in fit["not_fitted"]}["joint law"]
    assert "3 fraction(s) > 0 with a fitted train-test gap" in why and "needs >= 4" in why
    assert any(w["kind"] == "not fitted" and "no joint law" in w["message"] for w in fit["warnings"])
    assert [p["train"] is not None for p in fit["per_fraction"]] == [True] * 4
    assert [s["dof"] for s in fit["shape_checks"]] == [0, 0]  # reported, and said to check nothing


def test_too_few_fractions_fit_per_fraction_curves_and_say_why():
    fit = fit_law(noisy_curves([0.0, 0.02]))
    assert fit["law"] is None
    why = {n["what"]: n["why"] for n in fit["not_fitted"]}
    assert "needs >= 4" in why["joint law"]
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
    f = fit_train_stage([Curve(0.0, TOKENS, rising, rising)])
    assert f["flat"] and f["A_train"] == 0.0 and f["b_train_g"] == 0.0
    assert f["C"][0.0] == pytest.approx(rising.mean())


def test_fraction_zero_is_fitted_to_the_test_loss():
    """Nothing trained on either split at d = 0, but their texts can differ: forecast the test loss."""
    train = 350.0 * TOKENS**-0.31 + 1.42
    f = fit_law([Curve(0.0, TOKENS, train, train + 0.5), Curve(0.05, TOKENS, train, train + 0.5)])
    zero, five = f["per_fraction"]
    assert zero["train"]["C"] == pytest.approx(1.92, abs=2e-3) and zero["gap"] is None
    assert five["train"]["C"] == pytest.approx(1.42, abs=2e-3)
    assert five["gap"]["G"] == pytest.approx(0.5, rel=1e-6) and five["gap"]["g"] == pytest.approx(0.0, abs=1e-6)


def test_the_gap_fit_keeps_negative_and_zero_gaps():
    """A gap of -0.1 nats (train sample harder than test) is -0.1, not a power law through the
    positive noise (the old fit kept only gaps > 0)."""
    T = np.array([1e6, 2e6, 4e6])

    def gap_of(values) -> dict:
        return fit_gap_stage([Curve(0.05, T, np.full(3, 2.0), 2.0 + np.asarray(values, float))])

    g = gap_of([-0.1, -0.1, -0.1])
    assert g["b_gap_g"] == pytest.approx(0.0, abs=1e-9) and g["A"][0.05] == pytest.approx(-0.1)  # u = 1: the mean
    zero = gap_of([0.0, 0.0, 0.0])
    assert zero["A"][0.05] == 0.0 and zero["sse"] == 0.0
    # 0.02 (T / 1e6)^0.5 = 2e-5 T^0.5
    g = gap_of(2e-5 * T**0.5)
    assert g["b_gap_g"] == pytest.approx(0.5, abs=1e-6) and g["A"][0.05] == pytest.approx(2e-5, rel=1e-5)
    mixed = gap_of([-0.02, 0.0, 0.02])
    assert mixed["points"] == 3 and mixed["sse"] <= 0.02**2 * 2


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


def test_holdout_onset_observed_and_predicted_by_hand():
    """At d = 0.2 the law's test loss A T^b + c + a T^g turns at T* = (A |b| / (a g))^(1 / (g - b))
    (b = -0.36, g = 0.32; a = 5 * 0.2^0.75 * e^-11; T in units of 1e8 tokens): the prediction finds it on its grid, and the
    observed onset is the lowest measured checkpoint unless that is the last one."""
    from mixer.analysis.holdout import holdout_onset

    d = 0.2
    b, g = d * -0.6 + (1 - d) * -0.3, d * 2.0 + (1 - d) * -0.1
    a = 5.0 * d**0.75 * math.exp(-55 * d)
    t_star = UNIT * (1.6 * -b / (a * g)) ** (1 / (g - b))
    tokens = np.geomspace(t_star / 30, t_star * 30, 9)  # the middle checkpoint sits on T*
    train, test = written_out(tokens, d)
    on = holdout_onset(P, Curve(d, tokens, train, test), UNIT)
    assert on["predicted_tokens"] == pytest.approx(t_star, rel=0.01)
    assert on["observed_tokens"] == pytest.approx(tokens[4])
    early = tokens[:4]  # every checkpoint before T*: none observed; predicted still found (grid to 10x)
    tr, te = written_out(early, d)
    on = holdout_onset(P, Curve(d, early, tr, te), UNIT)
    assert on["observed_tokens"] is None and on["predicted_tokens"] == pytest.approx(t_star, rel=0.01)
