"""Token stores: one source after tokenization, read with numpy alone.

Layout (datatrove's tokenizer format, reused rather than reinvented):

    STORES/<source>/store.json            description: tokenizer, dtype, split sizes
    STORES/<source>/<split>.ds            tokens, little-endian uint16/uint32; every doc ends with EOS
    STORES/<source>/<split>.ds.index      uint64 document end offsets (in tokens), as datatrove writes
    STORES/<source>/<split>.ids           document ids, one per line, same order

Splits: domain stores hold `train` and `test`; general stores `train` and `val`.
Documents are stored in a canonical order (input files sorted by path, then position in
the file), so a store is byte-identical whatever the number of tasks that wrote it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from mixer.formats.atomic import read_json
from mixer.errors import MixerError

STORE_FORMAT = "mixer-store/1"
HELDOUT_SPLIT = {"domain": "test", "general": "val"}


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (GPT-2's 50,257 does), else uint32."""
    return np.dtype("<u2") if vocab_size <= 2**16 else np.dtype("<u4")


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


def open_store(stores: Path | str, name: str) -> Store:
    """Open STORES/<name>; a clear error when it is missing or not a store."""
    path = Path(stores) / name
    meta_file = path / "store.json"
    if not meta_file.exists():
        have = ", ".join(s.name for s in list_stores(stores)) or "none"
        raise MixerError(f"{meta_file}: no token store named {name!r} in {stores} (stores there: {have})")
    meta = read_json(meta_file)
    if meta.get("format") != STORE_FORMAT:
        raise MixerError(f"{meta_file}: not a {STORE_FORMAT} store (format={meta.get('format')!r})")
    return Store(path=path, meta=meta)


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
