"""The paper's metrics on hand-built numbers with known answers."""

import math

import pytest

from mixer.analysis.metrics import (best_loss, compute_multiplier, forgetting, gap_closed, mean_spread, pareto_front,
                           relative_gain, tokens_to_reach)


def test_best_loss_ignores_missing_and_nan():
    assert best_loss([2.5, None, 2.1, float("nan"), 2.3]) == 2.1
    assert best_loss([None]) is None


def test_relative_gain_percent():
    assert relative_gain(2.0, 1.96) == pytest.approx(2.0)
    assert relative_gain(2.0, 2.1) == pytest.approx(-5.0)  # SPT hurt: negative, not hidden


def test_compute_multiplier_interpolates_in_log_tokens():
    # SPT goes 2.1 -> 1.9 between 100 and 400 tokens; 2.0 is halfway in log tokens: 200.
    m = compute_multiplier(400, 2.0, [100, 400], [2.1, 1.9])
    assert m.bound == "=" and m.value == pytest.approx(2.0)
    # A quarter of the way down from 2.1 -> 100 * 4**0.25
    t, how = tokens_to_reach([100, 400], [2.1, 1.9], 2.05)
    assert how == "=" and t == pytest.approx(100 * 4**0.25)
    assert str(m) == "2x"


def test_compute_multiplier_uses_first_crossing_and_bounds():
    # Unsorted input; a later bump above the target does not move the first crossing.
    m = compute_multiplier(1000, 2.0, [1000, 10, 100], [1.95, 2.2, 1.99])
    assert m.bound == "=" and m.value == pytest.approx(1000 / 10 ** (1 + 0.2 / 0.21))
    already = compute_multiplier(1000, 2.0, [100, 1000], [1.9, 1.8])
    assert (already.bound, already.value) == (">=", pytest.approx(10.0))
    never = compute_multiplier(1000, 2.0, [100, 1000], [2.3, 2.1])
    assert (never.bound, never.value) == ("<", pytest.approx(1.0))
    assert str(never) == "<1x"


def test_gap_closed_and_forgetting():
    assert gap_closed(2.0, 1.9, 1.8) == pytest.approx(50.0)
    assert gap_closed(2.0, 1.7, 1.8) == pytest.approx(150.0)  # small SPT beats large NPT
    assert forgetting(3.0, 3.25) == pytest.approx(0.25)


def test_mean_spread_over_seeds():
    s = mean_spread([1.0, 2.0, 3.0])
    assert (s.mean, s.std, s.n) == (2.0, 1.0, 3)
    one = mean_spread([1.5])
    assert one.std is None and str(one) == "1.5"
    assert math.isclose(mean_spread([1.0, None, 3.0]).mean, 2.0)


def test_pareto_front():
    xs, ys = [1.0, 2.0, 1.5, 3.0, 0.5], [3.0, 1.0, 2.0, 0.5, 4.0]
    assert pareto_front(xs, ys) == [4, 0, 2, 1, 3]
    assert pareto_front([1.0, 2.0], [1.0, 2.0]) == [0]
