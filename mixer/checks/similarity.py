"""How far apart two corpora are: Jensen-Shannon divergence of hashed n-gram distributions.

Paper 1 measured unigram, bigram and trigram JSD over hashed n-grams (2^20 bins) on about
1.5M tokens per side. Here: a seeded sample of whole documents from each token store (the
last one cut to hit the budget), n-grams that stay inside one document (a document's EOS
closes it), hashed into 2^20 bins, JSD in bits (0 = same distribution, 1 = disjoint).
"""

from __future__ import annotations

import numpy as np

from mixer.formats.store import Store, check_same_tokenizer

BINS = 2**20
ORDERS = (1, 2, 3)
SAMPLE_TOKENS = 1_500_000
_MULT = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit constants: multiplicative hashing
_MIX = np.uint64(0xBF58476D1CE4E5B9)


def sample_tokens(store: Store, split: str, n_tokens: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, document index per token) of documents taken in a seeded random order until
    `n_tokens` are collected; the whole split when it is smaller."""
    lengths = store.doc_lengths(split)
    starts = store.doc_starts(split).astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(lengths))
    cum = np.cumsum(lengths[order])
    k = int(np.searchsorted(cum, n_tokens)) + 1  # documents needed to reach the budget
    take, lens = order[:k], lengths[order[:k]].copy()
    if cum[min(k, len(cum)) - 1] > n_tokens:
        lens[-1] -= cum[k - 1] - n_tokens
    # All positions in one gather: for each token, its document's start plus its offset.
    doc = np.repeat(np.arange(len(take)), lens)
    offset = np.arange(len(doc)) - np.repeat(np.cumsum(lens) - lens, lens)
    idx = starts[take][doc] + offset
    return np.asarray(store.tokens(split)[idx], dtype=np.int64), doc


def ngram_histogram(tokens: np.ndarray, doc: np.ndarray, n: int, vocab_size: int, bins: int = BINS) -> np.ndarray:
    """Counts of n-grams per hash bin; n-grams spanning two documents are skipped."""
    m = len(tokens) - n + 1
    if m <= 0:
        return np.zeros(bins, dtype=np.int64)
    t = tokens.astype(np.uint64)
    if n == 1 and vocab_size <= bins:
        return np.bincount(tokens, minlength=bins)[:bins]  # exact: one bin per token id
    key = t[:m].copy()
    for j in range(1, n):
        key = key * _MULT + t[j : j + m] + np.uint64(1)  # wraps modulo 2^64 by design
    key ^= key >> np.uint64(31)
    key *= _MIX
    b = (key >> np.uint64(64 - int(np.log2(bins)))).astype(np.int64)
    inside = doc[:m] == doc[n - 1 :]
    return np.bincount(b[inside], minlength=bins)


def jsd_bits(p_counts: np.ndarray, q_counts: np.ndarray) -> float:
    """Jensen-Shannon divergence in bits between two count vectors (each normalised)."""
    p = p_counts / p_counts.sum()
    q = q_counts / q_counts.sum()
    m = 0.5 * (p + q)

    def kl(a: np.ndarray) -> float:
        nz = a > 0
        return float(np.sum(a[nz] * np.log2(a[nz] / m[nz])))

    return max(0.0, 0.5 * kl(p) + 0.5 * kl(q))


def similarity(a: Store, b: Store, split_a: str = "train", split_b: str = "train",
               n_tokens: int = SAMPLE_TOKENS, seed: int = 0, orders: tuple[int, ...] = ORDERS) -> dict:
    """Unigram/bigram/trigram JSD between samples of two stores that share a tokenizer."""
    check_same_tokenizer([a, b])
    ta, da = sample_tokens(a, split_a, n_tokens, seed)
    tb, db = sample_tokens(b, split_b, n_tokens, seed + 1)  # another draw: the stores may be one
    jsd = {f"{n}-gram": jsd_bits(ngram_histogram(ta, da, n, a.vocab_size), ngram_histogram(tb, db, n, a.vocab_size))
           for n in orders}
    side = lambda s, split, t, doc: {"store": str(s.path), "split": split, "tokens": int(len(t)),  # noqa: E731
                                     "documents": int(doc[-1] + 1) if len(doc) else 0}
    return {"a": side(a, split_a, ta, da), "b": side(b, split_b, tb, db),
            "jsd_bits": jsd, "bins": BINS, "seed": seed, "sample_tokens": n_tokens}
