"""A stream's per-document arrays on disk, computed once and memory-mapped by every task.

What grows with a source's documents is its order: per epoch, the permutation of its
documents, where each of them starts in the stream and in the store (20 bytes per
document and epoch; 20 GB for one epoch of a 1B-document store). A build computes these
once into `.build/plan/` and every task maps them (`np.load(mmap_mode="r")`): their pages
are file-backed, shared by the tasks of one machine, and the kernel drops them under
pressure instead of failing, while the heap of a task stays the same whatever the size of
the store. Without a build folder (`mixer plan`, `verify`) the arrays go to a private
temporary folder in TMPDIR, removed when the process ends (or, after a kill, by the next one).

Each stream has a folder named by a digest of what determines its arrays (store, index
checksum, seed, document subset; `stream.json` holds the key, as Megatron's index cache
keeps a description next to its .npy files). A file is written under a temporary name,
fsynced and renamed; one of the wrong shape or type, or unreadable, is computed again,
so a killed task or a damaged file costs time, never a wrong byte.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import tempfile
from functools import cached_property
from multiprocessing.util import Finalize
from pathlib import Path
from typing import Iterator

import numpy as np

from mixer.formats.atomic import atomic_open, load_npy, read_json, write_json
from mixer.formats.checksum import checksum_bytes
from mixer.errors import MixerError
from mixer.lifetime import pid_alive

PLAN_FORMAT = "mixer-plan/1"
CHUNK = 1 << 21  # entries per step of a sequential pass: bounds the heap (~16 MiB per int64 array)


def key_digest(key: dict) -> str:
    return checksum_bytes(json.dumps(key, sort_keys=True, separators=(",", ":")).encode())[:16]


_TRANSIENT = re.compile(r"^mixer-plan-(?P<host>.+)-(?P<pid>\d+)-[a-z0-9_]+$")


def _remove(path: Path, owner: int) -> None:
    if os.getpid() == owner:  # a forked child must not remove its parent's folder
        shutil.rmtree(path, ignore_errors=True)


def remove_orphans(folder: Path) -> list[Path]:
    """Remove private plan folders (`mixer-plan-<host>-<pid>-*`) whose process died on this
    host without removing its own (killed, or a worker that left with os._exit)."""
    host, removed = socket.gethostname(), []
    for d in Path(folder).glob("mixer-plan-*"):
        m = _TRANSIENT.match(d.name)
        if m and m["host"] == host and not pid_alive(int(m["pid"])):
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    return removed


class PlanDir:
    """Where streams keep their arrays: a build's `.build/plan/`, or (path None) a private
    temporary folder made on first use and removed with this object or when the process
    ends (multiprocessing's finalizers also run in pool workers, which skip atexit)."""

    def __init__(self, path: Path | str | None = None) -> None:
        self._path = Path(path) if path is not None else None
        self.transient = path is None

    @property
    def path(self) -> Path:
        if self._path is None:
            remove_orphans(Path(tempfile.gettempdir()))
            self._path = Path(tempfile.mkdtemp(prefix=f"mixer-plan-{socket.gethostname()}-{os.getpid()}-"))
            Finalize(self, _remove, args=(self._path, os.getpid()), exitpriority=10)
        return self._path

    def stream(self, key: dict) -> "StreamFiles":
        return StreamFiles(self, key)


class StreamFiles:
    """The folder of one stream's arrays, `<source>-<digest of key>/`."""

    def __init__(self, root: PlanDir, key: dict) -> None:
        self.root, self.key = root, key
        self.name = f"{key['source']}-{key_digest(key)}"

    @cached_property
    def dir(self) -> Path:
        d = self.root.path / self.name
        record = d / "stream.json"
        try:
            ok = read_json(record).get("key") == self.key if record.is_file() else None
        except (MixerError, AttributeError):
            ok = False
        if ok is False:  # not ours (damaged, or written for other inputs): start over
            shutil.rmtree(d, ignore_errors=True)
        if not ok:
            d.mkdir(parents=True, exist_ok=True)
            write_json(record, {"format": PLAN_FORMAT, "key": self.key})
        return d

    def load(self, name: str, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray | None:
        """The array `name` mapped read-only, or None when it is missing or not what it should be."""
        f = self.dir / f"{name}.npy"
        if not f.is_file():
            return None
        try:
            a = load_npy(f, mmap_mode="r")
        except (ValueError, OSError, EOFError):
            return None
        if a.dtype != np.dtype(dtype) or a.shape != tuple(shape):
            return None
        return a

    @contextlib.contextmanager
    def create(self, name: str, dtype: np.dtype, shape: tuple[int, ...]) -> Iterator["NpyWriter"]:
        """Write `name` by appending chunks (no mapping: its pages never count in this
        process's RSS); renamed into place when the block ends without error. Fsynced in a
        build's folder (a task must never map a file a crash left half-written); a private
        temporary folder dies with its process, so it skips the fsync (1.3 GB at 64M documents)."""
        if self.root.transient:
            path = self.dir / f"{name}.npy"
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            try:
                with open(tmp, "wb") as f:
                    w = NpyWriter(f, np.dtype(dtype), tuple(shape))
                    yield w
                    w.close()
                os.replace(tmp, path)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
            return
        with atomic_open(self.dir / f"{name}.npy") as f:
            w = NpyWriter(f, np.dtype(dtype), tuple(shape))
            yield w
            w.close()


class NpyWriter:
    def __init__(self, f, dtype: np.dtype, shape: tuple[int, ...]) -> None:
        self.f, self.dtype, self.shape, self.count = f, dtype, shape, 0
        np.lib.format.write_array_header_1_0(
            f, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape})
        self.offset = f.tell()

    @property
    def path(self) -> str:
        return self.f.name

    def append(self, chunk: np.ndarray) -> None:
        chunk = np.ascontiguousarray(chunk, dtype=self.dtype)
        self.f.write(chunk.data)
        self.count += chunk.size

    def close(self) -> None:
        if self.count != int(np.prod(self.shape)):
            raise RuntimeError(f"{self.path}: wrote {self.count} of {int(np.prod(self.shape))} entries")
        self.f.flush()


def read_chunk(a: np.memmap, start: int, count: int) -> np.ndarray:
    """a[start:start + count] read with a plain read, not through the mapping, so a
    sequential pass over a large array leaves no mapped pages behind."""
    return np.fromfile(a.filename, dtype=a.dtype, count=count, offset=a.offset + start * a.dtype.itemsize)
