"""Forecasts from fit.json: onset, recommendation, regime, and graceful refusal."""

import numpy as np
import pytest

from mixer.errors import MixerError
from mixer.analysis.forecast import MAX_SPT_EPOCHS, forecast, format_forecast, plot_forecast
from mixer.analysis.scaling import curve_test, fit_law, law_coefficients
from runutil import TRUE_LAW

B = 10**9


def law_fit(gain=None, domain_tokens=300_000_000):
    return {"format": "mixer-fit/1", "model": "tiny", "domain": "music", "domain_tokens": domain_tokens,
            "data": {"token_range": [3e8, 2e11]}, "law": {"params": TRUE_LAW, "fractions": [0, 0.001, 0.01, 0.02, 0.05]},
            "per_fraction": [], "finetune_gain": gain or [], "not_fitted": []}


GAIN = [{"fraction": 0.0, "a": 0.0, "b": 0.0, "c": 0.40, "kind": "constant", "points": 1},
        {"fraction": 0.1, "a": 0.0, "b": 0.0, "c": 0.20, "kind": "constant", "points": 1}]


def test_recommended_fraction_is_the_lowest_post_ft_loss_and_onsets_are_closed_form():
    r = forecast(law_fit(GAIN), 200 * B, fractions=[0.0, 0.01, 0.05, 0.1])
    rows = {row["fraction"]: row for row in r["fractions"]}
    post = {d: curve_test(law_coefficients(TRUE_LAW, d), 200 * B) - (0.40 - 2.0 * d) for d in rows}
    for d, row in rows.items():  # the gain is interpolated linearly in d between 0 and 0.1
        assert row["post_ft_loss"] == pytest.approx(float(post[d]))
    assert r["recommended"]["fraction"] == min(post, key=post.get)
    assert rows[0.01]["overfit_onset_tokens"] is None and not rows[0.01]["overfits_within_budget"]
    assert 1e11 < rows[0.1]["overfit_onset_tokens"] < 1e12
    assert rows[0.05]["epochs"] == pytest.approx(200 * B * 0.05 / 300e6)
    assert len(r["curves"]["tokens"]) == len(r["curves"]["per_fraction"]["0.1"]["test_loss"])
    assert "Recommended fraction" in format_forecast(r)


def test_onset_inside_the_budget_is_warned():
    r = forecast(law_fit(), 1000 * B, fractions=[0.1])
    assert r["fractions"][0]["overfits_within_budget"]
    assert any("starts rising" in w for w in r["warnings"])
    assert any("no finetuning gain" in w for w in r["warnings"])


@pytest.mark.parametrize("domain_tokens,regime", [(300_000_000, "spt"), (3_000_000, "late-window"), (30_000, "too-small")])
def test_data_size_regime(domain_tokens, regime):
    r = forecast(law_fit(GAIN), 200 * B, fractions=[0.01], domain_tokens=domain_tokens)
    assert r["regime"]["name"] == regime
    if regime == "late-window":
        assert "--window 0.9:1" in r["regime"]["message"] and r["regime"]["epochs"] > MAX_SPT_EPOCHS


def test_without_the_joint_law_only_measured_fractions_are_forecast(tmp_path):
    T = np.logspace(8, 9, 4)
    from mixer.analysis.scaling import Curve, law

    curves = [Curve(d, T, law(TRUE_LAW, T, d)["train"], law(TRUE_LAW, T, d)["test"]) for d in (0.0, 0.02)]
    fit = fit_law(curves) | {"data": {"token_range": [1e8, 1e9]}}
    assert fit["law"] is None
    r = forecast(fit, 2 * B)
    assert r["source"] == "per-fraction curves" and [x["fraction"] for x in r["fractions"]] == [0.0, 0.02]
    assert any("no joint law" in w for w in r["warnings"])
    r = forecast(fit, 2 * B, fractions=[0.02, 0.05])
    assert [x["fraction"] for x in r["fractions"]] == [0.02]
    assert any("unmeasured fraction(s) 0.05" in w for w in r["warnings"])
    with pytest.raises(MixerError, match="none of the fractions 0.05 was measured"):
        forecast(fit, 2 * B, fractions=[0.05])
    plot_forecast(r, str(tmp_path / "f.png"))
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"


def test_a_fit_without_curves_is_refused():
    fit = {"law": None, "per_fraction": [{"fraction": 0.0, "train": None, "gap": None}],
           "not_fitted": [{"what": "joint law", "why": "1 fraction(s)"}]}
    with pytest.raises(MixerError, match="nothing to forecast with"):
        forecast(fit, B)


def test_load_fit_names_the_file(tmp_path):
    from mixer.formats.fit import load_fit

    with pytest.raises(MixerError, match="no such fit file") as e:
        load_fit(tmp_path / "fit.json")
    assert e.value.exit_code == 2
    (tmp_path / "fit.json").write_text("{bad")
    with pytest.raises(MixerError, match="fit.json: not valid JSON"):
        load_fit(tmp_path / "fit.json")
    (tmp_path / "fit.json").write_text('{"format": "mixer-report/1"}')
    with pytest.raises(MixerError, match="not a mixer-fit/1 file"):
        load_fit(tmp_path / "fit.json")
    (tmp_path / "fit.json").write_text('{"format": "mixer-fit/1", "law": null}')
    assert load_fit(tmp_path / "fit.json")["law"] is None


def test_fractions_in_percent_are_refused():
    from mixer.errors import UsageError

    with pytest.raises(UsageError, match="fractions as fractions"):
        forecast(law_fit(), B, fractions=[2.0])
