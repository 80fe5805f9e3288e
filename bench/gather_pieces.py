"""Benchmark: the cost per store piece of the ways a build could copy pieces out of a
store in the page cache (the figures behind gather's one `preadv` per piece).

    .venv/bin/python bench/gather_pieces.py FILE [--pieces 600K] [--repeat 2]

FILE: a store's train.ds of a GB or more (bench/build.py's general store). The file is
read once first, so that its pages are cached. Pieces: `--pieces` random ranges of
200-3,400 bytes (a web document's ~1.8 KB on average), copied one after the other into one
array whose pages are touched first (fresh memory is costly on a VM), single-threaded, by:
one `os.preadv` per piece (what gather does); slices of a fresh mapping of the file (the
first touch of each mapped page faults); slices of a mapping made with MAP_POPULATE (the
kernel maps every cached page of the file up front). Every copy is checked against the
preadv one.
"""

from __future__ import annotations

import argparse
import mmap
import os
import time

import numpy as np

from mixer.units import parse_count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("file")
    ap.add_argument("--pieces", default="600K")
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    fd = os.open(args.file, os.O_RDONLY)
    size = os.fstat(fd).st_size
    n = parse_count(args.pieces)
    rng = np.random.default_rng(0)
    length = rng.integers(200, 3400, n)
    src = rng.integers(0, size - 3400, n)
    dest = np.concatenate([[0], np.cumsum(length)[:-1]])
    D, A, E, N = dest.tolist(), src.tolist(), (src + length).tolist(), length.tolist()
    with open(args.file, "rb") as f:
        while f.read(1 << 26):
            pass
    print(f"{n:,} pieces, {length.sum() / 1e6:.0f} MB from {args.file} ({size / 1e9:.2f} GB, cached)")
    for r in range(args.repeat):
        out = np.ones(int(length.sum()), np.uint8)
        view = memoryview(out)
        t = time.perf_counter()
        for d, a, k in zip(D, A, N):
            os.preadv(fd, [view[d : d + k]], a)
        t_read = time.perf_counter() - t
        seconds = {}
        for name, flags in (("fresh", mmap.MAP_SHARED), ("populated", mmap.MAP_SHARED | mmap.MAP_POPULATE)):
            copy = np.ones_like(out)
            cv = memoryview(copy)
            t = time.perf_counter()
            with mmap.mmap(fd, 0, flags=flags, prot=mmap.PROT_READ) as mm:
                mv = memoryview(mm)
                for d, a, e in zip(D, A, E):
                    cv[d : d + e - a] = mv[a:e]
                mv.release()
            seconds[name] = time.perf_counter() - t
            assert np.array_equal(copy, out)
        us = 1e6 / n
        print(f"round {r + 1}: preadv {t_read:.2f} s ({t_read * us:.2f} us/piece); fresh mapping "
              f"{seconds['fresh']:.2f} s ({seconds['fresh'] * us:.2f} us/piece); MAP_POPULATE, mapping included "
              f"{seconds['populated']:.2f} s ({seconds['populated'] * us:.2f} us/piece)")


if __name__ == "__main__":
    main()
