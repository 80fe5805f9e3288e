"""Benchmark: what the disk under a store serves cold, by access pattern (the figures that
decide how gather reads a store that is not in the page cache).

    .venv/bin/python bench/disk_read.py FILE [--random-reads 40000]

FILE should be a few GB (a store's train.ds: bench/build_cold.py makes a 4 GB one). Before
each measurement its pages are dropped (fdatasync, posix_fadvise(POSIX_FADV_DONTNEED)).
Prints GB/s for: one thread reading in order in 8 MiB requests (the kernel reads ahead);
8 threads, each over its eighth of the file, asking for 1 MiB windows with
POSIX_FADV_WILLNEED up to 32 MiB ahead of exact reads (what gather does for dense pieces);
and requests per second for 16 threads of random reads of 4 / 32 / 128 KiB in sorted order.
"""

from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np


def drop(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def timed(path: str, threads: int, work, advice: int) -> float:
    drop(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, advice)
        t = time.perf_counter()
        with ThreadPoolExecutor(threads) as ex:
            list(ex.map(lambda k: work(fd, k), range(threads)))
        return time.perf_counter() - t
    finally:
        os.close(fd)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("file")
    ap.add_argument("--random-reads", type=int, default=40_000)
    a = ap.parse_args()
    size = os.path.getsize(a.file)

    def in_order(fd: int, k: int) -> None:
        buf = bytearray(8 << 20)
        for o in range(0, size, len(buf)):
            os.preadv(fd, [buf], o)

    dt = timed(a.file, 1, in_order, os.POSIX_FADV_NORMAL)
    print(f"in order, 1 thread, 8 MiB reads: {size / 1e9 / dt:.2f} GB/s", flush=True)

    def willneed(fd: int, k: int) -> None:
        lo, hi = k * size // 8, (k + 1) * size // 8
        buf, ahead = bytearray(4096), lo
        for o in range(lo, hi - 4096, 64 << 10):  # one 4 KiB read every 64 KiB: the dense limit
            while ahead < min(o + (32 << 20), hi):
                os.posix_fadvise(fd, ahead, 1 << 20, os.POSIX_FADV_WILLNEED)
                ahead += 1 << 20
            os.preadv(fd, [buf], o)

    dt = timed(a.file, 8, willneed, os.POSIX_FADV_RANDOM)
    print(f"8 threads, WILLNEED 1 MiB windows 32 MiB ahead: {size / 1e9 / dt:.2f} GB/s", flush=True)

    rng = np.random.default_rng(0)
    for kib in (4, 32, 128):
        n = a.random_reads
        offsets = np.sort(rng.integers(0, size - (kib << 10), n) // 4096 * 4096).tolist()

        def random(fd: int, k: int, kib: int = kib, offsets: list = offsets) -> None:
            buf = bytearray(kib << 10)
            for o in offsets[k::16]:
                os.preadv(fd, [buf], o)

        dt = timed(a.file, 16, random, os.POSIX_FADV_RANDOM)
        print(f"random {kib} KiB, 16 threads: {n / dt / 1e3:.0f}K reads/s = {n * (kib << 10) / 1e9 / dt:.2f} GB/s",
              flush=True)


if __name__ == "__main__":
    main()
