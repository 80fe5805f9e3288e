"""The audit's evidence arithmetic against brute force: training-document counts from
signatures, the buckets each signature holds, per-document token coverage, runs of
consecutive n-gram positions."""

from __future__ import annotations

import numpy as np
import pytest

from mixer.checks.evidence import _cover, _runs, set_bits, train_docs


def test_train_docs_counts_exactly_up_to_one_and_closely_beyond():
    rng = np.random.default_rng(0)
    sig = np.zeros(400, dtype=np.uint64)
    truth = rng.integers(0, 120, len(sig))
    for i, t in enumerate(truth):  # t documents with random hashes, one bit each
        for h in rng.integers(0, 2**64, t, dtype=np.uint64):
            sig[i] |= np.uint64(1) << (h >> np.uint64(58))
    est = train_docs(sig)
    assert np.array_equal(est[truth <= 1], truth[truth <= 1])
    mid = (truth >= 5) & (truth <= 60)
    assert np.median(np.abs(est[mid] - truth[mid]) / truth[mid]) < 0.15
    assert train_docs(np.array([2**64 - 1], dtype=np.uint64))[0] == 266


def test_set_bits_lists_every_bit_of_every_signature():
    rng = np.random.default_rng(2)
    sig = np.zeros(300, dtype=np.uint64)
    for i, t in enumerate(rng.integers(0, 8, len(sig))):  # 0-7 bits each, and the extremes
        for b in rng.choice(64, t, replace=False):
            sig[i] |= np.uint64(1) << np.uint64(b)
    sig[:3] = [2**63, 2**64 - 1, 1]
    which, bit = set_bits(sig)
    got = sorted(zip(which.tolist(), bit.tolist()))
    want = sorted((i, b) for i, x in enumerate(sig.tolist()) for b in range(64) if x >> b & 1)
    assert got == want
    assert [len(a) for a in set_bits(np.zeros(5, dtype=np.uint64))] == [0, 0]


@pytest.mark.parametrize("density", [0.0, 0.02, 0.3, 0.95])
@pytest.mark.parametrize("width", [1, 4, 13])
def test_coverage_equals_brute_force_at_every_density(density, width):
    rng = np.random.default_rng(int(density * 100) + width)
    size = 1_000
    pos = np.flatnonzero(rng.random(size) < density)  # sorted, up to the last token: windows past the end are cut
    brute = np.zeros(size, dtype=bool)
    for p in pos:
        brute[p : p + width] = True
    assert np.array_equal(_cover(pos, width, size), brute)


def test_coverage_and_runs_equal_brute_force():
    rng = np.random.default_rng(1)
    n, size = 5, 400
    starts = np.array([0, 100, 130, 300])
    ends = np.array([100, 130, 300, 400])
    doc_of = np.searchsorted(starts, np.arange(size), side="right") - 1
    pos = np.sort(rng.choice(size, 120, replace=False))
    pos = pos[pos + n <= ends[doc_of[pos]]]  # windows inside their document
    doc = doc_of[pos]
    cov = _cover(pos, n, size)
    brute = np.zeros(size, dtype=bool)
    for p in pos:
        brute[p : p + n] = True
    assert np.array_equal(cov, brute)
    first, last = _runs(pos, doc)
    runs = [(int(pos[a]), int(pos[b])) for a, b in zip(first, last)]
    want, cur = [], None
    for p, d in zip(pos.tolist(), doc.tolist()):
        if cur and p == cur[1] + 1 and d == cur[2]:
            cur[1] = p
        else:
            if cur:
                want.append((cur[0], cur[1]))
            cur = [p, p, d]
    want.append((cur[0], cur[1]))
    assert runs == want


def test_aligned_share_counts_text_held_in_order_and_both_counting_paths_agree(monkeypatch):
    """The text check's measure: a copy scores 1, a copy with a paragraph inserted or a few
    characters changed stays high, the same words in another order and unrelated text score
    low; the dense count and the sorted count pick the same bands."""
    import random

    from mixer.checks import textmatch

    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(400)]
    text = " ".join(rng.choice(words) for _ in range(600))
    shuffled = text.split(" ")
    rng.shuffle(shuffled)
    edited = list(text)
    for i in range(5, len(edited), 40):  # 2.5% of the characters: only they are not held
        edited[i] = "#"
    middle = len(text) // 2
    cases = {"copy": (text, 1.0, 1.0), "inserted": (text[:middle] + " an inserted paragraph " * 20 + text[middle:],
                                                     0.97, 1.0),
             "edited": ("".join(edited), 0.97, 0.98), "reordered": (" ".join(shuffled), 0.0, 0.35),
             "unrelated": (" ".join(rng.choice(words[:200]) for _ in range(600)), 0.0, 0.35)}
    for name, (other, lo, hi) in cases.items():
        dense = textmatch.aligned_share(text.encode(), other.encode())
        monkeypatch.setattr(textmatch, "DENSE", 0)
        sorted_ = textmatch.aligned_share(text.encode(), other.encode())
        monkeypatch.undo()
        assert dense == sorted_ and lo <= dense <= hi, (name, dense, sorted_)
    assert textmatch.aligned_share(b"", b"abc") == 0.0 and textmatch.aligned_share(b"ab", b"ab") == 1.0
