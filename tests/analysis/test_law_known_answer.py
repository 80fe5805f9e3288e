"""Known-answer tests of `mixer fit`: data made by the law itself, written out below by hand
(not the module's law()), at the laptop study's scale and at the paper's, 6 fractions of 12
checkpoints each; the law is fitted on 0-10% and predicts the held-out 20% curve.

- exact data: the held-out curve within 0.01% and every parameter to 4 significant figures;
- 0.5% multiplicative noise on every loss, 6 noise seeds per scale: the held-out curve
  within 5% mean error in at least 5 of the 6 (the old, unbounded fit missed by 4-17% at
  the paper's scale, and the repository's recovery test hid it behind 0.1% noise);
- a probe where NPT's domain loss rises with tokens while the SPT fractions follow the law:
  NPT is left out of the joint law, said so, and the held-out 20% is still predicted within 10%.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from mixer.analysis.scaling import Curve, fit_law

FRACTIONS = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2)
HELD_OUT = 0.2
NOISE = 0.005
SEEDS = range(6)

# Each scale: its checkpoints, the token unit the fit uses there (the power of ten at or below
# the first checkpoint), and a law with the paper's signs whose losses look like the scale's:
# a tiny model's ABC-music losses falling from ~6 to ~2 nats over 0.3-4M tokens, a 1B model's
# domain losses from ~2.8 to ~1.1 over 16-200B. In both the general data teaches the domain
# little (NPT's exponent is small against the domain's), as in a specialised study; the old,
# unbounded fit missed the held-out curve by 6-146% (laptop) and 12-833% (paper) on these.
# Both floors stay >= 0 at every fraction.
SCALES = {
    "laptop": (np.geomspace(3e5, 4e6, 12), 1e5,
               {"A_train": 4.0, "b_train_s": -1.2, "b_train_g": -0.15, "a1": 2.0, "a2": 0.8, "a3": -6.0,
                "b_gap_s": 2.5, "b_gap_g": -0.2, "k0": 1.2, "k1": 0.4, "k2": 0.004, "k3": 0.6}),
    "paper": (np.geomspace(1.6e10, 2e11, 12), 1e10,
              {"A_train": 1.5, "b_train_s": -1.0, "b_train_g": -0.1, "a1": 1.0, "a2": 0.75, "a3": -8.0,
               "b_gap_s": 2.0, "b_gap_g": -0.1, "k0": 0.9, "k1": 0.15, "k2": 0.003, "k3": 0.5}),
}


def by_hand(p: dict, tokens: np.ndarray, d: float, unit: float) -> tuple[np.ndarray, np.ndarray]:
    """(L_train, L_test), docs/science.md's equations term by term, T in units of `unit`."""
    T = tokens / unit
    floor = p["k0"] - p["k1"] * math.log(d + p["k2"]) - p["k3"] * d
    train = p["A_train"] * T ** (d * p["b_train_s"] + (1 - d) * p["b_train_g"]) + floor
    if d == 0:
        return train, train.copy()
    amplitude = p["a1"] * d ** p["a2"] * math.exp(p["a3"] * d)
    return train, train + amplitude * T ** (d * p["b_gap_s"] + (1 - d) * p["b_gap_g"])


def study(scale: str, noise: float, seed: int) -> list[Curve]:
    tokens, unit, p = SCALES[scale]
    rng = np.random.default_rng(seed)
    curves = []
    for d in FRACTIONS:
        train, test = by_hand(p, tokens, d, unit)
        curves.append(Curve(d, tokens, train * np.exp(rng.normal(0, noise, len(tokens))),
                            test * np.exp(rng.normal(0, noise, len(tokens)))))
    return curves


@pytest.mark.parametrize("scale", sorted(SCALES))
def test_exact_data_is_recovered(scale):
    tokens, unit, truth = SCALES[scale]
    fit = fit_law(study(scale, 0.0, 0), holdout=HELD_OUT)
    assert fit["units"]["token_unit"] == unit and fit["npt"]["enters"]
    assert fit["law"]["fractions"] == list(FRACTIONS[:-1]) and fit["law"]["converged"]
    assert fit["holdout"]["test"]["max_abs_rel_error_pct"] < 0.01
    assert fit["law"]["params"] == {k: pytest.approx(v, rel=1e-4, abs=1e-6) for k, v in truth.items()}
    assert all(c["ok"] for c in fit["checks"]) and not fit["law"]["at_bound"]
    assert fit["holdout"]["law_beats_baselines"]
    assert [w["kind"] for w in fit["warnings"]] == []


@pytest.mark.parametrize("scale", sorted(SCALES))
def test_the_held_out_curve_is_predicted_within_5pct_at_half_a_percent_noise(scale):
    errors = []
    for seed in SEEDS:
        fit = fit_law(study(scale, NOISE, seed), holdout=HELD_OUT)
        assert fit["law"]["starts"] >= 64
        errors.append(fit["holdout"]["test"]["mean_abs_rel_error_pct"])
    within = sum(e < 5.0 for e in errors)
    assert within >= 5, f"{scale}: held-out mean errors {['%.2f' % e for e in errors]}%"


def test_a_rising_npt_curve_is_left_out_and_the_held_out_curve_still_predicted():
    """General data that teaches nothing of the domain: NPT's test loss rises 6.0 -> 6.3 nats
    while every SPT fraction follows the laptop law."""
    tokens, unit, truth = SCALES["laptop"]
    curves = study("laptop", NOISE, 0)
    rising = 6.0 + 0.3 * np.log(tokens / tokens[0]) / np.log(tokens[-1] / tokens[0])
    curves[0] = Curve(0.0, tokens, rising - 0.1, rising)
    fit = fit_law(curves, holdout=HELD_OUT)
    assert not fit["npt"]["enters"] and fit["npt"]["slope_per_doubling"] > 0
    assert fit["law"]["fractions"] == [0.01, 0.02, 0.05, 0.1]
    assert any(w["kind"] == "npt" and "does not fall" in w["message"] for w in fit["warnings"])
    assert fit["holdout"]["test"]["mean_abs_rel_error_pct"] < 10.0
    npt = next(p for p in fit["per_fraction"] if p["fraction"] == 0)
    assert npt["train"]["flat"]  # reported beside the law, on its own
