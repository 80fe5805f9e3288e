import numpy as np
import pytest

from mixer.mixing.feistel import permute
from mixer.mixing.schedule import Placement, epoch_start_samples, solve_counts


@pytest.mark.parametrize("n", [1, 2, 3, 17, 1000, 4097])
def test_feistel_is_a_bijection(n):
    p = permute(np.arange(n), n, key=12345)
    assert np.array_equal(np.sort(p), np.arange(n))


def test_feistel_depends_on_key_and_is_deterministic():
    a = permute(np.arange(1000), 1000, 1)
    assert np.array_equal(a, permute(np.arange(1000), 1000, 1))
    assert not np.array_equal(a, permute(np.arange(1000), 1000, 2))


@pytest.mark.parametrize("n,nd,window", [(1000, 20, (0, 1)), (997, 331, (0, 1)), (5000, 1, (0, 1)),
                                         (1000, 100, (0.9, 1.0)), (64, 64, (0, 1)), (100, 0, (0, 1))])
def test_every_window_holds_the_fraction(n, nd, window):
    pl = Placement.make(n, nd, window, seed=7)
    is_dom, index = pl.positions(0, n)
    assert is_dom.sum() == nd
    assert not is_dom[: pl.w0].any() and not is_dom[pl.w1:].any()
    inside = is_dom[pl.w0:pl.w1].astype(np.int64)
    f = nd / pl.width
    c = np.concatenate([[0], np.cumsum(inside)])
    for w in range(1, pl.width + 1):
        assert np.abs((c[w:] - c[:-w]) - w * f).max() < 1
    # each source's samples are numbered 0, 1, 2, ... in mix order
    assert np.array_equal(index[is_dom], np.arange(nd))
    assert np.array_equal(index[~is_dom], np.arange(n - nd))


def test_positions_of_a_range_agree_with_the_whole():
    pl = Placement.make(10_000, 317, (0, 1), seed=3)
    whole = pl.positions(0, 10_000)
    part = pl.positions(4321, 6789)
    assert np.array_equal(whole[0][4321:6789], part[0]) and np.array_equal(whole[1][4321:6789], part[1])


def test_placement_scales_to_a_200B_run_without_per_sample_objects():
    n = 200_000_000_000 // 2048
    pl = Placement.make(n, round(0.02 * n), (0, 1), seed=0)
    assert int(pl.domain_before(n)) == round(0.02 * n)
    is_dom, _ = pl.positions(n - 100_000, n)
    assert abs(is_dom.mean() - 0.02) < 1 / 100_000 + 1e-9


def test_counts_any_two_fix_the_third():
    c = solve_counts(seq_len=100, domain_tokens=10_000, has_general=True, tokens=1_000_000, fraction=0.02)
    assert (c.samples, c.domain_samples) == (10_000, 200)
    c = solve_counts(seq_len=100, domain_tokens=10_000, has_general=True, tokens=1_000_000, epochs=2)
    assert c.domain_samples == round((2 * 10_000 - 1) / 100)
    c = solve_counts(seq_len=100, domain_tokens=10_000, has_general=False, epochs=3)
    assert c.general_samples == 0 and c.domain_samples == c.samples == round((30_000 - 1) / 100)


def test_epoch_start_samples():
    assert epoch_start_samples(3001, 1000, 100) == [0, 10, 20]  # 30 samples: none starts epoch 3
    assert epoch_start_samples(4001, 1000, 100) == [0, 10, 20, 30]
    assert epoch_start_samples(2501, 1000, 300) == [0, 4, 7]
