"""Near-duplicate clusters, so that near-copies land on one side of the split.

MinHash signatures (64 values, see `signatures`) over the character 5-grams of the
normalized text (its UTF-8 bytes), LSH banding (32 bands x 2 rows), candidate pairs checked
against the full signature (estimated Jaccard >= 0.4), connected components (union-find)
of what remains.

Why characters and not words: near copies differ by characters (typos, OCR, edited notes
of a tune, a renamed identifier). One substituted character breaks every word n-gram over
its word, so with 5% of characters substituted a prose page kept ~25% of its word
3-grams and an ABC tune (long space-free bar lines) almost none: the word 3-gram MinHash
grouped 0-12% of such copies with their original and none at 10%. A character 5-gram
survives unless one of its 5 characters changed: a copy with 5% (10%, 20%) of its
characters substituted keeps 77% (59%, 33%) of them, Jaccard ~0.63 (0.42, 0.2) with its
original, less where the text repeats itself (Coq proofs: 0.40-0.59 at 5%).
Measured on the sample corpora (docs/benchmarks/audit.md, `bench/audit_recall.py`, 40 ABC
tunes, Coq files and documentation pages each): 97-100% of 5% copies and 57-90% of 10%
copies share a cluster with their original (word 3-grams: 0-12% and 0%). 20% copies score
lower than the nearest *unrelated* document of a typical tune (Jaccard 0.2-0.26 against
0.30), so no threshold groups them without grouping the corpus; the audit's text check
(mixer.checks.textmatch) is the net for what the split leaves apart. Clusters grow with
recall: the largest holds 78 of 12,947 tunes (was 7), 90 of 562 Coq files (57: short files
that are mostly the licence header) and 36 of 703 pages (4: perldelta release notes).

Banding: 2 rows per band, so a pair at Jaccard 0.4 is a candidate in some band with
probability 1-(1-0.4^2)^32 > 0.99 (4 rows x 16 bands, for 0.5 and word shingles before:
0.64). Buckets of 2-row bands gather many unrelated documents whose minimum in both bins
is a common 5-gram (Essen folk-song metadata, Coq's licence header); each bucket
contributes its first member paired with every other *and* each member paired with the
next (documents in corpus order), where variants of a tune sit side by side, without the
quadratic all-pairs.

Why not datatrove's `MinhashDedupSignature`: it hashes every n-gram with one Python call
and is built for removal at web scale (signatures bucketed on disk, later stages pick
which copy to drop). Here we keep every document and only need cluster labels for a
domain corpus, so one vectorized numpy pass per block of text does the shingling
(simple tabulation hashing of the 5 bytes: 5 table lookups and 4 XORs per byte), and one
`np.minimum.at` scatter gives every document's signature at once.
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.utils.batching import batched

from mixer.ingest.split import splitmix64

SHINGLE = 5  # bytes of normalized UTF-8 text per shingle
NUM_PERM = 64
BANDS = 32
MIN_SIMILARITY = 0.4
MINHASH_SEED = 0x6D69786572  # fixed: signatures from different tasks/runs must be comparable
VERSION = 2  # 1: word 3-grams, 16 bands x 4 rows, 0.5 (stores before this version)
CONFIG = {"version": VERSION, "shingles": f"character {SHINGLE}-grams of the normalized UTF-8 text",
          "signature": f"one-permutation MinHash, {NUM_PERM} bins, rotation densification", "permutations": NUM_PERM,
          "bands": BANDS, "rows": NUM_PERM // BANDS, "min_similarity": MIN_SIMILARITY,
          "candidates": "per band bucket: first member with each other, each member with the next",
          "largest": "components over max(2%, min(100, 20%)) of the documents re-clustered at 0.6, 0.8, 0.95, "
                     "then left apart"}

_EMPTY = np.uint32(0xFFFFFFFF)
_BLOCK = 1 << 22  # bytes hashed at a time: ~100 MB of temporaries whatever the documents' lengths
# simple tabulation hashing: one random 64-bit table per byte position of a shingle, and one
# per length for texts shorter than a shingle (so "ab" and "ab\0" never collide)
_TABLES = np.random.default_rng(MINHASH_SEED).integers(0, 2**64, size=(2 * SHINGLE, 256), dtype=np.uint64,
                                                       endpoint=False)


def shingles(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of the character shingles of normalized texts, and the text index of each.

    A shingle is SHINGLE consecutive bytes of a text's UTF-8 encoding (a multi-byte
    character is a few bytes: what matters is that equal texts give equal shingles). A
    non-empty text shorter than SHINGLE bytes gets one shingle: all of it.
    """
    hashes, doc = [], []
    for h, d in _blocks(texts):
        keep = d < len(texts)
        hashes.append(h[keep])
        doc.append(d[keep])
    if not hashes:
        return np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.int64)
    return np.concatenate(hashes), np.concatenate(doc).astype(np.int64)


def _blocks(texts: list[str]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(shingle hashes, text index) in blocks of at most _BLOCK shingles, so memory does not
    grow with a document's length. Windows that run past their text's end are kept, with
    the index len(texts): a scatter into a spare row costs less than compacting them out."""
    raw = [t.encode("utf-8") for t in texts]
    lengths = np.fromiter((len(r) for r in raw), dtype=np.int64, count=len(raw))
    buf = np.frombuffer(b"".join(raw), dtype=np.uint8)
    del raw
    ends = np.cumsum(lengths)
    starts = ends - lengths
    k, n = SHINGLE, len(texts)
    for a in range(0, max(len(buf) - k + 1, 0), _BLOCK):  # windows starting in [a, b)
        b = min(a + _BLOCK, len(buf) - k + 1)
        h = _TABLES[0][buf[a:b]]  # a uint8 index: numpy gathers it without widening
        for j in range(1, k):
            h ^= _TABLES[j][buf[a + j : b + j]]
        first, last = np.searchsorted(ends, [a, b - 1], side="right")
        span = np.minimum(ends[first : last + 1], b) - np.maximum(starts[first : last + 1], a)
        doc = np.repeat(np.arange(first, last + 1, dtype=np.int32), np.maximum(span, 0))
        for j in range(1, k):  # the last k-1 window starts of each text run past its end
            tail = ends[first : last + 1] - j
            tail = tail[(tail >= np.maximum(starts[first : last + 1], a)) & (tail < b)]
            doc[tail - a] = n
        yield h, doc
    short = np.flatnonzero((lengths > 0) & (lengths < k))
    if len(short):  # one shingle each: its bytes at their positions, tagged with its length
        h = _TABLES[k + lengths[short], 0]
        for j in range(k - 1):
            on = j < lengths[short]
            h[on] ^= _TABLES[j][buf[starts[short][on] + j]]
        yield h, short.astype(np.int32)


def signatures(texts: list[str]) -> np.ndarray:
    """MinHash signatures, shape (len(texts), NUM_PERM), uint32.

    One-permutation hashing (Li, Owen & Zhang 2012): one hash per shingle, its top bits
    pick one of NUM_PERM bins, the signature keeps each bin's minimum; empty bins (short
    texts) borrow from the next non-empty bin to the right, shifted by the distance
    (rotation densification, Shrivastava & Li 2014), so two texts agree on a bin with
    probability ~ their Jaccard similarity. Classic MinHash would cost NUM_PERM
    multiply-adds per shingle; this is one scatter-min.
    """
    n = len(texts)
    sig = np.full((n + 1) * NUM_PERM, _EMPTY, dtype=np.uint32)  # row n: windows past a text's end
    bits = NUM_PERM.bit_length() - 1
    for h, doc in _blocks(texts):
        at = (h >> np.uint64(64 - bits)).astype(np.intp)
        at += doc.astype(np.intp) * NUM_PERM
        h >>= np.uint64(32 - bits)
        values = h.astype(np.uint32)  # the 32 bits below the bin's
        values &= np.uint32(0xFFFFFFFE)  # < _EMPTY, always
        np.minimum.at(sig, at, values)
    return _densify(sig[: n * NUM_PERM].reshape(n, NUM_PERM))


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


def candidates(key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Candidate pairs of one band: in each bucket (documents sharing `key`), the first
    member with every other and each member with the next (documents in index order)."""
    n = len(key)
    order = np.argsort(key, kind="stable")
    k = key[order]
    head = np.r_[True, k[1:] != k[:-1]]
    del k
    first = order[np.maximum.accumulate(np.where(head, np.arange(n), 0))]
    star_src, star_dst = first[~head], order[~head]
    chain = ~head[1:] & ~head[:-1]  # consecutive members, the first pair already in the star
    return np.concatenate([star_src, order[:-1][chain]]), np.concatenate([star_dst, order[1:][chain]])


def similarity(sig: np.ndarray, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The share of bins on which each pair's signatures agree (their estimated Jaccard)."""
    out = np.zeros(len(src))
    for i in range(0, len(src), 1 << 16):  # chunks bound the (pairs x permutations) comparison
        a, b = np.asarray(sig[src[i : i + (1 << 16)]]), np.asarray(sig[dst[i : i + (1 << 16)]])
        out[i : i + (1 << 16)] = ((a == b) & (a != _EMPTY)).mean(axis=1)
    return out


def clusters(sig: np.ndarray, keys: Callable[[int], np.ndarray] | None = None) -> np.ndarray:
    """Cluster label per document (connected components of verified candidate pairs).

    `sig` may be a memory map: only the rows of candidate pairs are read from it once
    `keys(band)` (default: `band_key(sig, band)`) gives each band's keys. One band at a
    time is in memory and its candidates are verified before the next band's are made, so
    the peak is ~100 bytes per document (the band's keys, their sort order, the bucket
    pairs) plus the verified pairs, not the (documents x BANDS) keys or every band's
    unverified pairs. Components larger than `max_cluster(n)` are cut (`_cut`).
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(sig)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    edges, sims = np.zeros(0, dtype=np.int64), np.zeros(0)
    for b in range(BANDS):  # a loop over bands; each band is one vectorized sort
        src, dst = candidates(band_key(sig, b) if keys is None else keys(b))
        pairs = np.unique(np.minimum(src, dst).astype(np.int64) * n + np.maximum(src, dst))
        del src, dst
        pairs = pairs[~np.isin(pairs, edges)]  # verified in an earlier band
        sim = similarity(sig, pairs // n, pairs % n)
        ok = sim >= MIN_SIMILARITY
        edges, sims = np.concatenate([edges, pairs[ok]]), np.concatenate([sims, sim[ok]])
        del pairs, sim, ok

    def components(keep: np.ndarray) -> np.ndarray:
        e = edges[keep]
        graph = coo_matrix((np.ones(len(e), dtype=np.int8), (e // n, e % n)), shape=(n, n))
        return connected_components(graph, directed=False)[1].astype(np.int64)

    keep = np.ones(len(edges), dtype=bool)
    labels = components(keep)
    return _cut(labels, edges, sims, keep, components, max_cluster(n))


CUT_SIMILARITY = (0.6, 0.8, 0.95)


def max_cluster(n: int) -> int:
    """The largest component kept as one cluster: a fifth of a small corpus, 100 documents,
    2% of a large one (so one cluster never decides a held-out split of a few percent)."""
    return max(n // 50, min(100, n // 5))


def _cut(labels, edges, sims, keep, components, cap) -> np.ndarray:
    """Components larger than `cap` are re-clustered on their pairs of higher similarity
    (CUT_SIMILARITY), and what is still larger is left as single documents. Text over a
    small alphabet (DNA, a toy vocabulary of 10 words, templated records) shares most
    of its 5-grams between any two documents: one component would hold the corpus and the
    split would put it all on one side. Near copies proper agree on most of their bins and
    stay together; chains of looser links break."""
    n = len(labels)
    for t in CUT_SIMILARITY + (None,):
        big = np.bincount(labels) > cap
        if not big.any():
            return labels
        inside = big[labels[edges // n]]  # an edge's two ends share a component
        keep = keep & (~inside if t is None else ~inside | (sims >= t))
        labels = components(keep)
    return labels


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
