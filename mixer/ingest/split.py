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
import re
import time
import unicodedata
from typing import Callable, Iterator

import numpy as np
from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from mixer.errors import MixerError

TWO64 = 1 << 64
NORMALIZE_PIECE = 1 << 20  # characters normalized at a time in a long document
_SPACE = re.compile(r"\s")
TIME_EVERY = 1024  # documents per timing record of the step
COLLECT = 1 << 16  # documents a token-threshold search sorts in memory (1 MB); more are narrowed by passes
METHOD = (
    "held out iff splitmix64(blake2b-8(normalized text) ^ splitmix64(seed)) < threshold; "
    "normalized = NFC, casefold, whitespace folded, stripped; near-duplicate clusters share their "
    "representative's hash"
)


def normalize(text: str) -> str:
    """NFC, casefold, whitespace runs -> one space, stripped (str.split is C and Unicode-aware)."""
    if len(text) <= NORMALIZE_PIECE:
        return _normalize(text)
    return " ".join(p for p in map(_normalize, _pieces(text)) if p)


def _normalize(text: str) -> str:
    if not text.isascii():
        # casefold can un-compose (e.g. 'ǰ'); NFC again so equal texts stay byte-equal
        text = unicodedata.normalize("NFC", unicodedata.normalize("NFC", text).casefold())
    else:
        text = text.lower()  # casefold == lower on ASCII, and lower is faster
    return " ".join(text.split())


def _pieces(text: str) -> Iterator[str]:
    r"""`text` cut before whitespace characters, every NORMALIZE_PIECE characters or so.

    Normalizing the pieces gives the words of the whole: str.split breaks at the very
    whitespace (str.isspace, which re's \s matches too), no canonical composition joins a
    character to a whitespace character, casefold maps characters one at a time and never
    to whitespace, and an ASCII piece takes the same path either way (casefold == lower).
    """
    start = 0
    while len(text) - start > NORMALIZE_PIECE:
        m = _SPACE.search(text, start + NORMALIZE_PIECE)
        if m is None:
            break
        yield text[start : m.start()]
        start = m.start()
    yield text[start:]


def text_hash(normalized: str) -> int:
    """Stable unseeded 64-bit hash of a normalized text (blake2b, 8-byte digest)."""
    return int.from_bytes(hashlib.blake2b(normalized.encode("utf-8"), digest_size=8).digest(), "little")


def normalized_hash(text: str) -> int:
    """`text_hash(normalize(text))`, without building the normalized text of a long document.

    `normalize` of a 50 MB text holds ~10M word objects (~0.5 GB) at once; here one piece
    at a time is normalized and fed to the hash.
    """
    if len(text) <= NORMALIZE_PIECE:
        return text_hash(_normalize(text))
    h, sep = hashlib.blake2b(digest_size=8), b""
    for piece in map(_normalize, _pieces(text)):
        if piece:
            h.update(sep)
            h.update(piece.encode("utf-8"))
            sep = b" "
    return int.from_bytes(h.digest(), "little")


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
    """The smallest threshold whose held-out set reaches `tokens` tokens (arrays in memory)."""
    return threshold_for_tokens_streamed(lambda: iter([(hashes, lengths)]), tokens, what)


def threshold_for_tokens_streamed(
    chunks: Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]], tokens: int, what: str = "--test-tokens",
    collect: int | None = None,
) -> int:
    """The smallest threshold whose held-out set reaches `tokens` tokens, over chunked data.

    `chunks()` yields (seeded hashes, token lengths) of every document, in any order, afresh
    at each call. The tasks already measured every document's exact token length, so no
    extra tokenizing is needed: in hash order, the running sum of lengths first reaches
    `tokens` at some hash value v, and the threshold is v + 1. Documents sharing v (copies,
    one cluster) come along, so the held-out set overshoots by at most one cluster.

    Sorting every hash would hold the whole corpus in memory; instead each pass narrows the
    range holding v by 16 bits with a length-weighted histogram (65536 bins), and once at most
    `collect` documents are left in the range, one more pass sorts just those. Uniform
    hashes need two passes whatever the corpus size; heavy duplication at most five.
    """
    collect = COLLECT if collect is None else collect
    total = documents = top = 0
    hs: list[np.ndarray] | None = []  # the first pass keeps everything while it is small
    ls: list[np.ndarray] = []
    weight, count = _digit_histogram()
    for h, n in chunks():
        h, n = np.asarray(h, dtype=np.uint64), np.asarray(n, dtype=np.int64)
        total += int(n.sum())
        documents += len(h)
        top = max(top, int(h.max())) if len(h) else top
        _add_digits(weight, count, h, n, 48)
        if hs is not None:
            hs.append(h)
            ls.append(n)
            if documents > collect:
                hs, ls = None, []
    if tokens > total or documents == 0:
        raise MixerError(f"{what} {tokens}: the corpus has only {total} tokens; the held-out set would take all of it")
    prefix, shift, below = 0, 64, 0  # v lies in [prefix << shift, (prefix + 1) << shift), above `below` tokens
    while hs is None and shift > 0:
        if shift < 64:  # histogram of the next 16 bits inside the range
            weight, count = _digit_histogram()
            for h, n in chunks():
                h, n = _in_range(h, n, prefix, shift)
                _add_digits(weight, count, h, n, shift - 16)
        cum = below + np.cumsum(weight.astype(np.int64))
        digit = int(np.searchsorted(cum, tokens))
        below = int(cum[digit - 1]) if digit else below
        prefix, shift = (prefix << 16) | digit, shift - 16
        if int(count[digit]) <= collect and shift > 0:
            hs, ls = [], []
            for h, n in chunks():
                h, n = _in_range(h, n, prefix, shift)
                hs.append(h)
                ls.append(n)
    if hs is None:  # every document left shares one hash
        v = prefix
    else:
        h, n = np.concatenate(hs), np.concatenate(ls)
        order = np.argsort(h, kind="stable")
        v = int(h[order[int(np.searchsorted(below + np.cumsum(n[order]), tokens))]])
    if v >= top:
        raise MixerError(f"{what} {tokens}: the corpus has only {total} tokens; the held-out set would take all of it")
    return v + 1


def _digit_histogram() -> tuple[np.ndarray, np.ndarray]:
    # float64 weights are exact: sums of whole token counts stay far below 2**53
    return np.zeros(1 << 16, dtype=np.float64), np.zeros(1 << 16, dtype=np.int64)


def _add_digits(weight: np.ndarray, count: np.ndarray, h: np.ndarray, n: np.ndarray, shift: int) -> None:
    digit = ((h >> np.uint64(shift)) & np.uint64(0xFFFF)).astype(np.intp)
    weight += np.bincount(digit, weights=n, minlength=1 << 16)
    count += np.bincount(digit, minlength=1 << 16)


def _in_range(h: np.ndarray, n: np.ndarray, prefix: int, shift: int) -> tuple[np.ndarray, np.ndarray]:
    h, n = np.asarray(h, dtype=np.uint64), np.asarray(n, dtype=np.int64)
    pick = (h >> np.uint64(shift)) == np.uint64(prefix)
    return h[pick], n[pick]


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
        # timed per TIME_EVERY documents: datatrove's track_time per document cost more
        # than hashing a short one
        timing = self.track_time(unit=f"{TIME_EVERY} documents")
        clock = time.perf_counter
        spent, n = 0.0, 0
        for doc in data:
            t = clock()
            if self.keep_normalized:
                norm = normalize(doc.text)
                doc.metadata["hash"] = text_hash(norm)
                doc.metadata["norm"] = norm
            else:
                doc.metadata["hash"] = normalized_hash(doc.text)
            spent += clock() - t
            n += 1
            if n == TIME_EVERY:
                timing.update(spent)
                spent, n = 0.0, 0
            yield doc
        if n:
            timing.update(spent)
