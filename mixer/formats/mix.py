"""manifest.json: the claims a mix makes about itself, and the checksums behind them."""

from __future__ import annotations

from pathlib import Path

import xxhash

from mixer.formats.atomic import read_json
from mixer.errors import MixerError

MIX_FORMAT = "mixer-mix/1"
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


def load_manifest(mix_dir: Path | str) -> dict:
    path = Path(mix_dir) / "manifest.json"
    if not path.exists():
        pending = Path(mix_dir) / ".build" / "spec.json"
        hint = " (the build is unfinished: re-run the same mixer build to complete it)" if pending.exists() else ""
        raise MixerError(f"{path}: no manifest; not a finished mix{hint}")
    manifest = read_json(path)
    if manifest.get("format") != MIX_FORMAT:
        raise MixerError(f"{path}: not a {MIX_FORMAT} manifest (format={manifest.get('format')!r})")
    return manifest
