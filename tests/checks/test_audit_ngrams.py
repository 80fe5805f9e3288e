"""The n-gram engine against plain-Python references: hashes, spans, membership, masks."""

from __future__ import annotations

import numpy as np
import pytest

from mixer.checks.ngrams import KeySet, NgramHasher, segments, valid_windows


def reference_hash(h: NgramHasher, t: np.ndarray) -> int:
    inv = pow(0x9E3779B97F4A7C15, -1, 2**64)
    return sum(int(h.table[x]) * pow(inv, j, 2**64) for j, x in enumerate(t.tolist())) % 2**64


def test_window_and_span_hashes_equal_the_polynomial_and_ignore_position():
    rng = np.random.default_rng(0)
    h = NgramHasher(5, 1000)
    t = rng.integers(0, 1000, 300).astype(np.uint16)
    w = h.windows(t)
    assert len(w) == 296 and all(int(w[i]) == reference_hash(h, t[i : i + 5]) for i in (0, 17, 295))
    assert np.array_equal(h.windows(t[40:90]), w[40:86])  # same n-gram, same hash, wherever it is
    p = h.prefix(t)
    assert int(h.spans(p, np.array([3]), np.array([250]))[0]) == reference_hash(h, t[3:250])
    assert len(np.unique(w)) == len({tuple(t[i : i + 5]) for i in range(296)})  # no collisions here


def test_keyset_lookup_equals_isin_at_every_size():
    rng = np.random.default_rng(1)
    for size in (0, 1, 7, 5000, 200_000):
        keys = np.unique(rng.integers(0, 2**64, size, dtype=np.uint64, endpoint=False))
        ks = KeySet.build(keys)
        q = np.concatenate([keys[::3], rng.integers(0, 2**64, 50_000, dtype=np.uint64, endpoint=False), keys[-1:]])
        pos, idx = ks.lookup(q)
        assert np.array_equal(np.sort(pos), np.flatnonzero(np.isin(q, keys)))
        assert np.array_equal(keys[idx], q[pos])


def test_masks_and_segments_respect_eos_and_rows():
    t = np.array([1, 2, 3, 0, 4, 5, 6, 7, 0, 8, 9], dtype=np.uint16)
    eos = np.flatnonzero(t == 0)
    assert valid_windows(len(t), 2, eos).tolist() == [1, 1, 0, 0, 1, 1, 1, 0, 0, 1]
    # rows of 3: windows starting at the last token of a row are cut too
    assert valid_windows(len(t), 2, eos, 3).tolist() == [1, 1, 0, 0, 1, 0, 1, 0, 0, 1]
    starts, ends = segments(len(t), eos, 3)
    assert list(zip(starts.tolist(), ends.tolist())) == [(0, 3), (4, 6), (6, 8), (9, 11)]


@pytest.mark.parametrize("n", [4, 13, 40])
def test_distinct_at_least_equals_counting_each_window(n):
    """Windows of few distinct ids (runs, alternations, table borders) among random text:
    the early-exit count and, past 32 tokens, the sorted count agree with set sizes."""
    from mixer.checks.ngrams import distinct_at_least

    rng = np.random.default_rng(n)
    parts = []
    for _ in range(300):
        kind = rng.integers(4)
        length = int(rng.integers(1, 60))
        ids = rng.integers(0, 50_000, 1 + kind) if kind else rng.integers(0, 50_000, length)
        parts.append(ids[rng.integers(0, len(ids), length)].astype("<u2"))
    tokens = np.concatenate(parts)
    pos = np.sort(rng.choice(len(tokens) - n + 1, 2000, replace=False))
    for k in (1, 2, 4, 5):
        want = np.array([len(set(tokens[p : p + n].tolist())) >= k for p in pos])
        assert np.array_equal(distinct_at_least(tokens, pos, n, k), want), k
