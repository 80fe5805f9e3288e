"""The checksum every mixer file is recorded with."""

from __future__ import annotations

from pathlib import Path

import xxhash

# xxh3-128, not sha256: verify must run near disk read speed (sha256 manages ~0.5 GB/s on
# one core, xxh3 > 10 GB/s). The threat is corruption and truncation, not an adversary.
CHECKSUM = "xxh3_128"


def checksum_file(path: Path, block: int = 1 << 22) -> str:
    """Streamed through one reused buffer: memory stays a few MiB whatever the file size."""
    h = xxhash.xxh3_128()
    buf = bytearray(block)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def checksum_bytes(data: bytes | memoryview) -> str:
    return xxhash.xxh3_128(data).hexdigest()
