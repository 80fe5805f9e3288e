"""`mixer verify STORE`, and the store half of `mixer verify MIX`.

A store alone: every file against the checksums in store.json (and store.json against
its own), then what the format promises, from the bytes: each split's index rises
strictly and ends at the token count, every document ends with EOS, one id per
document, every token id below vocab_size.

A mix: every store it was built from still has the checksums its manifest recorded,
and every store file still has those bytes (re-read in full; --quick trusts a file
whose size and mtime are those the build verified). Checked before the shards, so a
store corrupted after the build is named as such rather than blamed on a shard.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from mixer.errors import MixerError
from mixer.formats.atomic import read_json
from mixer.formats.checksum import CHECKSUM, checksum_file
from mixer.formats.store import STORE_FORMAT, check_store_files, store_checksums

CHUNK = 1 << 24  # tokens (or index entries) per vectorized step: bounded memory on any store


def is_store(path: Path | str) -> bool:
    return (Path(path) / "store.json").is_file() and not (Path(path) / "manifest.json").exists()


def _count_lines(path: Path) -> int:
    n = 0
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            n += block.count(b"\n")
    return n


def _check_split(path: Path, meta: dict, split: str) -> dict:
    dtype, eos, vocab = np.dtype(meta["dtype"]), int(meta["tokenizer"]["eos_id"]), int(meta["tokenizer"]["vocab_size"])
    claim = meta["splits"][split]
    n_docs, n_tokens = int(claim["documents"]), int(claim["tokens"])
    ds, index, ids = path / f"{split}.ds", path / f"{split}.ds.index", path / f"{split}.ids"
    for f in (ds, index, ids):
        if not f.is_file():
            raise MixerError(f"{f}: missing; the store is incomplete, re-run mixer tokenize --force")
    if ds.stat().st_size != n_tokens * dtype.itemsize:
        raise MixerError(f"{ds}: {ds.stat().st_size} bytes, store.json says {n_tokens} tokens of {dtype}")
    if index.stat().st_size != n_docs * 8:
        raise MixerError(f"{index}: {index.stat().st_size // 8} entries, store.json says {n_docs} documents")
    ends = np.memmap(index, dtype="<u8", mode="r") if n_docs else np.zeros(0, "<u8")
    tokens = np.memmap(ds, dtype=dtype, mode="r") if n_tokens else np.zeros(0, dtype)
    prev = 0
    for a in range(0, n_docs, CHUNK):
        e = np.asarray(ends[a : a + CHUNK]).astype(np.int64)
        steps = np.diff(e, prepend=prev)
        if np.any(steps < 1):
            i = a + int(np.flatnonzero(steps < 1)[0])
            raise MixerError(f"{index}: entry {i} does not rise above the one before (every document holds at least its EOS)")
        if e[-1] > n_tokens:
            raise MixerError(f"{index}: entry {a + int(np.argmax(e > n_tokens))} points past the {n_tokens} tokens of {ds.name}")
        not_eos = np.flatnonzero(tokens[e - 1] != eos)
        if len(not_eos):
            raise MixerError(f"{ds}: document {a + int(not_eos[0])} does not end with EOS ({eos})")
        prev = int(e[-1])
    if prev != n_tokens:
        raise MixerError(f"{index}: ends at token {prev}, store.json says {n_tokens} tokens")
    for a in range(0, n_tokens, CHUNK):
        chunk = np.asarray(tokens[a : a + CHUNK])
        if int(chunk.max()) >= vocab:
            at = int(np.argmax(chunk >= vocab))
            raise MixerError(f"{ds}: token {a + at} is id {int(chunk[at])}, not below vocab_size {vocab}")
    lines = _count_lines(ids)
    if lines != n_docs:
        raise MixerError(f"{ids}: {lines} ids, store.json says {n_docs} documents")
    return {"documents": n_docs, "tokens": n_tokens}


def verify_store(path: Path | str) -> dict:
    """Check one store folder; returns a summary, raises MixerError naming the first problem."""
    path, t0 = Path(path), time.perf_counter()
    meta = read_json(path / "store.json")
    if not isinstance(meta, dict) or meta.get("format") != STORE_FORMAT:
        raise MixerError(f"{path / 'store.json'}: not a {STORE_FORMAT} store")
    block = check_store_files(path, meta, cache=None, recheck=True)
    eos, vocab = int(meta["tokenizer"]["eos_id"]), int(meta["tokenizer"]["vocab_size"])
    if not 0 <= eos < vocab:
        raise MixerError(f"{path / 'store.json'}: eos_id {eos} is not below vocab_size {vocab}")
    splits = {split: _check_split(path, meta, split) for split in meta["splits"]}
    n_bytes = sum(rec["bytes"] for rec in block["files"].values())
    seconds = time.perf_counter() - t0
    return {"store": str(path), "ok": True, "source": meta.get("source"), "role": meta.get("role"),
            "files": len(block["files"]), "bytes": n_bytes, "splits": splits, "seconds": round(seconds, 3),
            "mb_per_s": round(n_bytes / 1e6 / max(seconds, 1e-9), 1)}


def verify_mix_stores(mix: Path | str, manifest: dict, quick: bool = False) -> list[str] | None:
    """The stores a mix names still hold the bytes it was built from; returns their names,
    or None for a mix built before manifests recorded store checksums.

    quick: a store file whose size and mtime are those the build verified (the mix's
    .build/stores-checked.json) is not re-read; otherwise every store file is.
    """
    recorded = manifest.get("store_checksums")
    if recorded is None:
        return None
    cache = {}
    if quick and (Path(mix) / ".build" / "stores-checked.json").is_file():
        try:
            cache = read_json(Path(mix) / ".build" / "stores-checked.json")
        except MixerError:  # a damaged cache only costs re-reading
            cache = {}
    for name, rec in recorded.items():
        path = Path(rec["path"])
        if not (path / "store.json").is_file():
            raise MixerError(f"{path / 'store.json'}: missing; {mix} was built from the store {name!r} there")
        meta = read_json(path / "store.json")
        block = store_checksums(path, meta)
        if block != rec["checksums"]:
            changed = sorted(f for f in set(block["files"]) | set(rec["checksums"]["files"])
                             if block["files"].get(f) != rec["checksums"]["files"].get(f))
            what = ", ".join(changed) if changed else "store.json"
            raise MixerError(f"{path}: store {name!r} changed since {mix} was built ({what}; re-tokenized?); "
                             "the mix no longer matches its store")
        for fname, frec in block["files"].items():
            f = path / fname
            st = f.stat() if f.is_file() else None
            if st is not None and cache.get(str(f.resolve())) == {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns,
                                                                  CHECKSUM: frec[CHECKSUM]}:
                continue
            if st is None or st.st_size != frec["bytes"] or checksum_file(f) != frec[CHECKSUM]:
                raise MixerError(f"{f}: missing, truncated or its checksum does not match store.json: the store file "
                                 "was modified or corrupted after the build")
    return sorted(recorded)
