"""What `mixer fit` tells a reader besides the parameters: bounds reached, the naive baselines
of a held-out curve, the parts of the law's error, NPT left out, warnings in every output,
one point per checkpoint, and fit.png's axis."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from mixer.analysis import joint_fit
from mixer.analysis.holdout import error_decomposition, naive_baselines
from mixer.analysis.plots import fit_axis
from mixer.analysis.scaling import Curve, fit_law, npt_decision

T = np.array([1e6, 2e6, 4e6, 8e6])


def test_naive_baselines_by_hand():
    """copy: 0.1's curve as it is; linear: 0.05 and 0.1 extended to 0.2 (twice 0.1's step)."""
    five = Curve(0.05, T, T * np.nan, np.array([3.0, 2.8, 2.6, 2.5]))
    ten = Curve(0.1, T, T * np.nan, np.array([2.8, 2.6, 2.4, 2.3]))
    held = Curve(0.2, T, T * np.nan, np.array([2.4, 2.2, 2.0, 2.0]))
    copy, linear = naive_baselines([ten, five], held)
    # copy: |2.8 - 2.4| / 2.4, |2.6 - 2.2| / 2.2, |2.4 - 2.0| / 2.0, |2.3 - 2.0| / 2.0
    assert copy["name"] == "copy" and copy["mean_abs_rel_error_pct"] == pytest.approx(
        100 * np.mean([0.4 / 2.4, 0.4 / 2.2, 0.4 / 2.0, 0.3 / 2.0]))
    # linear: 2.8 - 2 * 0.2 = 2.4, 2.2, 2.0, 2.1: errors 0, 0, 0, 5%
    assert linear["name"] == "linear" and linear["mean_abs_rel_error_pct"] == pytest.approx(1.25)
    assert linear["max_abs_rel_error_pct"] == pytest.approx(5.0)
    # seeds pooled: a curve measured twice per checkpoint is compared by its mean
    twice = Curve(0.1, np.repeat(T, 2), np.repeat(T, 2) * np.nan, np.repeat(ten.test, 2) + np.tile([0.1, -0.1], 4))
    assert naive_baselines([twice], held)[0]["mean_abs_rel_error_pct"] == pytest.approx(copy["mean_abs_rel_error_pct"])


def test_the_error_decomposition_adds_up():
    p = {"A_train": 2.0, "b_train_s": -0.5, "b_train_g": -0.5, "a1": 1.0, "a2": 1.0, "a3": 0.0, "b_gap_s": 0.0,
         "b_gap_g": 0.0, "k0": 1.0, "k1": 0.0, "k2": 1.0, "k3": 0.0}
    # law at d = 0.2, unit 1e6: train 2 T^-0.5 + 1, gap 0.2 at every T
    held = Curve(0.2, T, 2 * (T / 1e6) ** -0.5 + 0.9, 2 * (T / 1e6) ** -0.5 + 0.9 + 0.25)
    stage1 = {"train": {"C": 0.95}}
    dec = error_decomposition(p, 1e6, held, stage1)
    assert dec["train_nats"] == pytest.approx(0.1) and dec["gap_nats"] == pytest.approx(0.2 - 0.25)
    assert dec["test_nats"] == pytest.approx(dec["train_nats"] + dec["gap_nats"])
    assert dec["floor_nats"] == pytest.approx(0.05) and dec["train_rest_nats"] == pytest.approx(0.05)


def test_npt_enters_only_when_its_test_loss_falls():
    falling = Curve(0.0, T, T * np.nan, 5.0 + (T / 1e6) ** -0.3)
    assert npt_decision(falling)["enters"] and npt_decision(falling)["slope_per_doubling"] < 0
    flat = Curve(0.0, T, T * np.nan, np.array([5.0, 5.01, 4.99, 5.0]))
    out = npt_decision(flat)
    assert not out["enters"] and "does not fall" in out["why"] and "per doubling" in out["why"]
    assert not npt_decision(Curve(0.0, T[:2], T[:2] * np.nan, np.array([5.0, 4.0])))["enters"]  # too few points


def test_a_parameter_pushed_to_its_bound_is_reported_and_warned():
    """Data whose gap kernel rises like d^7 (a2's bound is 5): the fit ends on the bound, and says so."""
    d_all = (0.0, 0.01, 0.02, 0.05, 0.1)
    p = {"A_train": 3.0, "b_train_s": -0.9, "b_train_g": -0.3, "a1": 1e6, "a2": 7.0, "a3": -10.0, "b_gap_s": 0.5,
         "b_gap_g": -0.1, "k0": 1.0, "k1": 0.2, "k2": 0.01, "k3": 0.5}
    curves = []
    for d in d_all:
        t = np.geomspace(1e6, 1.6e7, 10)
        x = t / 1e6
        train = p["A_train"] * x ** (d * p["b_train_s"] + (1 - d) * p["b_train_g"]) + p["k0"] - p["k1"] * math.log(
            d + p["k2"]) - p["k3"] * d
        gap = p["a1"] * d ** p["a2"] * math.exp(p["a3"] * d) * x ** (d * p["b_gap_s"] + (1 - d) * p["b_gap_g"]) if d else 0
        curves.append(Curve(d, t, train, train + gap))
    fit = fit_law(curves)
    assert fit["law"]["params"]["a2"] == pytest.approx(5.0)
    bound = [b for b in fit["law"]["at_bound"] if b["param"] == "a2"]
    assert bound and bound[0]["side"] == "upper"
    assert any(w["kind"] == "bound" and w["message"].startswith("a2 = 5") for w in fit["warnings"])


def test_at_bounds_names_the_side():
    theta = (joint_fit._LO + joint_fit._HI) / 2
    theta[joint_fit.THETA.index("k3")] = 0.0
    theta[joint_fit.THETA.index("k2")] = math.log(1.0)
    got = {(b["param"], b["side"]) for b in joint_fit.at_bounds(theta)}
    assert got == {("k3", "lower"), ("k2", "upper")}


def test_the_fit_axis_keeps_observations_and_marks_what_it_clips():
    obs = np.array([2.0, 3.0])
    assert fit_axis(obs, [np.array([2.2, 2.8])]) == pytest.approx((1.95, 3.05))
    bottom, top = fit_axis(obs, [np.array([-15.0, 2.5])])  # the first published fit's floor
    assert bottom == pytest.approx(1.5 - 0.05 * 1.5) and top == pytest.approx(3.0 + 0.05 * 1.5)


def test_mixer_fit_prints_warnings_first_and_dedupes_the_final_checkpoint(tmp_path, capsys):
    from runutil import write_run

    from mixer.analysis.fit import fit_inputs
    from mixer.cli import main
    from mixer.formats.run import load_runs

    runs = []
    for d in (0.0, 0.01, 0.02, 0.05, 0.1):
        rows = []
        for t in (1e6, 2e6, 4e6, 8e6):
            rising = 6.0 + 0.05 * math.log2(t / 1e6)  # NPT learns nothing of the domain
            test = rising if d == 0 else 2.0 + (t / 1e6) ** -0.4 * (1 - d) + 0.01 * d * (t / 1e6) ** 0.3
            train = rising - 0.1 if d == 0 else 2.0 + (t / 1e6) ** -0.4 * (1 - d)
            rows.append((t, test, train, 3.0))
        rows.append(dict(checkpoint="final", step=99, tokens=int(8e6), domain_test_loss=rows[-1][1],
                         domain_train_loss=rows[-1][2], general_val_loss=3.0))
        runs.append(write_run(tmp_path, f"pre-{d:g}", rows, fraction=d))
    curves = fit_inputs(load_runs(runs))["curves"]
    assert [len(c.tokens) for c in curves] == [4] * 5  # `final` repeats the last step: one point
    try:
        main(["fit", *map(str, runs), "--out", str(tmp_path / "fit")])
    except SystemExit as e:
        assert e.code in (0, None)
    out = capsys.readouterr().out.splitlines()
    assert out[1].startswith("WARNING (") and "[npt]" in out[2]
    fit = json.loads((tmp_path / "fit" / "fit.json").read_text())
    assert fit["format"] == "mixer-fit/2" and fit["units"]["token_unit"] == 1e6
    assert not fit["npt"]["enters"] and fit["law"]["fractions"] == [0.01, 0.02, 0.05, 0.1]
    assert fit["warnings"][0]["kind"] == "npt"


def test_a_forecast_repeats_the_fit_warnings_and_takes_npt_outside_the_law_from_its_own_curve():
    import sys

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    import test_law_known_answer as known

    from mixer.analysis.forecast import forecast

    tokens, unit, _ = known.SCALES["laptop"]
    curves = known.study("laptop", 0.0, 0)
    rising = 6.0 + 0.3 * np.log(tokens / tokens[0]) / np.log(tokens[-1] / tokens[0])
    curves[0] = Curve(0.0, tokens, rising - 0.1, rising)
    fit = fit_law(curves)
    r = forecast(fit, 2_000_000, fractions=[0.0, 0.05])
    assert r["warnings"][0].startswith("fit: NPT's domain test loss does not fall")
    assert any("fraction 0 (NPT) is outside the law" in w for w in r["warnings"])
    npt = next(x for x in r["fractions"] if x["fraction"] == 0.0)
    assert npt["test_loss"] == pytest.approx(rising.mean(), abs=1e-6)  # its own (flat) curve, not the law's


def test_no_floor_split_against_a_stage1_floor_that_is_not_a_loss():
    p = {"A_train": 2.0, "b_train_s": -0.5, "b_train_g": -0.5, "a1": 1.0, "a2": 1.0, "a3": 0.0, "b_gap_s": 0.0,
         "b_gap_g": 0.0, "k0": 1.0, "k1": 0.0, "k2": 1.0, "k3": 0.0}
    held = Curve(0.2, T, 2 * (T / 1e6) ** -0.5 + 0.9, 2 * (T / 1e6) ** -0.5 + 1.15)
    dec = error_decomposition(p, 1e6, held, {"train": {"C": -678.0}})
    assert dec["floor_nats"] is None and "not a loss" in dec["note"]
    assert dec["test_nats"] == pytest.approx(dec["train_nats"] + dec["gap_nats"])
