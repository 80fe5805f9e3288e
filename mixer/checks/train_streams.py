"""Training data as the audit reads it: token streams in which documents are whole.

Three kinds of training file:
- flat token files (nanoGPT's train.bin): the file is one stream;
- sample files `(n, seq_len + 1)` with a provenance sidecar (a mix shard and its
  `shard-*.prov.npy`, PROV_DTYPE (source, offset) per sample): the samples of one
  source are stitched back into that source's stream. Sample k of a source starts at
  stream offset k * seq_len and holds `stream[offset : offset + seq_len + 1]`, so
  consecutive samples share one token; the stream is the source's documents, each ending
  in EOS (docs/formats.md). Samples are shuffled over all shards, so the audit reads them
  by row (`os.pread`) in stream order. Missing samples (a partial mix) cut the stream into
  gap-free stretches; nothing is assumed across a gap;
- sample files without provenance: every row is its own stream, so n-grams stay inside a
  row and an n-gram longer than a row cannot be checked (the audit refuses such an n).

A location is `stream index << LOC_BITS | token position in the stream` (stitched: the
source stream's coordinates), which `describe` turns back into file, sample and token.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mixer.errors import MixerError
from mixer.formats.atomic import load_npy
from mixer.formats.mix import PROV_DTYPE

LOC_BITS = 40  # positions < 2**40 tokens per stream (1.1T); stream indices above
MAX_SOURCES = 63  # per-key source sets are 64-bit masks; bit 63 marks training data of unknown source
UNKNOWN_SOURCE_BIT = 63


@dataclass
class TrainFile:
    path: str
    dtype: str
    row_len: int | None  # seq_len + 1 for sample files, None for flat token files
    prov: str | None = None  # provenance sidecar of a sample file: its rows are stitched into source streams

    def open(self) -> int:
        """Checks the file and returns its length in tokens."""
        path, dtype = Path(self.path), np.dtype(self.dtype)
        if not path.is_file():
            raise MixerError(f"{path}: training file not found")
        size = path.stat().st_size
        unit = dtype.itemsize * (self.row_len or 1)
        if size % unit:
            shape = f"rows of {self.row_len} {dtype.name}" if self.row_len else f"{dtype.name} tokens"
            raise MixerError(f"{path}: size {size} bytes is not a whole number of {shape}; wrong --dtype or --seq-len?")
        if self.prov is not None and not self.row_len:
            raise MixerError(f"{self.prov}: provenance given for {path}, which is not a sample file (no seq_len)")
        return size // dtype.itemsize

    def read(self, start: int, count: int) -> np.ndarray:
        """Tokens [start, start+count): read, not memory-mapped, so resident memory stays one
        chunk whatever the file size."""
        dtype = np.dtype(self.dtype)
        return np.fromfile(self.path, dtype=dtype, count=count, offset=start * dtype.itemsize)

    def provenance(self) -> np.ndarray:
        """The sidecar's (source, offset) per row, checked against the file."""
        path = Path(self.prov or "")
        try:
            prov = load_npy(path)
        except (OSError, ValueError) as e:
            raise MixerError(f"{path}: cannot read provenance ({e})") from None
        if prov.dtype.names != PROV_DTYPE.names:
            raise MixerError(f"{path}: not a provenance file (fields {prov.dtype.names}, want source and offset)")
        rows = self.open() // self.row_len
        if prov.ndim != 1 or len(prov) != rows:
            raise MixerError(f"{path}: {len(prov)} provenance rows for {rows} samples in {Path(self.path).name}")
        return prov


@dataclass(frozen=True)
class Stream:
    kind: str  # "flat", "rows" or "stitched"
    file: int  # flat and rows: index into the files; stitched: -1
    source: int  # stitched: source id; else -1
    length: int  # tokens (stitched: end of the source stream's last sample)
    row_len: int | None  # rows: the row length; stitched: seq_len + 1
    stretches: tuple[tuple[int, int], ...]  # gap-free [start, stop) token ranges

    def to_json(self) -> dict:
        return {**self.__dict__, "stretches": [list(s) for s in self.stretches]}

    @classmethod
    def from_json(cls, d: dict) -> "Stream":
        return cls(**{**d, "stretches": tuple(tuple(s) for s in d["stretches"])})


def order_file(folder: Path, source: int) -> Path:
    return folder / f"order-{source:05d}.npy"


def build_streams(files: list[TrainFile], folder: Path | None) -> list[Stream]:
    """The streams of `files`: one per flat or unstitched sample file, one per source of the
    files with provenance. For each source, writes `order-<source>.npy` into `folder`: the
    row holding each sample of the source's stream, `file << 32 | row`, -1 where missing.
    Two passes over the sidecars (sizes, then rows), so only the orders are held: 8 bytes
    per sample, where all the sidecars of a 200B-token mix would be 1 GB more."""
    streams: list[Stream] = []
    samples: dict[int, int] = {}
    seq_len = None
    for i, f in enumerate(files):
        size = f.open()
        if f.prov is None:
            kind = "rows" if f.row_len else "flat"
            streams.append(Stream(kind, i, -1, size, f.row_len, ((0, size),) if kind == "flat" else ()))
            continue
        if seq_len is not None and f.row_len - 1 != seq_len:
            raise MixerError(f"{f.path}: samples of {f.row_len - 1} tokens, other shards have {seq_len}")
        seq_len = f.row_len - 1
        prov = f.provenance()
        bad = np.flatnonzero(prov["offset"] % seq_len)
        if len(bad):
            raise MixerError(f"{f.prov}: source {int(prov['source'][bad[0]])} sample at stream offset "
                             f"{int(prov['offset'][bad[0]])}, not a multiple of seq_len {seq_len}")
        for s in np.unique(prov["source"]).tolist():
            if s >= MAX_SOURCES:
                raise MixerError(f"{f.prov}: source id {s}; the audit handles ids below {MAX_SOURCES}")
            last = int(prov["offset"][prov["source"] == s].max()) // seq_len + 1
            samples[s] = max(samples.get(s, 0), last)
    orders = {s: np.full(k, -1, dtype=np.int64) for s, k in samples.items()}
    for i, f in enumerate(files):
        if f.prov is None:
            continue
        prov = f.provenance()
        for s, order in orders.items():
            rows = np.flatnonzero(prov["source"] == s)
            k = (prov["offset"][rows] // seq_len).astype(np.int64)
            sk = np.sort(k)
            twice = np.concatenate([k[order[k] >= 0], sk[1:][sk[1:] == sk[:-1]]])
            if len(twice):
                raise MixerError(f"{f.prov}: source {s} sample at stream offset {int(twice[0]) * seq_len} "
                                 "appears twice in the provenance")
            order[k] = (np.int64(i) << 32) | rows
    for s, order in sorted(orders.items()):
        have = np.concatenate([[False], order >= 0, [False]])
        edges = np.flatnonzero(have[1:] != have[:-1])  # starts and stops of runs of present samples
        stretches = tuple((int(a) * seq_len, int(b) * seq_len + 1) for a, b in zip(edges[::2], edges[1::2]))
        if folder is not None:
            from mixer.formats.atomic import atomic_open

            with atomic_open(order_file(folder, s)) as fh:
                np.save(fh, order)
        streams.append(Stream("stitched", -1, s, len(order) * seq_len + 1, seq_len + 1, stretches))
    return streams


def longest_piece(streams: list[Stream]) -> int:
    """The longest run of tokens an n-gram could lie in (a row, a flat file, a stretch)."""
    out = 0
    for s in streams:
        out = max(out, s.row_len if s.kind == "rows" else max((b - a for a, b in s.stretches), default=0))
    return out


@dataclass(frozen=True)
class Unit:
    """Work for one task: documents starting in [start, stop) of a stream (rows: rows
    [start, stop) of a file)."""

    stream: int
    start: int
    stop: int


def make_units(streams: list[Stream], world_size: int, chunk: int) -> list[list[Unit]]:
    """Cut the streams into units and deal them to `world_size` tasks, largest first to the
    least loaded task: a deterministic function of the streams and the task count."""
    total = sum(s.length for s in streams)
    size = int(np.clip(total // max(1, 8 * world_size), chunk, 1 << 28))
    units: list[tuple[int, Unit]] = []
    for i, s in enumerate(streams):
        if s.kind == "rows":
            rows = s.length // s.row_len
            per = max(1, size // s.row_len)
            units += [(min(per, rows - r) * s.row_len, Unit(i, r, min(rows, r + per))) for r in range(0, rows, per)]
            continue
        for a, b in s.stretches:
            n = max(1, -(-(b - a) // size))
            if n > 1:  # a multiple of the task count, so one long stream is dealt evenly
                n = -(-n // world_size) * world_size
            cuts = [a + (b - a) * j // n for j in range(n + 1)]
            units += [(hi - lo, Unit(i, lo, hi)) for lo, hi in zip(cuts[:-1], cuts[1:])]
    load = [0] * world_size
    out: list[list[Unit]] = [[] for _ in range(world_size)]
    for weight, u in sorted(units, key=lambda x: (-x[0], x[1].stream, x[1].start)):
        t = load.index(min(load))
        load[t] += weight
        out[t].append(u)
    return [sorted(us, key=lambda u: (u.stream, u.start)) for us in out]


class Reader:
    """Reads token ranges of streams. Stitched streams are read row by row with pread from
    files kept open, so a chunk costs one system call per sample and no mapping."""

    def __init__(self, files: list[TrainFile], streams: list[Stream], folder: Path) -> None:
        self.files, self.streams, self.folder = files, streams, folder
        self.orders: dict[int, np.ndarray] = {}
        self.fds: dict[int, int] = {}

    def read(self, stream: int, start: int, stop: int) -> np.ndarray:
        s = self.streams[stream]
        f = self.files[s.file] if s.file >= 0 else None
        if s.kind != "stitched":
            return f.read(start, stop - start)
        seq = s.row_len - 1
        k0, k1 = start // seq, max(start // seq, (stop - 2) // seq)
        if s.source not in self.orders:
            self.orders[s.source] = load_npy(order_file(self.folder, s.source), mmap_mode="r")
        rows = np.asarray(self.orders[s.source][k0 : k1 + 1])
        if (rows < 0).any():
            raise MixerError(f"source {s.source}: stream tokens [{start}, {stop}) cross a missing sample")
        dtype = np.dtype(self.files[int(rows[0] >> 32)].dtype)
        buf = np.empty((len(rows), seq + 1), dtype=dtype)
        width = (seq + 1) * dtype.itemsize
        for j in np.argsort(rows, kind="stable").tolist():  # file order: sequential where the shuffle allows
            fi, r = int(rows[j] >> 32), int(rows[j] & 0xFFFFFFFF)
            got = os.preadv(self._fd(fi), [memoryview(buf[j]).cast("B")], r * width)
            if got != width:
                raise MixerError(f"{self.files[fi].path}: sample {r} is cut short; the file changed during the audit?")
        flat = np.empty(len(rows) * seq + 1, dtype=dtype)
        flat[:-1].reshape(len(rows), seq)[...] = buf[:, :seq]  # one copy: consecutive samples share a token
        flat[-1] = buf[-1, seq]
        return flat[start - k0 * seq : stop - k0 * seq]

    def _fd(self, i: int) -> int:
        fd = self.fds.get(i)
        if fd is None:
            if len(self.fds) >= 256:  # shards of a 200B-token mix number thousands: bound the open files
                os.close(self.fds.pop(next(iter(self.fds))))
            fd = self.fds[i] = os.open(self.files[i].path, os.O_RDONLY)
        return fd

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()


class Locator:
    """Where a location is, as file, sample and token (stitched orders loaded once)."""

    def __init__(self, files: list[TrainFile], streams: list[Stream], folder: Path) -> None:
        self.files, self.streams, self.folder = files, streams, folder
        self.orders: dict[int, np.ndarray] = {}

    def __call__(self, loc: int) -> str:
        s = self.streams[loc >> LOC_BITS]
        pos = loc & ((1 << LOC_BITS) - 1)
        if s.kind == "flat":
            return f"{Path(self.files[s.file].path).name} token {pos}"
        if s.kind == "rows":
            return f"{Path(self.files[s.file].path).name} sample {pos // s.row_len} token {pos % s.row_len}"
        seq = s.row_len - 1
        if s.source not in self.orders:
            self.orders[s.source] = load_npy(order_file(self.folder, s.source), mmap_mode="r")
        order = self.orders[s.source]
        k = min(pos // seq, len(order) - 1)
        if order[k] < 0 and k and pos % seq == 0:  # the last token of a stretch lies in the previous sample only
            k -= 1
        g = int(order[k])
        return (f"{Path(self.files[g >> 32].path).name} sample {g & 0xFFFFFFFF} token {pos - k * seq} "
                f"(source {s.source} stream token {pos})")


def describe(files: list[TrainFile], streams: list[Stream], folder: Path, loc: int) -> str:
    return Locator(files, streams, folder)(loc)
