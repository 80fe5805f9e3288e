"""A source's stream: its train documents, re-permuted every epoch, end to end.

The stream is never materialized. Sample k of a source is stream[k*L : k*L + L + 1];
`gather` turns any set of sample indices into tokens with a handful of vectorized
numpy passes (no per-sample or per-token Python), reading the store through np.memmap.
"""

from __future__ import annotations

import zlib
from functools import lru_cache

import numpy as np

from mixer.mixing.feistel import permute
from mixer.formats.store import Store

_CHUNK_TOKENS = 1 << 22  # bounds gather's index arrays to ~32 MiB whatever the shard size
_SLICE_MIN_PIECE = 48  # mean piece length above which slice copies beat a per-token index


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
        ends = store.doc_ends("train")
        if documents is not None:
            # A subset of the train split (dataset-size studies; compute-matched stages).
            self.documents = np.asarray(documents, dtype=np.int64)
            starts = np.where(self.documents > 0, ends[np.maximum(self.documents - 1, 0)], 0).astype(np.int64)
            self.lengths = (ends[self.documents].astype(np.int64) - starts).astype(np.uint32)
            self._starts = starts
        else:
            self.documents = None
            self.lengths = _lengths(ends)
            self._starts = None
        self._ends = ends
        self.n_docs = len(self.lengths)
        self.epoch_tokens = int(self.lengths.sum(dtype=np.int64))
        self._cache = lru_cache(maxsize=4)(self._layout)

    def doc_starts(self, docs: np.ndarray) -> np.ndarray:
        """Store offsets of stream documents `docs` (indices into this stream's documents)."""
        if self._starts is not None:
            return self._starts[docs]
        return self._ends[docs].astype(np.int64) - self.lengths[docs]

    # -- order -------------------------------------------------------------------------

    def permutation(self, epoch: int) -> np.ndarray:
        """Document order of one epoch: a fresh permutation per (seed, source, epoch)."""
        rng = np.random.default_rng([self.seed, source_key(self.name), epoch])
        # int32 halves the memory of a 100M-document permutation; the draws, and so the
        # order, depend only on n_docs.
        perm = np.arange(self.n_docs, dtype=np.int32 if self.n_docs < 2**31 else np.int64)
        rng.shuffle(perm)
        return perm

    def _layout(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """An epoch's document order and where each document starts in the stream."""
        perm = self.permutation(epoch)
        seg_stream = np.cumsum(self.lengths[perm], dtype=np.int64)
        seg_stream -= self.lengths[perm]
        seg_stream += epoch * self.epoch_tokens
        return perm, seg_stream

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

    def gather(self, samples: np.ndarray, out: np.ndarray | None = None, rows: np.ndarray | None = None) -> np.ndarray:
        """Tokens of the given source sample indices: into `out[rows]` when given (no extra
        copy for a shard that interleaves sources), else a new (len(samples), seq_len + 1) array."""
        samples = np.asarray(samples, dtype=np.int64)
        width = self.seq_len + 1
        if out is None:
            out = np.empty((len(samples), width), dtype=self.store.dtype)
        rows = np.arange(len(samples), dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
        flat = out.reshape(-1)
        chunk = max(1, _CHUNK_TOKENS // width)
        tokens = np.asarray(self.store.tokens("train"))  # plain ndarray view: memmap slicing is slow
        for i in range(0, len(samples), chunk):
            starts = samples[i : i + chunk] * self.seq_len
            piece_store, piece_len, piece_row, piece_col = self._pieces(starts, width)
            if len(piece_len) * _SLICE_MIN_PIECE < len(starts) * width:
                # Long pieces: one memcpy-speed slice copy per contiguous store run. A loop per
                # document piece, not per token; it beats building a per-token index ~4x.
                dest = rows[i : i + chunk][piece_row] * width + piece_col
                for d, a, n in zip(dest.tolist(), piece_store.tolist(), piece_len.tolist()):
                    flat[d : d + n] = tokens[a : a + n]
            else:
                # Short documents (e.g. SMILES): a per-token index built by one cumsum, then take.
                step = np.ones(len(starts) * width, dtype=np.int64)
                offsets = np.cumsum(piece_len) - piece_len
                step[offsets[1:]] = piece_store[1:] - (piece_store[:-1] + piece_len[:-1] - 1)
                step[0] = piece_store[0]
                out[rows[i : i + chunk]] = np.take(tokens, np.cumsum(step, out=step)).reshape(-1, width)
        return out

    def _pieces(self, starts: np.ndarray, length: int) -> tuple[np.ndarray, ...]:
        """Contiguous store runs that spell stream[s : s + length] for each s, in order:
        (store start, length, index of s, position within the row)."""
        if self.epoch_tokens == 0:
            raise ValueError(f"source {self.name!r} has no train tokens")
        first_epoch = int(starts.min()) // self.epoch_tokens
        last_epoch = (int(starts.max()) + length - 1) // self.epoch_tokens
        layouts = [self._cache(e) for e in range(first_epoch, last_epoch + 1)]
        seg_doc = np.concatenate([l[0] for l in layouts]) if len(layouts) > 1 else layouts[0][0]
        seg_stream = np.concatenate([l[1] for l in layouts]) if len(layouts) > 1 else layouts[0][1]
        # Pieces: each (interval, overlapping segment) pair is one contiguous store run.
        first = np.searchsorted(seg_stream, starts, side="right") - 1
        last = np.searchsorted(seg_stream, starts + (length - 1), side="right") - 1
        n_seg = last - first + 1
        piece_row = np.repeat(np.arange(len(starts)), n_seg)
        piece_seg = np.arange(int(n_seg.sum())) - np.repeat(np.cumsum(n_seg) - n_seg, n_seg) + np.repeat(first, n_seg)
        seg_lo = seg_stream[piece_seg]
        doc = seg_doc[piece_seg]
        lo = np.maximum(seg_lo, starts[piece_row])
        hi = np.minimum(seg_lo + self.lengths[doc], starts[piece_row] + length)
        return self.doc_starts(doc) + (lo - seg_lo), hi - lo, piece_row, lo - starts[piece_row]

    # -- counts ------------------------------------------------------------------------

    def prefix(self, stream_tokens: int) -> tuple[int, int, int, np.ndarray | None]:
        """(full epochs, documents complete in the last partial epoch, cut documents, its order)."""
        full, rem = divmod(stream_tokens, self.epoch_tokens)
        if rem == 0:
            return full, 0, 0, None
        perm = self.permutation(full)
        done, m = 0, 0
        for i in range(0, self.n_docs, 1 << 22):  # chunked: stop as soon as the prefix is found
            cum = done + np.cumsum(self.lengths[perm[i : i + (1 << 22)]], dtype=np.int64)
            k = int(np.searchsorted(cum, rem, side="right"))
            m += k
            if k < len(cum):
                return full, m, int(rem > (cum[k - 1] if k else done)), perm
            done = int(cum[-1])
        return full, m, 0, perm

    def passes(self, stream_tokens: int) -> tuple[np.ndarray, int]:
        """Full passes per document for a stream prefix of `stream_tokens`; and the number of
        documents cut by the end of the stream (0 or 1)."""
        if stream_tokens <= 0 or self.epoch_tokens == 0:
            return np.zeros(self.n_docs, dtype=np.int64), 0
        full, m, partial, perm = self.prefix(stream_tokens)
        passes = np.full(self.n_docs, full, dtype=np.int64)
        if perm is not None:
            passes[perm[:m]] += 1
        return passes, partial

    def pass_histogram(self, stream_tokens: int) -> tuple[dict[str, int], int]:
        """{full passes: documents} without a per-document array (a 200B plan has 100M documents)."""
        if stream_tokens <= 0 or self.epoch_tokens == 0:
            return ({"0": self.n_docs} if self.n_docs else {}), 0
        full, m, partial, _ = self.prefix(stream_tokens)
        hist = {str(full): self.n_docs - m, str(full + 1): m}
        return {k: v for k, v in hist.items() if v}, partial


def _lengths(ends: np.ndarray) -> np.ndarray:
    """Document lengths as uint32 (documents < 4G tokens), computed in chunks of the index."""
    out = np.empty(len(ends), dtype=np.uint32)
    prev = 0
    for i in range(0, len(ends), 1 << 24):
        chunk = np.asarray(ends[i : i + (1 << 24)], dtype=np.int64)
        out[i : i + len(chunk)] = np.diff(chunk, prepend=prev)
        prev = int(chunk[-1])
    return out
