"""Near-duplicate clusters, so that near-copies land on one side of the split.

MinHash signatures (64 values, see `signatures`) over word 3-gram shingles of the
normalized text, LSH banding (16 bands x 4 rows), candidate pairs checked against the
full signature (estimated Jaccard >= 0.5), connected components (union-find) of what
remains. A copy with ~5% of its words changed keeps ~75% of its 3-grams (Jaccard ~0.74),
is a candidate in some band with probability 1-(1-0.74^4)^16 > 0.99, and passes the check.

Why not datatrove's `MinhashDedupSignature`: it hashes every n-gram with one Python call
and is built for removal at web scale (signatures bucketed on disk, later stages pick
which copy to drop). Here we keep every document and only need cluster labels for a
domain corpus, so one vectorized numpy pass per batch of documents does the shingling
(a polynomial prefix hash over the UTF-8 bytes: any substring's hash in O(1)), and one
`np.minimum.at` scatter gives every document's signature at once.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.utils.batching import batched

from mixer.ingest.split import splitmix64

NGRAM = 3
NUM_PERM = 64
BANDS = 16
MIN_SIMILARITY = 0.5
MINHASH_SEED = 0x6D69786572  # fixed: signatures from different tasks/runs must be comparable
CONFIG = {"shingles": f"word {NGRAM}-grams", "signature": f"one-permutation MinHash, {NUM_PERM} bins, rotation "
          "densification", "permutations": NUM_PERM, "bands": BANDS,
          "rows": NUM_PERM // BANDS, "min_similarity": MIN_SIMILARITY}

_EMPTY = np.uint32(0xFFFFFFFF)
_OFFSETS = 4096  # byte positions within a word get distinct multipliers up to here (then wrap)
_POW = np.cumprod(np.full(_OFFSETS, 0x100000001B3, dtype=np.uint64))  # wraps mod 2**64, as intended
_GRAM = np.array([0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9], dtype=np.uint64)[:NGRAM]


def shingles(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of the word n-grams of normalized texts, and the text index of each.

    A word's hash is a polynomial over its bytes (position counted from the word's start,
    so equal words hash equally anywhere), read off one cumulative sum over the batch;
    an n-gram's hash combines its words' hashes. A text with fewer than NGRAM words gets
    one shingle: all of its words.
    """
    buf = np.frombuffer("\n".join(texts).encode("utf-8"), dtype=np.uint8)
    n = len(buf)
    sep = (buf == 32) | (buf == 10)  # normalized texts hold single spaces; "\n" separates texts
    is_start = ~sep & np.r_[True, sep[:-1]]
    starts = np.flatnonzero(is_start)
    ends = np.flatnonzero(~sep & np.r_[sep[1:], True]) + 1
    word_doc = np.searchsorted(np.flatnonzero(buf == 10), starts)
    with np.errstate(over="ignore"):
        pos = np.arange(n, dtype=np.int64)
        offset = pos - np.maximum.accumulate(np.where(is_start, pos, 0))
        np.bitwise_and(offset, _OFFSETS - 1, out=offset)
        coeff = _POW[offset]
        coeff *= buf + np.uint8(1)  # +1: no byte adds 0 (0xFF, which would wrap, never occurs in UTF-8)
        prefix = np.zeros(n + 1, dtype=np.uint64)
        np.cumsum(coeff, out=prefix[1:])
        words = splitmix64((prefix[ends] - prefix[starts]) ^ np.uint64(MINHASH_SEED))
        # n-gram at word i: sum_k words[i+k] * _GRAM[k], counting only words of the same text
        grams = np.zeros(len(words), dtype=np.uint64)
        for k in range(NGRAM):
            same = np.zeros(len(words), dtype=bool)
            same[: len(words) - k] = word_doc[k:] == word_doc[: len(words) - k]
            shifted = np.zeros(len(words), dtype=np.uint64)
            shifted[: len(words) - k] = words[k:]
            grams += np.where(same, shifted, np.uint64(0)) * _GRAM[k]
        counts = np.bincount(word_doc, minlength=len(texts))
        first_word = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        full = np.zeros(len(words), dtype=bool)
        full[: max(0, len(words) - NGRAM + 1)] = word_doc[NGRAM - 1 :] == word_doc[: max(0, len(words) - NGRAM + 1)]
        short = np.flatnonzero((counts > 0) & (counts < NGRAM))
        full[first_word[short]] = True
    keep = np.flatnonzero(full)  # already grouped by text, in order
    return splitmix64(grams[keep]), word_doc[keep]


def signatures(texts: list[str]) -> np.ndarray:
    """MinHash signatures, shape (len(texts), NUM_PERM), uint32.

    One-permutation hashing (Li, Owen & Zhang 2012): one hash per shingle, its top bits
    pick one of NUM_PERM bins, the signature keeps each bin's minimum; empty bins (short
    texts) borrow from the next non-empty bin to the right, shifted by the distance
    (rotation densification, Shrivastava & Li 2014), so two texts agree on a bin with
    probability ~ their Jaccard similarity. Classic MinHash (NUM_PERM multiply-adds per
    shingle) cost 4.7 s on the 12M-token sample corpora, more than the tokenizing; this
    is one scatter-min.
    """
    hashes, doc = shingles(texts)
    n = len(texts)
    sig = np.full(n * NUM_PERM, _EMPTY, dtype=np.uint32)
    bits = NUM_PERM.bit_length() - 1
    bins = (hashes >> np.uint64(64 - bits)).astype(np.int64)
    values = ((hashes >> np.uint64(32 - bits)) & np.uint64(0xFFFFFFFE)).astype(np.uint32)  # < _EMPTY, always
    np.minimum.at(sig, doc * NUM_PERM + bins, values)
    return _densify(sig.reshape(n, NUM_PERM))


def _densify(sig: np.ndarray) -> np.ndarray:
    empty = sig == _EMPTY
    if not empty.any():
        return sig
    twice = np.concatenate([sig, sig], axis=1)
    pos = np.where(np.concatenate([~empty, ~empty], axis=1), np.arange(2 * NUM_PERM), 2 * NUM_PERM)
    nxt = np.minimum.accumulate(pos[:, ::-1], axis=1)[:, ::-1][:, :NUM_PERM]  # next non-empty bin, wrapping
    has = nxt < 2 * NUM_PERM  # False only for texts without shingles
    rows = np.arange(len(sig))[:, None]
    dist = (nxt - np.arange(NUM_PERM)[None, :]).astype(np.uint32)
    with np.errstate(over="ignore"):
        filled = twice[rows, np.minimum(nxt, 2 * NUM_PERM - 1)] + dist * np.uint32(0x9E3779B1)
    out = np.where(empty & has, filled & np.uint32(0xFFFFFFFE), sig)
    return out.astype(np.uint32)


def band_key(sig: np.ndarray, band: int) -> np.ndarray:
    """One 64-bit key per document for one band: documents sharing a key are candidate pairs."""
    rows = NUM_PERM // BANDS
    key = np.full(len(sig), splitmix64(np.array([band], dtype=np.uint64))[0], dtype=np.uint64)
    for r in range(rows):
        key = splitmix64(key ^ np.asarray(sig[:, band * rows + r], dtype=np.uint64))
    return key


def band_keys(sig: np.ndarray) -> np.ndarray:
    """Every band's keys, shape (documents, BANDS)."""
    return np.stack([band_key(sig, b) for b in range(BANDS)], axis=1) if len(sig) else np.zeros((0, BANDS), np.uint64)


def clusters(sig: np.ndarray, keys: Callable[[int], np.ndarray] | None = None) -> np.ndarray:
    """Cluster label per document (connected components of verified candidate pairs).

    `sig` may be a memory map: only the rows of candidate pairs are read from it once
    `keys(band)` (default: `band_key(sig, band)`) gives each band's keys. One band at a time
    is in memory, so the peak is ~60 bytes per document (the keys, their sort order and
    the star of each bucket) plus the candidate pairs, not the (documents x BANDS) keys.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(sig)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    src, dst = [], []
    for b in range(BANDS):  # a loop over bands; each band is one vectorized sort
        key = band_key(sig, b) if keys is None else keys(b)
        order = np.argsort(key, kind="stable")
        k = key[order]
        del key
        head = np.r_[True, k[1:] != k[:-1]]
        del k
        first = order[np.maximum.accumulate(np.where(head, np.arange(n), 0))]
        src.append(first[~head])
        dst.append(order[~head])
        del order, first, head
    pairs = np.unique(np.concatenate(src).astype(np.int64) * n + np.concatenate(dst))
    src, dst = pairs // n, pairs % n
    keep = np.zeros(len(pairs), dtype=bool)
    for i in range(0, len(pairs), 1 << 16):  # chunks bound the (pairs x permutations) comparison
        a, b = np.asarray(sig[src[i : i + (1 << 16)]]), np.asarray(sig[dst[i : i + (1 << 16)]])
        same = (a == b) & (a != _EMPTY)
        keep[i : i + (1 << 16)] = same.mean(axis=1) >= MIN_SIMILARITY
    graph = coo_matrix((np.ones(int(keep.sum()), dtype=np.int8), (src[keep], dst[keep])), shape=(n, n))
    return connected_components(graph, directed=False)[1].astype(np.int64)


class NearDupSignatures(PipelineStep):
    """Attach a MinHash signature (`metadata["minhash"]`) computed from `metadata["norm"]`."""

    name = "minhash signatures"
    type = "🫂 - DEDUP"

    def __init__(self, batch_size: int = 512) -> None:
        super().__init__()
        self.batch_size = batch_size

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        for batch in batched(data, self.batch_size):
            with self.track_time(unit="batch"):
                sig = signatures([d.metadata.pop("norm") for d in batch])
                for d, row in zip(batch, sig):
                    d.metadata["minhash"] = row
            yield from batch
