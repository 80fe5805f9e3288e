"""The duplicate-safe train/held-out split.

A document is held out (domain: `test`, general: `val`) iff the seeded 64-bit hash of its
*normalized* text falls under a threshold. Normalized = Unicode NFC, casefolded,
whitespace runs folded to one space, stripped; so exact copies, and copies differing
only in case or spacing, always land on the same side, whatever the file order or the
number of tasks. Near-copies are handled by `mixer.neardup`: every member of a cluster
takes its representative's hash.

The hash is computed in two parts so that changing the seed or the held-out size never
re-tokenizes anything: the tasks store an unseeded blake2b-8 of the normalized text
(`text_hash`), and the merge mixes in the seed with splitmix64 (`seeded_hash`), a
bijection per seed, so each seed gives an independent-looking split.
"""

from __future__ import annotations

import hashlib
import unicodedata

import numpy as np
from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from mixer.errors import MixerError

TWO64 = 1 << 64
METHOD = (
    "held out iff splitmix64(blake2b-8(normalized text) ^ splitmix64(seed)) < threshold; "
    "normalized = NFC, casefold, whitespace folded, stripped; near-duplicate clusters share their "
    "representative's hash"
)


def normalize(text: str) -> str:
    """NFC, casefold, whitespace runs -> one space, stripped (str.split is C and Unicode-aware)."""
    if not text.isascii():
        # casefold can un-compose (e.g. 'ǰ'); NFC again so equal texts stay byte-equal
        text = unicodedata.normalize("NFC", unicodedata.normalize("NFC", text).casefold())
    else:
        text = text.lower()  # casefold == lower on ASCII, and lower is faster
    return " ".join(text.split())


def text_hash(normalized: str) -> int:
    """Stable unseeded 64-bit hash of a normalized text (blake2b, 8-byte digest)."""
    return int.from_bytes(hashlib.blake2b(normalized.encode("utf-8"), digest_size=8).digest(), "little")


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finalizer, vectorized (uint64 arithmetic wraps, as intended)."""
    x = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def seeded_hash(hashes: np.ndarray, seed: int) -> np.ndarray:
    """Mix the split seed into unseeded text hashes."""
    key = splitmix64(np.array([seed], dtype=np.uint64))[0]
    return splitmix64(np.asarray(hashes, dtype=np.uint64) ^ key)


def threshold_for_fraction(fraction: float) -> int:
    """Held out iff hash < threshold: a fraction f of uniform 64-bit hashes."""
    return min(int(fraction * TWO64), TWO64 - 1)


def threshold_for_tokens(hashes: np.ndarray, lengths: np.ndarray, tokens: int, what: str = "--test-tokens") -> int:
    """The smallest threshold whose held-out set reaches `tokens` tokens.

    The tasks already measured every document's exact token length, so this needs no
    extra pass: sort by seeded hash, take the running sum of lengths, stop at the first
    document that reaches the target. Documents sharing that hash (copies, one cluster)
    come along, so the held-out set overshoots by at most one cluster.
    """
    order = np.argsort(hashes, kind="stable")
    cum = np.cumsum(np.asarray(lengths, dtype=np.int64)[order])
    total = int(cum[-1]) if len(cum) else 0
    k = int(np.searchsorted(cum, tokens))
    if k >= len(order) - 1 or int(hashes[order[-1]]) <= int(hashes[order[k]]):
        raise MixerError(f"{what} {tokens}: the corpus has only {total} tokens; the held-out set would take all of it")
    return int(hashes[order[k]]) + 1


def heldout_mask(hashes: np.ndarray, threshold: int) -> np.ndarray:
    return np.asarray(hashes, dtype=np.uint64) < np.uint64(threshold)


def val_mask(hashes: np.ndarray, threshold: int) -> np.ndarray:
    """A domain store's validation split: the band of seeded hashes just above the test split's
    and as wide, [threshold, 2 threshold). One key decides all three sides, so copies and
    near-duplicate clusters stay together, and the test split is exactly what it was before
    stores had a validation split (its band does not move)."""
    h = np.asarray(hashes, dtype=np.uint64)
    return (h >= np.uint64(threshold)) & (h < np.uint64(min(2 * threshold, TWO64 - 1)))


class SplitKeys(PipelineStep):
    """Attach the unseeded hash of each document's normalized text (`metadata["hash"]`).

    With near-duplicate detection on, the normalized text is kept (`metadata["norm"]`)
    for the MinHash step, which drops it again.
    """

    name = "split keys"
    type = "🔀 - SPLIT"

    def __init__(self, keep_normalized: bool) -> None:
        super().__init__()
        self.keep_normalized = keep_normalized

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        for doc in data:
            with self.track_time():
                norm = normalize(doc.text)
                doc.metadata["hash"] = text_hash(norm)
                if self.keep_normalized:
                    doc.metadata["norm"] = norm
            yield doc
