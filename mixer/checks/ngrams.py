"""Hashed token n-grams and a fast membership set for them, in vectorized numpy.

Hash of the n tokens t[i..i+n):  h = sum_j R[t[i+j]] * Binv**j  (mod 2**64)
where R is a fixed random 64-bit value per token id and Binv the inverse of an odd base B.
Written that way the hash of every window follows from one prefix sum:
    P[k] = sum_{m<k} R[t[m]] * Binv**m,   h(i) = (P[i+n] - P[i]) * B**i
so a chunk costs a gather, two multiplies, a cumsum and a subtraction per token, whatever
n is (a rolling hash done window by window would cost n multiply-adds per token). numpy
integer arithmetic wraps modulo 2**64, which is exactly the ring we want. The same prefix
gives the hash of any span, so whole documents are hashed with the same function.

Membership (`KeySet`) is two-stage because a binary search over millions of keys misses
cache at every level: a bit filter (about 16 bits per key, ~4% false candidates) rejects
almost every window with one gather, and only candidates go through a bucketed binary
search over the sorted keys.
"""

from __future__ import annotations

import numpy as np

_SEED = 0x6D69786572  # "mixer": fixed, so hashes agree across processes and runs
_BASE = 0x9E3779B97F4A7C15  # odd (invertible modulo 2**64), not close to a power of two


def _inverse_mod_2_64(b: int) -> int:
    x = b  # Newton iteration doubles the correct low bits each step: 6 steps > 64 bits
    for _ in range(6):
        x = (x * (2 - b * x)) % 2**64
    return x


def _power_table(b: int, size: int) -> np.ndarray:
    """b**i mod 2**64 for i < size. A cumprod is one sequential multiply per entry (0.3 s for
    10M); here b**(q*4096 + r) = (b**4096)**q * b**r: two short cumprods and one outer product."""
    step = 1 << 12
    steps = np.full(step, b, dtype=np.uint64)
    steps[0] = 1
    low = np.cumprod(steps, dtype=np.uint64)  # b**r
    steps[1:] = (low[-1:] * np.uint64(b))[0]  # b**4096 (arrays wrap silently, numpy scalars warn)
    high = np.cumprod(steps[: -(-size // step)], dtype=np.uint64)  # (b**4096)**q
    return np.multiply.outer(high, low).reshape(-1)[:size]


class NgramHasher:
    """64-bit hashes of token windows and spans; position-independent, deterministic."""

    def __init__(self, n: int, vocab_size: int) -> None:
        if n < 1:
            raise ValueError("n must be >= 1")
        self.n = n
        self.vocab_size = vocab_size
        self.table = np.random.default_rng(_SEED).integers(0, 2**64, size=vocab_size, dtype=np.uint64, endpoint=False)
        self._pw = np.ones(1, dtype=np.uint64)  # B**i, grown on demand
        self._pwi = np.ones(1, dtype=np.uint64)  # Binv**i

    def _powers(self, length: int) -> tuple[np.ndarray, np.ndarray]:
        if len(self._pw) < length:
            size = max(length, 2 * len(self._pw))
            self._pw, self._pwi = _power_table(_BASE, size), _power_table(_inverse_mod_2_64(_BASE), size)
        return self._pw, self._pwi

    def prefix(self, tokens: np.ndarray) -> np.ndarray:
        """P[0..len]: P[k] = sum_{m<k} R[t[m]] * Binv**m (mod 2**64)."""
        _, pwi = self._powers(len(tokens) + 1)
        x = self.table[tokens]
        x *= pwi[: len(tokens)]
        out = np.empty(len(tokens) + 1, dtype=np.uint64)
        out[0] = 0
        np.cumsum(x, out=out[1:])
        return out

    def windows(self, tokens: np.ndarray, prefix: np.ndarray | None = None) -> np.ndarray:
        """Hash of every window t[i:i+n], i = 0 .. len-n (validity is the caller's business)."""
        if len(tokens) < self.n:
            return np.zeros(0, dtype=np.uint64)
        p = self.prefix(tokens) if prefix is None else prefix
        pw, _ = self._powers(len(p))
        h = p[self.n :] - p[: -self.n]
        h *= pw[: len(h)]
        return h

    def spans(self, prefix: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
        """Hash of each t[start:end] (same function as `windows` for end - start == n)."""
        pw, _ = self._powers(len(prefix))
        h = prefix[ends] - prefix[starts]
        h *= pw[starts]
        return h

    def hash_spans(self, tokens: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
        """Hash of each tokens[start:end] without a prefix over all of `tokens` when the spans
        cover little of it (the hash does not depend on where a span is, so the spans can be
        gathered into one short array first)."""
        starts, ends = np.asarray(starts, dtype=np.int64), np.asarray(ends, dtype=np.int64)
        lengths = ends - starts
        total = int(lengths.sum())
        if total * 4 >= len(tokens):
            return self.spans(self.prefix(tokens), starts, ends)
        offs = np.zeros(len(starts) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offs[1:])
        idx = np.repeat(starts - offs[:-1], lengths) + np.arange(total)
        return self.spans(self.prefix(tokens[idx]), offs[:-1], offs[1:])


def sorted_unique(a: np.ndarray) -> np.ndarray:
    """np.unique by sorting: numpy 2.x's hash-based np.unique is ~50x slower on 10M int64s."""
    s = np.sort(a)
    if len(s):
        keep = np.empty(len(s), dtype=bool)
        keep[0] = True
        np.not_equal(s[1:], s[:-1], out=keep[1:])
        s = s[keep]
    return s


def distinct_at_least(tokens: np.ndarray, pos: np.ndarray, n: int, k: int) -> np.ndarray:
    """Whether each window tokens[p:p+n] holds at least k distinct token ids.

    Token i is the first of its id in the window starting at p when the previous occurrence
    of its id is before p. Counting those over the first m = min(n, 32) tokens of every
    window takes m passes over contiguous slices. A window whose first m tokens already hold
    k ids passes; the few that do not (runs of spaces, table borders) and are longer than m
    are counted exactly by sorting their tokens."""
    size = len(tokens)
    m = min(n, 32)
    count = np.zeros(max(size - n + 1, 0), dtype=np.int8)
    if len(count):
        # gap[i]: distance back to the previous token with the same id (255: none that close);
        # the token at i + j is new in the window starting at i when gap[i + j] > j
        order = np.argsort(tokens, kind="stable")  # radix sort for 16-bit ids
        gap = np.full(size, 255, dtype=np.uint8)
        same = tokens[order[1:]] == tokens[order[:-1]]
        at = order[1:][same]
        gap[at] = np.minimum(at - order[:-1][same], 255)
        del order, same, at
        for j in range(m):
            count += gap[j : j + len(count)] > j
    ok = count[pos] >= k
    rest = np.flatnonzero(~ok) if n > m else np.zeros(0, dtype=np.int64)
    for b in range(0, len(rest), 1 << 16):
        r = rest[b : b + (1 << 16)]
        w = np.sort(tokens[pos[r, None] + np.arange(n)], axis=1)
        ok[r] = 1 + np.count_nonzero(np.diff(w, axis=1), axis=1) >= k
    return ok


def valid_windows(size: int, n: int, eos: np.ndarray, row_len: int | None = None) -> np.ndarray:
    """Mask over the windows t[i:i+n] of `size` flat tokens: False when the window holds an
    EOS (`eos`: their positions) or crosses a row (sample) boundary; rows are consecutive
    `row_len` slices of the flat tokens."""
    m = size - n + 1
    if m <= 0:
        return np.zeros(0, dtype=bool)
    ok = np.ones(m, dtype=bool)
    # EOS tokens are rare, so n small scatters beat a sliding count over every position
    for d in range(n):
        pos = eos - d
        ok[pos[(pos >= 0) & (pos < m)]] = False
    if row_len is not None and row_len < size:
        for r in range(n - 1):  # the n-1 window starts at the end of each row
            ok[row_len - 1 - r :: row_len] = False
    return ok


def segments(size: int, eos: np.ndarray, row_len: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends) of the maximal runs of non-EOS tokens inside each row: the pieces of
    documents a training chunk of `size` tokens holds (a row edge cuts a document, an EOS
    at one of the positions `eos` ends one)."""
    rows = np.arange(0, size, row_len if row_len else max(size, 1), dtype=np.int64)
    cuts = sorted_unique(np.concatenate([rows, eos, eos + 1]))
    cuts = cuts[cuts < size]
    starts = cuts
    ends = np.append(cuts[1:], size)
    at = np.minimum(np.searchsorted(eos, starts), max(len(eos) - 1, 0))
    keep = eos[at] != starts if len(eos) else np.ones(len(starts), dtype=bool)  # drop the EOS tokens themselves
    return starts[keep].astype(np.int64), ends[keep].astype(np.int64)


_MASK_BITS = 12  # low hash bits that pick the filter's two bits inside a word
_MASKS = (np.left_shift(np.uint64(1), np.arange(1 << _MASK_BITS, dtype=np.uint64) & np.uint64(63))
          | np.left_shift(np.uint64(1), (np.arange(1 << _MASK_BITS, dtype=np.uint64) >> np.uint64(6)) & np.uint64(63)))


class KeySet:
    """A sorted set of uint64 keys with a filter in front; `lookup` returns, for a batch of
    hashes, which of them are members and their index in `keys`.

    The filter is a blocked Bloom filter: the top hash bits pick a 64-bit word (~16 bits per
    key), the low 12 bits pick two bits inside it (a table of 4,096 masks, in L1 cache). One
    random read per window, like a one-bit filter, with ~4x fewer false candidates (2.3%
    against 5.9% at 16 bits per key); candidates cost ~100 ns each (a bucketed binary search
    over the sorted keys), so the filter's precision is most of the lookup's speed.
    """

    def __init__(self, keys: np.ndarray, words: np.ndarray, directory: np.ndarray) -> None:
        self.keys = keys
        self.words = words
        self.directory = directory
        self.word_shift = np.uint64(64 - int(np.log2(len(words))))
        self.dir_shift = np.uint64(64 - int(np.log2(len(directory) - 1)))
        widest = int(np.diff(directory).max()) if len(keys) else 0
        self.search_steps = max(1, int(widest).bit_length())

    @classmethod
    def build(cls, keys: np.ndarray) -> "KeySet":
        """`keys`: sorted, unique uint64."""
        n = max(len(keys), 1)
        word_bits = int(np.clip(int(n - 1).bit_length() - 2, 4, 32))  # 2**word_bits words of 64 bits: ~16 bits per key
        dir_bits = int(np.clip(int(n - 1).bit_length() - 2, 4, 30))  # ~4 keys per bucket
        words = np.zeros(2**word_bits, dtype=np.uint64)
        if len(keys):
            idx = (keys >> np.uint64(64 - word_bits)).astype(np.int64)
            masks = _MASKS[(keys & np.uint64((1 << _MASK_BITS) - 1)).astype(np.int64)]
            first = np.flatnonzero(np.diff(idx, prepend=-1))  # keys are sorted, so words are grouped
            words[idx[first]] = np.bitwise_or.reduceat(masks, first)
        bucket = (keys >> np.uint64(64 - dir_bits)).astype(np.int64)
        directory = np.zeros(2**dir_bits + 1, dtype=np.int64)
        np.cumsum(np.bincount(bucket, minlength=2**dir_bits), out=directory[1:])
        return cls(keys, words, directory)

    def lookup(self, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(positions in h that are members, their indices in keys)."""
        # mode="wrap": the indices are in range by construction, and numpy skips its checks
        w = np.take(self.words, (h >> self.word_shift).view(np.int64), mode="wrap")
        m = np.take(_MASKS, (h & np.uint64((1 << _MASK_BITS) - 1)).view(np.int64), mode="wrap")
        w &= m
        cand = np.flatnonzero(w == m)
        pos, idx = self.members(h[cand])
        return cand[pos], idx

    def members(self, hc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(positions in hc that are keys, their indices in keys), by binary search; for the
        few hashes that pass the filter."""
        if not len(hc):
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        b = (hc >> self.dir_shift).view(np.int64)
        lo, hi = self.directory[b], self.directory[b + 1]
        for _ in range(self.search_steps):  # branch-free binary search inside each bucket
            mid = (lo + hi) >> 1
            go = (mid < hi) & (self.keys[np.minimum(mid, len(self.keys) - 1)] < hc)
            lo = np.where(go, mid + 1, lo)
            hi = np.where(go, hi, mid)
        found = lo < self.directory[b + 1]
        found[found] = self.keys[lo[found]] == hc[found]
        return np.flatnonzero(found), lo[found]


class WindowLookup:
    """`keyset.lookup(hasher.windows(tokens))` for blocks of up to `block` windows, with every
    temporary preallocated: the scan's hot path, where numpy's allocations and the
    round trips of fresh arrays through the cache cost ~20% of the time."""

    def __init__(self, hasher: NgramHasher, keyset: KeySet, block: int) -> None:
        n = hasher.n
        self.hasher, self.keyset, self.block = hasher, keyset, block
        pw, pwi = hasher._powers(block + n + 1)
        self.pw, self.pwi = pw[: block + n], pwi[: block + n]
        self.x = np.empty(block + n, dtype=np.uint64)
        self.prefix = np.zeros(block + n + 1, dtype=np.uint64)
        self.w = np.empty(block, dtype=np.uint64)
        self.i = np.empty(block, dtype=np.uint64)
        self.bits = np.empty(block, dtype=np.uint64)
        self.mask = np.empty(block, dtype=np.uint64)
        self.hit = np.empty(block, dtype=bool)
        self.low = np.uint64((1 << _MASK_BITS) - 1)

    def __call__(self, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(window starts, key indices) of the windows of `tokens` that are keys."""
        n, t = self.hasher.n, len(tokens)
        m = t - n + 1
        if m <= 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        if m > self.block:
            raise ValueError(f"{m} windows in a block of {self.block}")
        x, p, w = self.x[:t], self.prefix[: t + 1], self.w[:m]
        np.take(self.hasher.table, tokens, out=x, mode="wrap")  # ids < vocab_size: checked by the caller
        np.multiply(x, self.pwi[:t], out=x)
        np.cumsum(x, out=p[1:])
        np.subtract(p[n:], p[:-n], out=w)
        np.multiply(w, self.pw[:m], out=w)
        ks = self.keyset
        i, bits, mask, hit = self.i[:m], self.bits[:m], self.mask[:m], self.hit[:m]
        np.right_shift(w, ks.word_shift, out=i)
        np.take(ks.words, i.view(np.int64), out=bits, mode="wrap")
        np.bitwise_and(w, self.low, out=i)
        np.take(_MASKS, i.view(np.int64), out=mask, mode="wrap")
        np.bitwise_and(bits, mask, out=bits)
        np.equal(bits, mask, out=hit)
        cand = np.flatnonzero(hit)
        pos, idx = ks.members(w[cand])
        return cand[pos], idx
