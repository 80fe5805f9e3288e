"""A source's stream: its train documents, re-permuted every epoch, end to end.

The stream is never materialized. Sample k of a source is stream[k*L : k*L + L + 1];
`gather` turns any set of sample indices into tokens with a handful of vectorized
numpy passes (no per-sample or per-token Python), reading the store through np.memmap.
"""

from __future__ import annotations

import zlib
from functools import lru_cache

import numpy as np

from .feistel import permute
from .store import Store

_CHUNK_TOKENS = 1 << 22  # bounds gather's index arrays to ~32 MiB whatever the shard size


def source_key(name: str) -> int:
    """A stable per-source key, so a source's order does not depend on its id in a mix."""
    return zlib.crc32(name.encode())


class SourceStream:
    def __init__(
        self,
        store: Store,
        seed: int,
        seq_len: int,
        documents: np.ndarray | None = None,
    ) -> None:
        self.store = store
        self.name = store.name
        self.seed = seed
        self.seq_len = seq_len
        lengths = store.doc_lengths("train")
        starts = store.doc_starts("train").astype(np.int64)
        if documents is not None:
            # A subset of the train split (dataset-size studies; compute-matched stages).
            self.documents = np.asarray(documents, dtype=np.int64)
            lengths, starts = lengths[self.documents], starts[self.documents]
        else:
            self.documents = None
        self.lengths = lengths
        self.starts = starts
        self.n_docs = len(lengths)
        self.epoch_tokens = int(lengths.sum())
        self._cache = lru_cache(maxsize=64)(self._layout)

    # -- order -------------------------------------------------------------------------

    def permutation(self, epoch: int) -> np.ndarray:
        """Document order of one epoch: a fresh permutation per (seed, source, epoch)."""
        rng = np.random.default_rng([self.seed, source_key(self.name), epoch])
        return rng.permutation(self.n_docs)

    def _layout(self, epoch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        perm = self.permutation(epoch)
        seg_len = self.lengths[perm]
        seg_stream = np.cumsum(seg_len) - seg_len + epoch * self.epoch_tokens
        return seg_stream, self.starts[perm], seg_len

    def general_order(self, index: np.ndarray, n_samples: int) -> np.ndarray:
        """Shuffle sample indices within blocks of one epoch's worth of samples (see schedule.py)."""
        block = max(1, min(n_samples, self.epoch_tokens // self.seq_len))
        b, within = np.divmod(np.asarray(index, dtype=np.int64), block)
        out = np.empty_like(within)
        for blk in np.unique(b):
            sel = b == blk
            size = min(block, n_samples - int(blk) * block)
            key = (self.seed * 1_000_003 + source_key(self.name)) * 65_537 + int(blk)
            out[sel] = int(blk) * block + permute(within[sel], size, key)
        return out

    # -- tokens ------------------------------------------------------------------------

    def gather(self, samples: np.ndarray) -> np.ndarray:
        """Tokens of the given source sample indices, shape (len(samples), seq_len + 1)."""
        samples = np.asarray(samples, dtype=np.int64)
        width = self.seq_len + 1
        out = np.empty((len(samples), width), dtype=self.store.dtype)
        rows = max(1, _CHUNK_TOKENS // width)
        tokens = self.store.tokens("train")
        for i in range(0, len(samples), rows):
            idx = self._token_index(samples[i : i + rows] * self.seq_len, width)
            out[i : i + rows] = np.take(tokens, idx).reshape(-1, width)
        return out

    def _token_index(self, starts: np.ndarray, length: int) -> np.ndarray:
        """Store positions of stream[s : s + length] for each s, concatenated."""
        if self.epoch_tokens == 0:
            raise ValueError(f"source {self.name!r} has no train tokens")
        first_epoch = int(starts.min()) // self.epoch_tokens
        last_epoch = (int(starts.max()) + length - 1) // self.epoch_tokens
        layouts = [self._cache(e) for e in range(first_epoch, last_epoch + 1)]
        seg_stream = np.concatenate([l[0] for l in layouts])
        seg_store = np.concatenate([l[1] for l in layouts])
        seg_len = np.concatenate([l[2] for l in layouts])
        # Pieces: each (interval, overlapping segment) pair is one contiguous store run.
        first = np.searchsorted(seg_stream, starts, side="right") - 1
        last = np.searchsorted(seg_stream, starts + (length - 1), side="right") - 1
        n_seg = last - first + 1
        piece_row = np.repeat(np.arange(len(starts)), n_seg)
        piece_seg = np.arange(int(n_seg.sum())) - np.repeat(np.cumsum(n_seg) - n_seg, n_seg) + np.repeat(first, n_seg)
        seg_lo = seg_stream[piece_seg]
        lo = np.maximum(seg_lo, starts[piece_row])
        hi = np.minimum(seg_lo + seg_len[piece_seg], starts[piece_row] + length)
        piece_len = hi - lo
        piece_store = seg_store[piece_seg] + (lo - seg_lo)
        offsets = np.cumsum(piece_len) - piece_len
        return np.arange(int(piece_len.sum()), dtype=np.int64) + np.repeat(piece_store - offsets, piece_len)

    # -- counts ------------------------------------------------------------------------

    def passes(self, stream_tokens: int) -> tuple[np.ndarray, int]:
        """Full passes per document for a stream prefix of `stream_tokens`; and the number of
        documents cut by the end of the stream (0 or 1)."""
        if stream_tokens <= 0 or self.epoch_tokens == 0:
            return np.zeros(self.n_docs, dtype=np.int64), 0
        full, rem = divmod(stream_tokens, self.epoch_tokens)
        passes = np.full(self.n_docs, full, dtype=np.int64)
        if rem == 0:
            return passes, 0
        perm = self.permutation(full)
        cum = np.cumsum(self.lengths[perm])
        m = int(np.searchsorted(cum, rem, side="right"))
        passes[perm[:m]] += 1
        return passes, int(rem > (cum[m - 1] if m else 0))
