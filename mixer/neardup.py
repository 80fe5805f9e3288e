"""Near-duplicate clusters, so that near-copies land on one side of the split.

MinHash over word 3-gram shingles of the normalized text, LSH banding (16 bands x 4
rows of a 64-value signature), candidate pairs checked against the full signature
(estimated Jaccard >= 0.5), connected components (union-find) of what remains. A copy
with ~5% of its words changed keeps ~75% of its 3-grams (Jaccard ~0.74), is a candidate
in some band with probability 1-(1-0.74^4)^16 > 0.99, and passes the check. 64
permutations, not 128: the signature is the cost that competes with tokenizing.

Why not datatrove's `MinhashDedupSignature`: it hashes every n-gram with one Python call
and is built for removal at web scale (signatures bucketed on disk, later stages pick
which copy to drop). Here we keep every document and only need cluster labels for a
domain corpus, so one vectorized numpy pass per batch of documents does the shingling
(a polynomial prefix hash over the UTF-8 bytes: any substring's hash in O(1)), and
`np.minimum.reduceat` takes every document's minimum per permutation at once.
"""

from __future__ import annotations

import numpy as np
from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.utils.batching import batched

from .split import splitmix64

NGRAM = 3
NUM_PERM = 64
BANDS = 16
MIN_SIMILARITY = 0.5
MINHASH_SEED = 0x6D69786572  # fixed: signatures from different tasks/runs must be comparable
CONFIG = {"shingles": f"word {NGRAM}-grams", "permutations": NUM_PERM, "bands": BANDS,
          "rows": NUM_PERM // BANDS, "min_similarity": MIN_SIMILARITY}

_P = np.uint64(0x100000001B3)  # odd, so invertible mod 2**64
_P_INV = np.uint64(pow(int(_P), -1, 1 << 64))
_rng = np.random.default_rng(MINHASH_SEED)
_A = _rng.integers(1, 1 << 63, size=NUM_PERM, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
_B = _rng.integers(0, 1 << 63, size=NUM_PERM, dtype=np.uint64)
_EMPTY = np.uint32(0xFFFFFFFF)


def _powers(base: np.uint64, n: int) -> np.ndarray:
    out = np.ones(n, dtype=np.uint64)
    if n > 1:
        out[1:] = np.cumprod(np.full(n - 1, base, dtype=np.uint64))  # wraps mod 2**64, as intended
    return out


def shingles(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of the word n-grams of normalized texts, and the text index of each.

    A text with fewer than NGRAM words gets one shingle: all of it.
    """
    buf = np.frombuffer("\n".join(texts).encode("utf-8"), dtype=np.uint8)
    n = len(buf)
    sep = (buf == 32) | (buf == 10)  # normalized texts hold single spaces; "\n" separates texts
    starts = np.flatnonzero(~sep & np.r_[True, sep[:-1]])
    ends = np.flatnonzero(~sep & np.r_[sep[1:], True]) + 1
    word_doc = np.searchsorted(np.flatnonzero(buf == 10), starts)
    with np.errstate(over="ignore"):
        prefix = np.zeros(n + 1, dtype=np.uint64)
        np.cumsum((buf.astype(np.uint64) + np.uint64(1)) * _powers(_P, n), out=prefix[1:])

        def substring(s: np.ndarray, e: np.ndarray) -> np.ndarray:
            # hash of buf[s:e] as if it started at 0, so equal substrings hash equally anywhere
            return splitmix64((prefix[e] - prefix[s]) * _powers(_P_INV, n)[s] if n else prefix[:0])

        counts = np.bincount(word_doc, minlength=len(texts))
        first_word = np.concatenate([[0], np.cumsum(counts)[:-1]])
        last = np.arange(len(starts) - NGRAM + 1) + NGRAM - 1
        full = np.flatnonzero(word_doc[last - NGRAM + 1] == word_doc[last]) if len(last) else last
        short = np.flatnonzero((counts > 0) & (counts < NGRAM))
        s = np.concatenate([starts[full], starts[first_word[short]]])
        e = np.concatenate([ends[full + NGRAM - 1], ends[first_word[short] + counts[short] - 1]])
        doc = np.concatenate([word_doc[full], short])
    order = np.argsort(doc, kind="stable")
    return substring(s[order], e[order]), doc[order]


def signatures(texts: list[str]) -> np.ndarray:
    """MinHash signatures, shape (len(texts), NUM_PERM), uint32 (top 32 bits of each minimum)."""
    hashes, doc = shingles(texts)
    sig = np.full((len(texts), NUM_PERM), _EMPTY, dtype=np.uint32)
    if not len(hashes):
        return sig
    present = np.flatnonzero(np.bincount(doc, minlength=len(texts)))
    offsets = np.searchsorted(doc, present)
    step = max(1, (1 << 23) // len(hashes))  # bound the (shingles x permutations) block to ~64 MB
    with np.errstate(over="ignore"):
        for p in range(0, NUM_PERM, step):
            v = hashes[:, None] * _A[None, p : p + step] + _B[None, p : p + step]
            sig[present, p : p + step] = (np.minimum.reduceat(v, offsets, axis=0) >> np.uint64(32)).astype(np.uint32)
    return sig


def band_keys(sig: np.ndarray) -> np.ndarray:
    """One 64-bit key per (document, band): documents sharing a key are candidate pairs."""
    rows = sig.reshape(len(sig), BANDS, NUM_PERM // BANDS).astype(np.uint64)
    key = splitmix64(np.arange(BANDS, dtype=np.uint64))[None, :]
    for r in range(rows.shape[2]):
        key = splitmix64(key ^ rows[:, :, r])
    return key


def clusters(sig: np.ndarray) -> np.ndarray:
    """Cluster label per document (connected components of verified candidate pairs)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(sig)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    keys = band_keys(sig)
    src, dst = [], []
    for b in range(BANDS):  # a loop over bands; each band is one vectorized sort
        order = np.argsort(keys[:, b], kind="stable")
        k = keys[order, b]
        head = np.r_[True, k[1:] != k[:-1]]
        first = order[np.maximum.accumulate(np.where(head, np.arange(n), 0))]
        src.append(first[~head])
        dst.append(order[~head])
    pairs = np.unique(np.concatenate(src).astype(np.int64) * n + np.concatenate(dst))
    src, dst = pairs // n, pairs % n
    keep = np.zeros(len(pairs), dtype=bool)
    for i in range(0, len(pairs), 1 << 16):  # chunks bound the (pairs x permutations) comparison
        a, b = src[i : i + (1 << 16)], dst[i : i + (1 << 16)]
        same = (sig[a] == sig[b]) & (sig[a] != _EMPTY)
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
