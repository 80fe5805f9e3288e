"""A source's stream: its train documents, re-permuted every epoch, end to end.

The stream is never materialized. Sample k of a source is stream[k*L : k*L + L + 1];
`gather` turns any set of sample indices into the store runs that spell them with a
handful of vectorized numpy passes (no per-sample or per-token Python), then reads those
runs: sorted by store offset over a whole shard, by a few threads at once, straight into
the shard (a store that is not in the page cache is read at random, many requests at once,
or, where the runs are dense, streamed in order by the kernel's readahead); runs of short
documents are gathered from a mapping of the store with one take.

Per epoch a stream keeps three arrays on disk (mixer/mixing/plan_cache.py), never on the
heap: the permutation of its documents, `offsets` (where the i-th document of the epoch's
order starts in the epoch, plus the epoch's length: n + 1 entries) and `starts` (where it
starts in the store), and a coarse index in memory (every COARSE-th offset) so that
finding the document under a stream position touches one page of `offsets`, not the ~20
a binary search over the mapped file would.
"""

from __future__ import annotations

import errno
import os
import weakref
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Iterator

import numpy as np

from mixer.errors import MixerError
from mixer.formats.atomic import load_npy
from mixer.formats.checksum import CHECKSUM, checksum_bytes
from mixer.formats.store import Store, lengths_u32
from mixer.forks import pool_threads
from mixer.mixing import plan_cache
from mixer.mixing.feistel import permute
from mixer.mixing.plan_cache import PLAN_FORMAT, PlanDir, StreamFiles, read_chunk

_CHUNK_TOKENS = 1 << 22  # bounds the per-token index of short documents to ~32 MiB a chunk whatever the shard size
_SLICE_MIN_PIECE = 48  # mean piece length above which a read per piece beats a per-token index
READ_THREADS = 8  # reading threads of a stream: up to 8 requests wait on the disk
_MIN_GROUP = 256  # pieces per reading thread, at least: fewer are not worth a thread
# Reading 32 KiB more in order costs about what one more random request does (~10-12 us
# at ~3-4 GB/s of readahead, on the disk measured in docs/benchmarks/build.md).
_DENSE_GAP = 32 << 10
_WINDOW = 1 << 20  # bytes a readahead request: the kernel reads at most its readahead size or a device request a call
_AHEAD = 32 << 20  # bytes a reading thread keeps requested ahead of its reads
_MAX_PENDING = 1 << 22  # pieces read in one sorted batch, at most: ~100 MB of index arrays
COARSE = 512  # offsets per coarse-index entry: 4 KiB of int64, one page


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
            return lengths_u32(self._ends)
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
            mapped = load_npy(w.path, mmap_mode="r+")
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
        position 0 <= pos < epoch_tokens (as searchsorted(offsets, pos, "right") - 1): the
        coarse index narrows each to COARSE entries of `offsets`, a vectorized binary search
        does the rest (log2(COARSE) reads per position, all in one page)."""
        lo = (np.searchsorted(ep.coarse, pos, side="right") - 1) * COARSE  # offsets[lo] <= pos
        hi = np.minimum(lo + COARSE, len(ep.offsets) - 1)  # offsets[hi] > pos (or hi is the end)
        while True:
            open_ = hi - lo > 1
            if not open_.any():
                return lo
            mid = (lo + hi) // 2
            below = (ep.offsets[mid] <= pos) & open_
            lo = np.where(below, mid, lo)
            hi = np.where(open_ & ~below, mid, hi)

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

    def gather(self, samples: np.ndarray, out: np.ndarray | None = None, rows: np.ndarray | None = None,
               reuse: int = 1) -> np.ndarray:
        """Tokens of the given source sample indices: into `out[rows]` when given (no extra
        copy for a shard that interleaves sources), else a new (len(samples), seq_len + 1) array.
        `reuse`: how many calls like this one (this one included) the process will make, e.g.
        the shards a task has left: pages read ahead of one may serve the next (_read_pieces)."""
        samples = np.asarray(samples, dtype=np.int64)
        width = self.seq_len + 1
        if out is None:
            out = np.empty((len(samples), width), dtype=self.store.dtype)
        rows = np.arange(len(samples), dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
        if not out.flags.c_contiguous:
            raise ValueError("gather writes into a C-contiguous array")
        flat = out.reshape(-1)
        chunk = max(1, _CHUNK_TOKENS // width)
        tokens = None
        # Long pieces of every chunk are read together, sorted over the whole call (a shard):
        # ~1/48 as many pieces as tokens at most, a few MB for most shards (_MAX_PENDING).
        pending: list[tuple[np.ndarray, ...]] = []
        reads: list[Future] = []
        try:
            for i in range(0, len(samples), chunk):
                starts = samples[i : i + chunk] * self.seq_len
                piece_store, piece_len, piece_row, piece_col = self._pieces(starts, width)
                if len(piece_len) * _SLICE_MIN_PIECE < len(starts) * width:
                    # Long pieces: one read per contiguous store run, straight into its row.
                    pending.append((rows[i : i + chunk][piece_row] * width + piece_col, piece_store, piece_len))
                    if sum(len(p[0]) for p in pending) >= _MAX_PENDING:  # a huge shard: read a batch
                        reads = self._read_pieces(flat, *(np.concatenate(x) for x in zip(*pending)), reuse)
                        pending = []
                        for f in reads:
                            f.result()
                    continue
                if tokens is None:
                    tokens = np.asarray(self.store.tokens("train"))  # plain ndarray view: memmap slicing is slow
                    if len(tokens) < self.store.n_tokens("train"):  # one line, not an IndexError
                        raise _truncated(self.store.path / "train.ds", self.store.n_tokens("train"))
                # Short documents (e.g. SMILES): a per-token index built by one cumsum, then take.
                step = np.ones(len(starts) * width, dtype=np.int64)
                offsets = np.cumsum(piece_len) - piece_len
                step[offsets[1:]] = piece_store[1:] - (piece_store[:-1] + piece_len[:-1] - 1)
                step[0] = piece_store[0]
                out[rows[i : i + chunk]] = np.take(tokens, np.cumsum(step, out=step)).reshape(-1, width)
            if pending:
                reads = self._read_pieces(flat, *(np.concatenate(x) for x in zip(*pending)), reuse)
        finally:  # never return (or raise) while a thread still writes into `out`
            errors = [f.exception() for f in reads]
        if any(errors):
            raise next(e for e in errors if e)
        return out

    @cached_property
    def _fd(self) -> int:
        path = self.store.path / "train.ds"
        fd = os.open(path, os.O_RDONLY)
        weakref.finalize(self, os.close, fd)
        if os.fstat(fd).st_size < self.store.n_tokens("train") * self.store.dtype.itemsize:
            raise _truncated(path, self.store.n_tokens("train"))
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)  # read at random: readahead would only evict
        return fd

    def _pool(self) -> ThreadPoolExecutor:
        """The reading threads, started once per process (a forked child starts its own)."""
        if getattr(self, "_pool_pid", None) != os.getpid():
            self._reader = ThreadPoolExecutor(max_workers=READ_THREADS, thread_name_prefix=pool_threads(f"mixer-read-{self.name}"))
            self._pool_pid = os.getpid()
            weakref.finalize(self, self._reader.shutdown, wait=False)
        return self._reader

    def _read_pieces(self, flat: np.ndarray, dest: np.ndarray, src: np.ndarray, length: np.ndarray,
                     reuse: int = 1) -> list[Future]:
        """Start flat[dest[j] : dest[j] + length[j]] = train tokens[src[j] : src[j] + length[j]]
        for every j; returns the futures to wait for.

        Reads, not a mapping of the store, so that a store that is not in the page cache
        sees many requests at once: pieces sorted by store offset and split into a few
        contiguous groups, one thread each (os.preadv releases the GIL), each group's in
        ascending order, exactly the bytes needed. Where the pieces are dense, a piece in the
        page cache is copied with RWF_NOWAIT (the read fails rather than wait on the disk),
        so a warm store costs one copy per piece and nothing more; where one is not cached,
        the thread asks the kernel to read its whole range in order, _AHEAD bytes ahead of it
        (POSIX_FADV_WILLNEED, _WINDOW bytes a call), then reads its pieces: the disk streams
        instead of serving ~2 small reads a sample, and the pages between pieces stay cached.
        Dense: a mean gap under _DENSE_GAP (reading it costs about what one more random
        request does) times `reuse`, the calls that may find those pages cached (while the
        range fits in half the machine's memory): a task with 6 shards left reads a range
        ahead whose pieces are 6x further apart than one shard alone would (docs/benchmarks/
        build.md, "build from a cold store"). Sparse pieces are read alone: no readahead,
        which would only evict. Nothing of the store counts in this process's RSS."""
        size = flat.itemsize
        view = memoryview(flat.view(np.uint8))
        order = np.argsort(src, kind="stable")
        fd, path = self._fd, self.store.path / "train.ds"
        span = int((src + length).max() - src[order[0]]) * size
        if span > _memory() // 2:
            reuse = 1  # the pages read ahead would be evicted before a later call needs them
        dense = span < _DENSE_GAP * len(order) * max(1, reuse)

        def read(idx: np.ndarray) -> None:
            D, A, N = (dest[idx] * size).tolist(), (src[idx] * size).tolist(), (length[idx] * size).tolist()
            last = A[-1] + N[-1]
            ahead = -1  # where the next readahead request starts, once a piece was not cached
            for d, a, n in zip(D, A, N):
                if dense:
                    if _read_cached(fd, view[d : d + n], a) == n:
                        continue
                    ahead = max(ahead, a - a % _WINDOW)
                    while ahead < min(a + _AHEAD, last):
                        os.posix_fadvise(fd, ahead, _WINDOW, os.POSIX_FADV_WILLNEED)
                        ahead += _WINDOW
                got = os.preadv(fd, [view[d : d + n]], a)
                while got < n:  # a read may return less (a signal); zero means the file ended
                    more = os.preadv(fd, [view[d + got : d + n]], a + got)
                    if more == 0:
                        raise _truncated(path, (a + n) // size)
                    got += more

        groups = np.array_split(order, max(1, min(READ_THREADS, len(order) // _MIN_GROUP)))
        pool = self._pool()
        return [pool.submit(read, g) for g in groups if len(g)]

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


def _read_cached(fd: int, buf: memoryview, offset: int) -> int:
    """Bytes of the file at `offset` copied into `buf` from the page cache alone: 0 where
    its first page is not cached, or where the file system cannot tell (no RWF_NOWAIT)."""
    try:
        return os.preadv(fd, [buf], offset, _NOWAIT)
    except BlockingIOError:
        return 0
    except OSError as e:  # EOPNOTSUPP: this file system does not read without waiting
        if e.errno in (errno.EOPNOTSUPP, errno.EINVAL):
            return 0
        raise


_NOWAIT = getattr(os, "RWF_NOWAIT", 0)


@lru_cache(maxsize=1)
def _memory() -> int:
    """Bytes of physical memory."""
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _truncated(path, token: int) -> MixerError:
    return MixerError(f"{path}: ends before token {token} that its index names (truncated since it was written); "
                      "re-run mixer tokenize --force for this source")


def _bounds(ends: np.ndarray, docs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(store start, store end) of store documents `docs` (int64)."""
    hi = np.asarray(ends[docs], dtype=np.int64)
    lo = np.zeros_like(hi)
    nz = docs > 0
    lo[nz] = ends[docs[nz] - 1]
    return lo, hi
