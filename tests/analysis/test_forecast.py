"""Forecasts from fit.json, on a law whose values are evaluated by hand: losses at the budget,
onsets, the recommendation, the regime, and the limits of what was measured."""

import numpy as np
import pytest

from mixer.analysis.forecast import MAX_SPT_EPOCHS, forecast, format_forecast, plot_forecast
from mixer.analysis.scaling import Curve, fit_law
from mixer.errors import MixerError, UsageError

# L_train = 100 T^-0.5 + 1 at every d (k1 = k3 = 0), L_gap = 1e-4 d T^0.5: at T = 1e6 the train
# loss is 1.1 and the gap 0.1 d; the test loss turns up at T* = (100 * 0.5 / (1e-4 d * 0.5)) = 1e6 / d.
HAND = {"A_train": 100.0, "b_train_s": -0.5, "b_train_g": -0.5, "a1": 1e-4, "a2": 1.0, "a3": 0.0,
        "b_gap_s": 0.5, "b_gap_g": 0.5, "k0": 1.0, "k1": 0.0, "k2": 1.0, "k3": 0.0}
MEASURED = [1e5, 1e7]


def gain(d: float, c: float, kind: str = "power", points: int = 3) -> dict:
    """A gain that is c at every token count (a = 0), measured over MEASURED."""
    return {"fraction": d, "a": 0.0, "b": 0.0, "c": c, "kind": kind, "points": points, "token_range": MEASURED}


def hand_fit(gains: list[dict], fractions=(0.0, 0.01, 0.02, 0.05, 0.1), domain_tokens: int = 1_000_000) -> dict:
    return {"format": "mixer-fit/1", "model": "tiny", "domain": "music", "domain_tokens": domain_tokens,
            "data": {"token_range": MEASURED}, "per_fraction": [], "finetune_gain": gains, "not_fitted": [],
            "law": {"params": HAND, "fractions": list(fractions),
                    "errors": [{"fraction": d, "test": {"mean_abs_rel_error_pct": 0.1}} for d in fractions]}}


def rows_of(result: dict) -> dict:
    return {r["fraction"]: r for r in result["fractions"]}


def test_losses_at_the_budget_onsets_and_recommendation_by_hand():
    r = forecast(hand_fit([gain(0.0, 0.4), gain(0.1, 0.2)]), 1_000_000, fractions=[0.0, 0.05, 0.1])
    rows = rows_of(r)
    # test loss 1.1 + 0.1 d; the gain is linear in d between 0.4 at d = 0 and 0.2 at d = 0.1
    assert [rows[d]["test_loss"] for d in (0.0, 0.05, 0.1)] == [pytest.approx(1.1), pytest.approx(1.105),
                                                                 pytest.approx(1.11)]
    assert [rows[d]["finetune_gain"] for d in (0.0, 0.05, 0.1)] == [pytest.approx(0.4), pytest.approx(0.3),
                                                                     pytest.approx(0.2)]
    assert [rows[d]["post_ft_loss"] for d in (0.0, 0.05, 0.1)] == [pytest.approx(0.7), pytest.approx(0.805),
                                                                    pytest.approx(0.91)]
    assert rows[0.1]["overfit_onset_tokens"] == pytest.approx(1e7) and rows[0.05]["overfit_onset_tokens"] == pytest.approx(2e7)
    assert rows[0.0]["overfit_onset_tokens"] is None and not rows[0.1]["overfits_within_budget"]
    assert rows[0.05]["epochs"] == pytest.approx(0.05)  # 1e6 tokens x 0.05 / 1e6 domain tokens
    assert r["recommended"]["fraction"] == 0.0 and r["recommended"]["margin"] == pytest.approx(0.105)
    assert r["recommended"]["resolved"] and r["regime"]["name"] == "finetune-only"
    assert "Recommended fraction: 0" in format_forecast(r)


def test_the_forecast_grid_stays_on_the_measured_tokens():
    """The old grid ran down to 1% of the budget, where a power law reads 35-86 nats."""
    r = forecast(hand_fit([gain(0.0, 0.4), gain(0.1, 0.2)]), 1_000_000)
    T = r["curves"]["tokens"]
    assert T[0] == pytest.approx(1e5) and T[-1] == pytest.approx(1e7) and r["curves"]["measured_tokens"] == MEASURED
    assert max(max(c["test_loss"]) for c in r["curves"]["per_fraction"].values()) < 1.5  # 100 / sqrt(1e5) + 1 + gap


def test_a_budget_beyond_the_data_needs_extrapolate_and_says_how_far():
    fit = hand_fit([gain(0.0, 0.4), gain(0.1, 0.2)])
    with pytest.raises(UsageError, match=r"100x the largest measured checkpoint .* --extrapolate"):
        forecast(fit, 1_000_000_000)
    with pytest.raises(UsageError, match="10x below the smallest"):
        forecast(fit, 10_000)
    r = forecast(fit, 1_000_000_000, extrapolate=True)
    assert r["extrapolated"] and r["extrapolation"]["tokens"] == pytest.approx(100.0)
    assert any("extrapolated in tokens" in w and "100x" in w for w in r["warnings"])
    assert r["curves"]["tokens"][-1] == pytest.approx(1e9)


def test_fractions_outside_the_fitted_ones_need_extrapolate():
    fit = hand_fit([gain(0.0, 0.4), gain(0.05, 0.2)], fractions=(0.0, 0.001, 0.01, 0.02, 0.05))
    r = forecast(fit, 1_000_000)
    assert max(rows_of(r)) == 0.05  # the default grid's 0.1 is left out, and said so
    assert any("0.1 of the default grid are outside the fitted 0..0.05" in w for w in r["warnings"])
    with pytest.raises(UsageError, match=r"fraction\(s\) 0.1: outside the fractions the law was fitted on"):
        forecast(fit, 1_000_000, fractions=[0.02, 0.1])
    r = forecast(fit, 1_000_000, fractions=[0.02, 0.1], extrapolate=True)
    assert r["extrapolation"]["fractions"] == [{"fraction": 0.1, "beyond": "2x the largest fitted fraction 0.05"}]
    assert any("held" in str(x) or x.get("held_from") == 0.05 for x in r["extrapolation"]["finetune_gain"])


def test_the_finetuning_gain_is_not_held_flat_outside_the_measured_fractions():
    """Gains measured at 2% and 10% say nothing about 0%: no post-FT loss there (the old code
    silently used 2%'s); with --extrapolate it is held from 2% and said."""
    fit = hand_fit([gain(0.02, 0.3), gain(0.1, 0.2)])
    r = forecast(fit, 1_000_000, fractions=[0.0, 0.05])
    rows = rows_of(r)
    assert rows[0.0]["post_ft_loss"] is None and rows[0.0]["finetune_gain"] is None
    assert rows[0.05]["finetune_gain"] == pytest.approx(0.3 + (0.05 - 0.02) / 0.08 * (0.2 - 0.3))
    assert r["recommended"]["fraction"] == 0.05
    assert any("no finetuning gain measured at or around fraction 0" in w for w in r["warnings"])
    assert r["curves"]["per_fraction"]["0"]["post_ft_loss"] is None
    held = forecast(fit, 1_000_000, fractions=[0.0, 0.05], extrapolate=True)
    assert rows_of(held)[0.0]["finetune_gain"] == pytest.approx(0.3)
    assert {"fraction": 0.0, "held_from": 0.02} in held["extrapolation"]["finetune_gain"]


def test_a_gain_from_fewer_than_three_checkpoints_is_said_to_be_constant():
    r = forecast(hand_fit([gain(0.0, 0.4, "constant", 1), gain(0.1, 0.2)]), 1_000_000)
    assert any("fraction 0 from 1 finetuned checkpoint(s): taken as a constant 0.4" in w for w in r["warnings"])


def test_gains_are_not_forecast_outside_the_tokens_they_were_measured_at():
    g = [dict(gain(0.0, 0.4), token_range=[1e6, 1e6]), dict(gain(0.1, 0.2), token_range=[1e6, 1e6])]
    r = forecast(hand_fit(g), 1_000_000)
    post = r["curves"]["per_fraction"]["0"]["post_ft_loss"]
    T = r["curves"]["tokens"]
    assert all(p is None for t, p in zip(T, post) if abs(t / 1e6 - 1) > 1e-6)
    assert rows_of(r)[0.0]["post_ft_loss"] == pytest.approx(0.7)  # the budget is where they were measured


def test_a_difference_smaller_than_the_fits_error_is_no_ranking():
    # post-FT 1.1 - 0.4 = 0.7 at 0 and 1.105 - 0.4 = 0.705 at 0.05: a margin of 0.005 nats, against
    # the fit's 1% error on the best fraction's 1.1-nat loss (0.011 nats)
    fit = hand_fit([gain(0.0, 0.4), gain(0.05, 0.4)], fractions=(0.0, 0.001, 0.01, 0.02, 0.05))
    for e in fit["law"]["errors"]:
        e["test"]["mean_abs_rel_error_pct"] = 1.0
    r = forecast(fit, 1_000_000, fractions=[0.0, 0.05])
    assert r["recommended"]["fraction"] == 0.0 and r["recommended"]["margin"] == pytest.approx(0.005)
    assert r["recommended"]["fit_error"] == pytest.approx(0.011) and r["recommended"]["resolved"] is False
    assert any("cannot rank these fractions" in w for w in r["warnings"])


@pytest.mark.parametrize("domain_tokens,regime", [(10_000, "spt"), (100, "late-window"), (1, "too-small")])
def test_data_size_regime_by_hand_with_mixers_thresholds(domain_tokens, regime):
    """Gains 0 at d = 0 and 0.3 at 0.1: post-FT 1.1, 0.955, 0.81, so 0.1 wins; at 1e6 tokens it
    repeats 1e5 / D epochs: 10 (SPT), 1,000 (a window: 30 x 100 / 1e5 = 3% of it), 1e5 (too small)."""
    r = forecast(hand_fit([gain(0.0, 0.0), gain(0.1, 0.3)]), 1_000_000, fractions=[0.0, 0.05, 0.1],
                 domain_tokens=domain_tokens)
    assert r["recommended"]["fraction"] == 0.1 and r["regime"]["name"] == regime
    assert r["regime"]["epochs"] == pytest.approx(1e5 / domain_tokens)
    assert "mixer's" in r["regime"]["message"] and r["thresholds"]["source"].startswith("mixer")
    if regime == "late-window":
        assert r["regime"]["window_fraction"] == pytest.approx(0.03) and r["regime"]["epochs"] > MAX_SPT_EPOCHS
        assert "--window 0.9:1" in r["regime"]["message"]


def test_onset_inside_the_budget_is_warned():
    r = forecast(hand_fit([gain(0.0, 0.0), gain(0.1, 0.3)]), 20_000_000, fractions=[0.1], extrapolate=True)
    assert r["fractions"][0]["overfits_within_budget"]  # T* = 1e7 for d = 0.1
    assert any("starts rising at 10M" in w for w in r["warnings"])


def test_without_the_joint_law_only_measured_fractions_are_forecast(tmp_path):
    T = np.logspace(8, 9, 4)
    curves = [Curve(d, T, 100 * T**-0.3 + 2 - d, 100 * T**-0.3 + 2 - d + 0.01 * d * (T / 1e8) ** 0.2)
              for d in (0.0, 0.02)]
    fit = fit_law(curves) | {"data": {"token_range": [1e8, 1e9]}}
    assert fit["law"] is None
    r = forecast(fit, 10**9)
    assert r["source"] == "per-fraction curves" and [x["fraction"] for x in r["fractions"]] == [0.0, 0.02]
    assert any("no joint law" in w for w in r["warnings"])
    r = forecast(fit, 10**9, fractions=[0.02, 0.05])
    assert [x["fraction"] for x in r["fractions"]] == [0.02]
    assert any("unmeasured fraction(s) 0.05" in w for w in r["warnings"])
    with pytest.raises(MixerError, match="none of the fractions 0.05 was measured"):
        forecast(fit, 10**9, fractions=[0.05])
    plot_forecast(r, str(tmp_path / "f.png"))
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"


def test_the_forecast_plot_keeps_to_the_forecast_values(tmp_path):
    import matplotlib.image

    r = forecast(hand_fit([gain(0.0, 0.4), gain(0.1, 0.2)]), 1_000_000)
    plot_forecast(r, tmp_path / "f.png")
    assert matplotlib.image.imread(tmp_path / "f.png").shape[0] > 100


def test_a_fit_without_curves_is_refused():
    fit = {"law": None, "per_fraction": [{"fraction": 0.0, "train": None, "gap": None}],
           "not_fitted": [{"what": "joint law", "why": "1 fraction(s)"}]}
    with pytest.raises(MixerError, match="nothing to forecast with"):
        forecast(fit, 10**9)


def test_load_fit_names_the_file(tmp_path):
    from mixer.formats.fit import load_fit

    with pytest.raises(MixerError, match="no such fit file") as e:
        load_fit(tmp_path / "fit.json")
    assert e.value.exit_code == 2
    (tmp_path / "fit.json").write_text("{bad")
    with pytest.raises(MixerError, match="fit.json: not valid JSON"):
        load_fit(tmp_path / "fit.json")
    (tmp_path / "fit.json").write_text('{"format": "mixer-report/1"}')
    with pytest.raises(MixerError, match="not a mixer-fit/2 file"):
        load_fit(tmp_path / "fit.json")
    (tmp_path / "fit.json").write_text('{"format": "mixer-fit/1", "law": null}')
    assert load_fit(tmp_path / "fit.json")["law"] is None


def test_fractions_in_percent_are_refused():
    with pytest.raises(UsageError, match="fractions as fractions"):
        forecast(hand_fit([]), 10**6, fractions=[2.0])
