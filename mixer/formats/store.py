"""Token stores: one source after tokenization, read with numpy alone.

Layout (datatrove's tokenizer format, reused rather than reinvented):

    STORES/<source>/store.json            description: tokenizer, dtype, split sizes
    STORES/<source>/<split>.ds            tokens, little-endian uint16/uint32; every doc ends with EOS
    STORES/<source>/<split>.ds.index      uint64 document end offsets (in tokens), as datatrove writes
    STORES/<source>/<split>.ids           document ids, one per line, same order

Splits: domain stores hold `train` and `test`; general stores `train` and `val`.
Documents are stored in a canonical order (input files sorted by path, then position in
the file), so a store is byte-identical whatever the number of tasks that wrote it.

store.json carries a checksum of every other file and of its own content (`checksums`),
so a build can prove it read the bytes the tokenizer wrote, and a mix can name them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Literal, get_args

import numpy as np

from mixer.formats.atomic import read_json, read_versioned, write_versioned
from mixer.errors import MixerError
from mixer.formats.checksum import CHECKSUM, checksum_bytes, checksum_file

STORE_FORMAT = "mixer-store/1"
Role = Literal["domain", "general"]  # a store's role in a mix
ROLES: tuple[str, ...] = get_args(Role)
HELDOUT_SPLIT = {"domain": "test", "general": "val"}


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (GPT-2's 50,257 does), else uint32."""
    return np.dtype("<u2") if vocab_size <= 2**16 else np.dtype("<u4")



def lengths_u32(ends: np.ndarray) -> np.ndarray:
    """Document lengths from an index of document ends, as uint32 (documents < 4G tokens),
    in chunks: a billion-document index is never widened to int64 whole."""
    out = np.empty(len(ends), dtype=np.uint32)
    prev = 0
    for i in range(0, len(ends), 1 << 24):
        chunk = np.asarray(ends[i : i + (1 << 24)], dtype=np.int64)
        out[i : i + len(chunk)] = np.diff(chunk, prepend=prev)
        prev = int(chunk[-1])
    return out

@dataclass
class Store:
    path: Path
    meta: dict = field(repr=False)

    @property
    def name(self) -> str:
        return self.meta["source"]

    @property
    def role(self) -> str:
        return self.meta["role"]

    @property
    def heldout(self) -> str:
        return HELDOUT_SPLIT[self.role]

    @property
    def tokenizer(self) -> dict:
        return self.meta["tokenizer"]

    @property
    def eos_id(self) -> int:
        return int(self.meta["tokenizer"]["eos_id"])

    @property
    def vocab_size(self) -> int:
        return int(self.meta["tokenizer"]["vocab_size"])

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.meta["dtype"])

    @property
    def splits(self) -> list[str]:
        return list(self.meta["splits"])

    def n_tokens(self, split: str = "train") -> int:
        return int(self.meta["splits"][split]["tokens"])

    def n_docs(self, split: str = "train") -> int:
        return int(self.meta["splits"][split]["documents"])

    def tokens(self, split: str = "train") -> np.ndarray:
        f = self._file(split, ".ds")
        if f.stat().st_size == 0:
            return np.zeros(0, dtype=self.dtype)
        return np.memmap(f, dtype=self.dtype, mode="r")

    def doc_ends(self, split: str = "train") -> np.ndarray:
        return self._ends[split]

    def doc_starts(self, split: str = "train") -> np.ndarray:
        ends = self.doc_ends(split)
        return np.concatenate([np.zeros(1, dtype=np.uint64), ends[:-1]])

    def doc_lengths(self, split: str = "train") -> np.ndarray:
        return np.diff(self.doc_ends(split), prepend=np.uint64(0)).astype(np.int64)

    def doc_ids(self, split: str = "train") -> list[str]:
        return self._file(split, ".ids").read_text(encoding="utf-8").splitlines()

    def document(self, split: str, i: int) -> np.ndarray:
        ends = self.doc_ends(split)
        start = int(ends[i - 1]) if i else 0
        return np.asarray(self.tokens(split)[start : int(ends[i])])

    @cached_property
    def _ends(self) -> dict[str, np.ndarray]:
        out = {}
        for split in self.splits:
            f = self._file(split, ".ds.index")
            # memmap: a 200B-token store has ~100M documents; the index stays on disk
            ends = np.memmap(f, dtype="<u8", mode="r") if f.stat().st_size else np.zeros(0, dtype="<u8")
            if len(ends) != self.n_docs(split) or (len(ends) and int(ends[-1]) != self.n_tokens(split)):
                raise MixerError(f"{f}: index does not match store.json ({len(ends)} documents); re-run mixer tokenize")
            out[split] = ends
        return out

    def _file(self, split: str, suffix: str) -> Path:
        if split not in self.meta["splits"]:
            raise MixerError(f"{self.path}: store has no split {split!r} (has {', '.join(self.splits)})")
        f = self.path / f"{split}{suffix}"
        if not f.exists():
            raise MixerError(f"{f}: missing; the store is incomplete, re-run mixer tokenize")
        return f


def meta_digest(meta: dict) -> str:
    """Checksum of store.json's content other than its `checksums` block (canonical JSON), so
    an edited eos_id, vocab_size or split size is caught like a flipped token."""
    rest = {k: v for k, v in meta.items() if k != "checksums"}
    return checksum_bytes(json.dumps(rest, sort_keys=True, separators=(",", ":")).encode())


def seal(folder: Path, meta: dict) -> dict:
    """The `checksums` block for a store folder: every file but store.json (and hidden
    ones), then the description itself. Called last, when the folder is complete."""
    files = {}
    for f in sorted(Path(folder).iterdir()):
        if f.is_file() and f.name != "store.json" and not f.name.startswith("."):
            files[f.name] = {"bytes": f.stat().st_size, CHECKSUM: checksum_file(f)}
    return {"files": files, f"meta_{CHECKSUM}": meta_digest(meta)}


def write_store_meta(folder: Path | str, meta: dict) -> Path:
    """FOLDER/store.json, atomically and last (its presence means the store is complete): the
    one writer of what `open_store` reads."""
    return write_versioned(folder, "store.json", meta, STORE_FORMAT)


def seal_store(path: Path | str) -> dict:
    """Add the checksums block to an existing store.json (for stores written by hand)."""
    meta = read_json(Path(path) / "store.json")
    meta["checksums"] = seal(Path(path), meta)
    write_store_meta(path, meta)
    return meta


def store_checksums(path: Path, meta: dict) -> dict:
    """The store's recorded checksums; a store written before they existed is refused:
    nothing would tie a mix to the bytes it was built from."""
    block = meta.get("checksums")
    if not isinstance(block, dict) or not isinstance(block.get("files"), dict):
        raise MixerError(
            f"{path / 'store.json'}: written by an older mixer, without file checksums; re-run "
            f"`mixer tokenize --force` for source {meta.get('source', path.name)!r} (same inputs give the same store)"
        )
    if block.get(f"meta_{CHECKSUM}") != meta_digest(meta):
        raise MixerError(f"{path / 'store.json'}: its content does not match its checksum (edited or corrupted); "
                         "re-run mixer tokenize --force for this source")
    return block


def check_store_files(path: Path, meta: dict, cache: dict | None = None, recheck: bool = False) -> dict:
    """Prove every file of the store has the bytes store.json claims; return its checksums block.

    `cache` maps a file's absolute path to the (bytes, mtime_ns, checksum) last verified; a
    file whose size and mtime are unchanged is trusted without reading it (unless
    `recheck`). Entries for files read now are added to `cache` in place.
    """
    block = store_checksums(path, meta)
    for name, rec in block["files"].items():
        f = (path / name).resolve()
        try:
            st = f.stat()
        except FileNotFoundError:
            raise MixerError(f"{f}: missing; the store is incomplete, re-run mixer tokenize --force") from None
        if st.st_size != rec["bytes"]:
            raise MixerError(f"{f}: {st.st_size} bytes, store.json says {rec['bytes']} (truncated or modified); "
                             "re-run mixer tokenize --force for this source")
        seen = (cache or {}).get(str(f))
        if not recheck and seen == {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns, CHECKSUM: rec[CHECKSUM]}:
            continue
        if checksum_file(f) != rec[CHECKSUM]:
            raise MixerError(f"{f}: checksum mismatch ({CHECKSUM}): the store file was modified or corrupted after "
                             "mixer tokenize wrote it; re-run mixer tokenize --force for this source")
        if cache is not None:
            cache[str(f)] = {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns, CHECKSUM: rec[CHECKSUM]}
    return block


def open_store(stores: Path | str, name: str) -> Store:
    """Open STORES/<name>; a clear error when it is missing or not a store."""
    path = Path(stores) / name
    meta_file = path / "store.json"
    if not meta_file.exists():
        have = ", ".join(s.name for s in list_stores(stores)) or "none"
        raise MixerError(f"{meta_file}: no token store named {name!r} in {stores} (stores there: {have})")
    return Store(path=path, meta=read_versioned(meta_file, STORE_FORMAT, "store"))


def list_stores(stores: Path | str) -> list[Store]:
    root = Path(stores)
    if not root.is_dir():
        return []
    return [open_store(root, p.parent.name) for p in sorted(root.glob("*/store.json"))]


def check_same_tokenizer(stores: list[Store]) -> dict:
    """All stores of one study must share a tokenizer; returns it."""
    first = stores[0]
    for s in stores[1:]:
        if s.tokenizer["sha256"] != first.tokenizer["sha256"]:
            raise MixerError(
                f"{s.path}: tokenized with {s.tokenizer.get('name')} (sha256 {s.tokenizer['sha256'][:12]}) but "
                f"{first.path} with {first.tokenizer.get('name')} (sha256 {first.tokenizer['sha256'][:12]}); "
                "re-tokenize so every store of a study shares one tokenizer"
            )
    return first.tokenizer
