"""The checksum every mixer file is recorded with."""

from __future__ import annotations

import mmap
import os
from pathlib import Path

import xxhash

# xxh3-128, not sha256: verify must run near disk read speed (sha256 manages ~0.5 GB/s on
# one core, xxh3 > 10 GB/s). The threat is corruption and truncation, not an adversary.
CHECKSUM = "xxh3_128"


def checksum_file(path: Path) -> str:
    h = xxhash.xxh3_128()
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size:
            # Hashed in place through mmap: a read() loop copies every byte out of the page
            # cache first, which cost 4x the hash itself (docs/benchmarks/build.md, verify).
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
                h.update(m)
    return h.hexdigest()


def checksum_bytes(data: bytes | memoryview) -> str:
    return xxhash.xxh3_128(data).hexdigest()
