"""The checksum every mixer file is recorded with."""

from __future__ import annotations

from pathlib import Path

import xxhash

# xxh3-128, not sha256: verify must run near disk read speed (sha256 manages ~0.5 GB/s on
# one core, xxh3 > 10 GB/s). The threat is corruption and truncation, not an adversary.
CHECKSUM = "xxh3_128"


def checksum_file(path: Path, block: int = 1 << 24) -> str:
    h = xxhash.xxh3_128()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def checksum_bytes(data: bytes | memoryview) -> str:
    return xxhash.xxh3_128(data).hexdigest()
