"""What an audit compares: the held-out splits of a mix's stores against its training shards,
or stores and training files given by hand (files made by other tools)."""

from __future__ import annotations

import glob
from pathlib import Path

from mixer.checks.audit import TrainFile
from mixer.errors import MixerError, UsageError
from mixer.formats.mix import load_manifest
from mixer.formats.store import Store, open_store


def mix_inputs(mix: Path) -> tuple[list[Store], list[TrainFile], dict[str, int]]:
    """Every source of the mix (domain, general and the extra sources of an N-source mix),
    the mix's shards as training files (with their provenance, so samples are stitched back
    into streams), and each store's source id in that provenance."""
    manifest = Path(mix) / "manifest.json"
    m = load_manifest(mix)
    try:
        # every source of the mix; manifests that list no sources name their two roles
        # domains first (the report lists them in this order)
        names = [s["name"] for s in sorted(m["sources"], key=lambda s: s.get("role") != "domain")] if "sources" in m else [m[r] for r in ("domain", "general") if m.get(r)]
        stores = [open_store(m["stores"], name) for name in names]
        files = [TrainFile(str(Path(mix) / s["file"]), m["dtype"], int(m["seq_len"]) + 1,
                           str(Path(mix) / s["provenance"]) if s.get("provenance") else None) for s in m["shards"]]
        source_ids = {s["name"]: int(s["id"]) for s in m.get("sources", [])}
        sha = m["tokenizer"]["sha256"]
    except (KeyError, TypeError) as e:
        raise MixerError(f"{manifest}: missing field {e} (not a mixer-mix/1 manifest?)") from None
    if not stores:
        raise MixerError(f"{manifest}: lists no sources; nothing held out to audit")
    for s in stores:
        if s.tokenizer["sha256"] != sha:
            raise MixerError(f"{s.path}: tokenizer differs from the one {manifest} was built with; stores were re-tokenized?")
    return stores, files, source_ids


def file_inputs(heldout: list[Path], train: list[str], seq_len: int | None, dtype: str | None
                ) -> tuple[list[Store], list[TrainFile], dict[str, int]]:
    """Held-out store folders and training file globs (flat token files, or samples of
    seq_len + 1 tokens, with a NAME.prov.npy beside NAME.bin picked up) from outside mixer."""
    stores = [open_store(p.parent, p.name) for p in heldout]
    paths = []
    for pattern in train:
        found = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not found:
            raise MixerError(f"{pattern}: no training files match")
        paths += found
    if seq_len is not None and seq_len < 1:
        raise UsageError(f"--seq-len {seq_len}: must be positive")
    dt = {"uint16": "<u2", "uint32": "<u4"}[dtype] if dtype else str(stores[0].dtype.str)
    return stores, [TrainFile(p, dt, seq_len + 1 if seq_len else None, _sidecar(p) if seq_len else None)
                    for p in paths], {}


def _sidecar(path: str) -> str | None:
    """A mix shard's provenance next to it (shard-00000.bin -> shard-00000.prov.npy)."""
    p = Path(path)
    prov = p.with_name(p.name.removesuffix(".bin") + ".prov.npy")
    return str(prov) if prov.is_file() else None
