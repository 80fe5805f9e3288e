"""What an audit compares: the held-out splits of a mix's stores against its training shards,
or stores and training files given by hand (files made by other tools)."""

from __future__ import annotations

import glob
from pathlib import Path

import numpy as np

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
        for f, s in zip(files, m["shards"]):
            _check_size(Path(f.path), int(s["samples"]), int(m["seq_len"]), np.dtype(m["dtype"]))
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
    seq_len + 1 tokens, with a NAME.prov.npy beside NAME.bin picked up) from outside mixer.
    A shard of a mix takes its dtype and seq_len from the mix's manifest; any file's dtype is
    checked against its size, its first tokens and the stores' vocabulary (a uint32 file
    read as uint16 would hold valid-looking ids and match nothing: a silent "clean")."""
    stores = [open_store(p.parent, p.name) for p in heldout]
    paths = []
    for pattern in train:
        found = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not found:
            raise MixerError(f"{pattern}: no training files match")
        paths += found
    if seq_len is not None and seq_len < 1:
        raise UsageError(f"--seq-len {seq_len}: must be positive")
    vocab = max(s.vocab_size for s in stores)
    files = []
    for p in paths:
        dt, sl = _from_manifest(p, dtype, seq_len)
        dt = dt or ({"uint16": "<u2", "uint32": "<u4"}[dtype] if dtype else str(stores[0].dtype.str))
        f = TrainFile(p, dt, sl + 1 if sl else None, _sidecar(p) if sl else None)
        check_tokens(f, vocab, given=dtype is not None)
        files.append(f)
    return stores, files, {}


def _from_manifest(path: str, dtype: str | None, seq_len: int | None) -> tuple[str | None, int | None]:
    """(dtype, seq_len) of a shard from its mix's manifest.json, checked against the flags and
    the file's size; (None, seq_len) for a file that is not a shard of a mix."""
    p = Path(path)
    manifest = p.parent / "manifest.json"
    if not manifest.is_file():
        return None, seq_len
    try:
        m = load_manifest(p.parent)
        shard = next((s for s in m["shards"] if s["file"] == p.name), None)
        if shard is None:
            return None, seq_len
        dt, sl, samples = np.dtype(m["dtype"]), int(m["seq_len"]), int(shard["samples"])
    except (KeyError, TypeError, ValueError) as e:
        raise MixerError(f"{manifest}: missing or bad field {e} (not a mixer-mix/1 manifest?)") from None
    if dtype is not None and np.dtype({"uint16": "<u2", "uint32": "<u4"}[dtype]) != dt:
        raise UsageError(f"--dtype {dtype}: {p} is a shard of the mix {p.parent}, whose manifest says {dt.name}")
    if seq_len is not None and seq_len != sl:
        raise UsageError(f"--seq-len {seq_len}: {p} is a shard of the mix {p.parent}, whose manifest says {sl}")
    _check_size(p, samples, sl, dt)
    return dt.str, sl


def _check_size(p: Path, samples: int, seq_len: int, dt: np.dtype) -> None:
    want = samples * (seq_len + 1) * dt.itemsize
    if p.is_file() and p.stat().st_size != want:
        raise MixerError(f"{p}: {p.stat().st_size} bytes, the manifest's {samples} samples of {seq_len + 1} {dt.name} "
                         f"tokens are {want}; run mixer verify {p.parent}")


SNIFF = 1 << 16  # tokens read to check a file's dtype: 128 KB of each, a fraction of what the scan reads


def check_tokens(f: TrainFile, vocab_size: int, given: bool) -> None:
    """Refuse a training file whose dtype cannot be right: ids beyond the vocabulary (a
    uint16 file read as uint32, or another tokenizer), or a file read as uint16 whose every
    second value is 0 (uint32 tokens: their high halves)."""
    dt = np.dtype(f.dtype)
    how = "--dtype" if given else "the stores' dtype"
    if dt.itemsize == 2 and vocab_size > 1 << 16:
        raise UsageError(f"{f.path}: read as uint16 ({how}), but the vocabulary has {vocab_size} ids; use --dtype uint32")
    size = f.open()  # size checks, naming the file
    head = f.read(0, min(size, SNIFF))
    if len(head) and int(head.max()) >= vocab_size:
        raise UsageError(f"{f.path}: token id {int(head.max())} read as {dt.name} ({how}) is outside the vocabulary "
                         f"({vocab_size}); wrong --dtype, or another tokenizer?")
    if dt.itemsize == 2 and len(head) >= 64:
        high, low = head[1::2], head[0::2]
        if np.count_nonzero(high == 0) >= 0.9 * len(high) and np.count_nonzero(low == 0) < 0.5 * len(low):
            raise UsageError(f"{f.path}: read as uint16 ({how}), every second token is 0: these are uint32 tokens; "
                             "use --dtype uint32")


def _sidecar(path: str) -> str | None:
    """A mix shard's provenance next to it (shard-00000.bin -> shard-00000.prov.npy)."""
    p = Path(path)
    prov = p.with_name(p.name.removesuffix(".bin") + ".prov.npy")
    return str(prov) if prov.is_file() else None


def audit_inputs(mix: Path | None, heldout=(), train=(), seq_len: int | None = None, dtype: str | None = None
                 ) -> tuple[list[Store], list[TrainFile], dict[str, int], str]:
    """(stores, training files, source ids, a label for the report) of a mix, or of stores
    and training files given by hand; refuses a mix and files together."""
    if mix is not None and (heldout or train):
        raise UsageError("give either MIX or --heldout/--train, not both")
    if mix is None:
        if not heldout or not train:
            raise UsageError("give MIX, or both --heldout STORE... and --train FILE...")
        return (*file_inputs(heldout, train, seq_len, dtype), ", ".join(map(str, train)))
    if seq_len is not None or dtype is not None:
        raise UsageError("--seq-len/--dtype describe --train files; a mix's manifest has them")
    return (*mix_inputs(Path(mix)), str(mix))
