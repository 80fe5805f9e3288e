"""The checksum every mixer file is recorded with."""

from __future__ import annotations

import mmap
import os
from pathlib import Path

import xxhash

# xxh3-128, not sha256: verify must run near disk read speed (sha256 manages ~0.5 GB/s on
# one core, xxh3 > 10 GB/s). The threat is corruption and truncation, not an adversary.
CHECKSUM = "xxh3_128"
# Bytes mapped at a time. Hashed in place through mmap: a read() loop copies every byte out
# of the page cache first, which cost 4x the hash itself (docs/benchmarks/build.md, verify).
# In windows, not the whole file at once: every page of a mapping counts in the process's
# RSS until it is unmapped, so hashing a 10 GB store through one mapping "used" 10 GB
# (docs/benchmarks/tokenize_merge.md); a window costs no measurable speed.
WINDOW = 16 << 20


def checksum_file(path: Path) -> str:
    h = xxhash.xxh3_128()
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        for at in range(0, size, WINDOW):
            with mmap.mmap(f.fileno(), min(WINDOW, size - at), access=mmap.ACCESS_READ, offset=at) as m:
                h.update(m)
    return h.hexdigest()


def checksum_bytes(data: bytes | memoryview) -> str:
    return xxhash.xxh3_128(data).hexdigest()
