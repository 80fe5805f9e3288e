"""A source's stream: its train documents, re-permuted every epoch, end to end.

The stream is never materialized. Sample k of a source is stream[k*L : k*L + L + 1];
`gather` turns any set of sample indices into tokens with a handful of vectorized
numpy passes (no per-sample or per-token Python), reading the store through np.memmap.

Per epoch a stream keeps three arrays on disk (mixer/mixing/plan_cache.py), never on the
heap: the permutation of its documents, `offsets` (where the i-th document of the epoch's
order starts in the epoch, plus the epoch's length: n + 1 entries) and `starts` (where it
starts in the store), and a coarse index in memory (every COARSE-th offset) so that
finding the document under a stream position touches one page of `offsets`, not the ~20
a binary search over the mapped file would.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Iterator

import numpy as np

from mixer.formats.checksum import CHECKSUM, checksum_bytes
from mixer.formats.store import Store
from mixer.mixing import plan_cache
from mixer.mixing.feistel import permute
from mixer.mixing.plan_cache import PLAN_FORMAT, PlanDir, StreamFiles, read_chunk

_CHUNK_TOKENS = 1 << 22  # bounds gather's index arrays to ~32 MiB whatever the shard size
_SLICE_MIN_PIECE = 48  # mean piece length above which slice copies beat a per-token index
COARSE = 512  # offsets per coarse-index entry: 4 KiB of int64, one page
_LOCATE_ROWS = 1024  # positions located at once: a (1024, COARSE) int64 block is 4 MiB


def source_key(name: str) -> int:
    """A stable per-source key, so a source's order does not depend on its id in a mix."""
    return zlib.crc32(name.encode())


@dataclass
class _Epoch:
    perm: np.ndarray
    offsets: np.ndarray  # plain ndarray views of the mapped files: memmap indexing is slow
    starts: np.ndarray
    coarse: np.ndarray  # offsets[::COARSE], in memory


class SourceStream:
    def __init__(
        self,
        store: Store,
        seed: int,
        seq_len: int,
        documents: np.ndarray | None = None,
        plan: PlanDir | None = None,
    ) -> None:
        self.store = store
        self.name = store.name
        self.seed = seed
        self.seq_len = seq_len
        self._ends = store.doc_ends("train")  # memmap: nothing per document is read here
        if documents is not None:
            # A subset of the train split (dataset-size studies; compute-matched stages).
            self.documents = np.ascontiguousarray(documents, dtype=np.int64)
            self.n_docs = len(self.documents)
            self.epoch_tokens = sum(int((hi - lo).sum()) for lo, hi in self._bounds_chunks(self.documents))
        else:
            self.documents = None
            self.n_docs = len(self._ends)
            self.epoch_tokens = int(self._ends[-1]) if self.n_docs else 0
        self.plan = plan if plan is not None else PlanDir()
        self._epoch = lru_cache(maxsize=8)(self._load_epoch)

    # -- per-document arrays ------------------------------------------------------------

    @cached_property
    def files(self) -> StreamFiles:
        """This stream's folder of arrays, named by what determines them."""
        rec = self.store.meta.get("checksums", {}).get("files", {}).get("train.ds.index", {})
        index = rec.get(CHECKSUM)
        if index is None:  # a store without checksums (written by hand): its file as it is now
            st = (self.store.path / "train.ds.index").stat()
            index = f"size {st.st_size} mtime_ns {st.st_mtime_ns}"
        key = {"format": PLAN_FORMAT, "source": self.name, "seed": self.seed, "documents": self.n_docs,
               "tokens": self.epoch_tokens, "index": index,
               "subset": checksum_bytes(self.documents.data) if self.documents is not None else None}
        return self.plan.stream(key)

    @cached_property
    def lengths(self) -> np.ndarray:
        """Document lengths (uint32), one per stream document: for tests and small streams;
        nothing on a build's path builds this array."""
        if self.documents is None:
            return _lengths(self._ends)
        return np.concatenate([hi - lo for lo, hi in self._bounds_chunks(self.documents)]).astype(np.uint32)

    def _bounds_chunks(self, docs: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(store start, store end) of store documents `docs`, a chunk at a time."""
        for i in range(0, len(docs), plan_cache.CHUNK):
            yield _bounds(self._ends, np.asarray(docs[i : i + plan_cache.CHUNK], dtype=np.int64))

    # -- order -------------------------------------------------------------------------

    def permutation(self, epoch: int) -> np.ndarray:
        """Document order of one epoch: a fresh permutation per (seed, source, epoch)."""
        return self._epoch(epoch).perm

    def _perm_dtype(self) -> np.dtype:
        # int32 halves a 100M-document permutation; the draws, and so the order, depend only on n_docs.
        return np.dtype(np.int32 if self.n_docs < 2**31 else np.int64)

    def _make_permutation(self, epoch: int) -> None:
        n, dtype = self.n_docs, self._perm_dtype()
        with self.files.create(f"e{epoch:05d}.perm", dtype, (n,)) as w:
            for i in range(0, n, plan_cache.CHUNK):
                w.append(np.arange(i, min(n, i + plan_cache.CHUNK), dtype=dtype))
            w.close()
            # Fisher-Yates in place on the file's pages (page cache, not heap). The draws are
            # numpy's Generator.shuffle, exactly as on an in-memory array: the order of every
            # mix built before the plan went to disk is unchanged. A plain ndarray view, since
            # numpy shuffles only an exact ndarray with its fast path.
            mapped = np.load(w.path, mmap_mode="r+")
            np.random.default_rng([self.seed, source_key(self.name), epoch]).shuffle(np.asarray(mapped))
            mapped.flush()
            del mapped

    def _make_order(self, epoch: int, perm: np.memmap) -> None:
        """offsets, starts and the coarse index of an epoch, in one sequential pass over its
        permutation; the store index is read at random through a private mapping, dropped after."""
        n, tag = self.n_docs, f"e{epoch:05d}"
        ends = np.asarray(np.memmap(self.store.path / "train.ds.index", dtype="<u8", mode="r"))
        coarse = [np.zeros(1, dtype=np.int64)]
        with self.files.create(f"{tag}.offsets", np.int64, (n + 1,)) as wo, \
                self.files.create(f"{tag}.starts", np.int64, (n,)) as ws:
            wo.append(np.zeros(1, dtype=np.int64))
            done = 0
            for i in range(0, n, plan_cache.CHUNK):
                p = read_chunk(perm, i, min(plan_cache.CHUNK, n - i)).astype(np.int64)
                lo, hi = _bounds(ends, self.documents[p] if self.documents is not None else p)
                cum = np.cumsum(hi - lo)
                cum += done
                done = int(cum[-1])
                wo.append(cum)
                ws.append(lo)
                first = -(-(i + 1) // COARSE) * COARSE  # offsets[j] = cum[j - i - 1]
                coarse.append(cum[np.arange(first, i + len(p) + 1, COARSE) - i - 1])
            if done != self.epoch_tokens:
                raise RuntimeError(f"{self.store.path}: the index sums to {done} tokens, not {self.epoch_tokens}")
        del ends
        coarse_all = np.concatenate(coarse)
        with self.files.create(f"{tag}.coarse", np.int64, coarse_all.shape) as w:
            w.append(coarse_all)

    def _load_epoch(self, epoch: int) -> _Epoch:
        n, tag = self.n_docs, f"e{epoch:05d}"
        arrays = None
        for attempt in range(2):
            perm = self.files.load(f"{tag}.perm", self._perm_dtype(), (n,))
            if perm is None:
                self._make_permutation(epoch)
                perm = self.files.load(f"{tag}.perm", self._perm_dtype(), (n,))
            offsets = self.files.load(f"{tag}.offsets", np.int64, (n + 1,))
            starts = self.files.load(f"{tag}.starts", np.int64, (n,))
            coarse = self.files.load(f"{tag}.coarse", np.int64, ((n + COARSE) // COARSE,))
            if offsets is not None and starts is not None and coarse is not None:
                arrays = (perm, offsets, starts, coarse)
                break
            self._make_order(epoch, perm)
        if arrays is None:
            raise RuntimeError(f"{self.files.dir}: epoch {epoch} arrays missing after writing them")
        perm, offsets, starts, coarse = arrays
        return _Epoch(perm=perm, offsets=np.asarray(offsets), starts=np.asarray(starts), coarse=np.array(coarse))

    def materialize(self, stream_tokens: int) -> int:
        """Compute (or check) the arrays of every epoch a prefix of `stream_tokens` touches;
        returns the number of epochs."""
        if stream_tokens <= 0 or self.epoch_tokens == 0:
            return 0
        epochs = (stream_tokens - 1) // self.epoch_tokens + 1
        for e in range(epochs):
            self._epoch(e)
        return epochs

    def _locate(self, ep: _Epoch, pos: np.ndarray) -> np.ndarray:
        """Index i of the epoch's order with offsets[i] <= pos < offsets[i + 1], for each
        position 0 <= pos < epoch_tokens (as searchsorted(offsets, pos, "right") - 1)."""
        block = np.searchsorted(ep.coarse, pos, side="right") - 1
        out = np.empty(len(pos), dtype=np.int64)
        last = len(ep.offsets) - 1
        step = np.arange(COARSE, dtype=np.int64)
        for a in range(0, len(pos), _LOCATE_ROWS):
            b = block[a : a + _LOCATE_ROWS] * COARSE
            vals = ep.offsets[np.minimum(b[:, None] + step, last)]
            out[a : a + _LOCATE_ROWS] = b + (vals <= pos[a : a + _LOCATE_ROWS, None]).sum(axis=1) - 1
        return out

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
        T = self.epoch_tokens
        parts = []
        for e in range(int(starts.min()) // T, (int(starts.max()) + length - 1) // T + 1):
            # each row's part inside epoch e, in the epoch's coordinates
            lo = np.maximum(starts, e * T)
            hi = np.minimum(starts + length, (e + 1) * T)
            row = np.flatnonzero(lo < hi)
            if not len(row):
                continue
            lo, hi = lo[row] - e * T, hi[row] - e * T
            ep = self._epoch(e)
            first, last = self._locate(ep, lo), self._locate(ep, hi - 1)
            n_seg = last - first + 1
            piece_row = np.repeat(row, n_seg)
            piece_seg = np.arange(int(n_seg.sum())) - np.repeat(np.cumsum(n_seg) - n_seg, n_seg) + np.repeat(first, n_seg)
            seg_lo = ep.offsets[piece_seg]
            a = np.maximum(seg_lo, np.repeat(lo, n_seg))
            b = np.minimum(ep.offsets[piece_seg + 1], np.repeat(hi, n_seg))
            parts.append((ep.starts[piece_seg] + (a - seg_lo), b - a, piece_row, a + e * T - starts[piece_row]))
        if len(parts) == 1:
            return parts[0]
        store, n, row, col = (np.concatenate(x) for x in zip(*parts))
        order = np.lexsort((col, row))  # rows that cross an epoch boundary: their pieces in stream order
        return store[order], n[order], row[order], col[order]

    # -- counts ------------------------------------------------------------------------

    def prefix(self, stream_tokens: int) -> tuple[int, int, int, np.ndarray | None]:
        """(full epochs, documents complete in the last partial epoch, cut documents, its order)."""
        full, rem = divmod(stream_tokens, self.epoch_tokens)
        if rem == 0:
            return full, 0, 0, None
        ep = self._epoch(full)
        m = int(self._locate(ep, np.array([rem], dtype=np.int64))[0])  # documents ending at or before rem
        return full, m, int(rem > ep.offsets[m]), ep.perm

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


def _bounds(ends: np.ndarray, docs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(store start, store end) of store documents `docs` (int64)."""
    hi = np.asarray(ends[docs], dtype=np.int64)
    lo = np.zeros_like(hi)
    nz = docs > 0
    lo[nz] = ends[docs[nz] - 1]
    return lo, hi


def _lengths(ends: np.ndarray) -> np.ndarray:
    """Document lengths as uint32 (documents < 4G tokens), computed in chunks of the index."""
    out = np.empty(len(ends), dtype=np.uint32)
    prev = 0
    for i in range(0, len(ends), 1 << 24):
        chunk = np.asarray(ends[i : i + (1 << 24)], dtype=np.int64)
        out[i : i + len(chunk)] = np.diff(chunk, prepend=prev)
        prev = int(chunk[-1])
    return out
