"""Synthetic token stores whose tokens say where they came from.

Every token of train document i of a store is `base + i` (then EOS), so a test can
recount documents and sources from shard bytes with numpy alone, independently of mixer.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mixer.formats.store import seal_store

EOS = 65535


def make_store(root: Path, name: str, role: str, n_docs: int, base: int, seed: int = 0,
               min_len: int = 3, max_len: int = 40, heldout_docs: int = 6, sha: str = "synthetic-tok") -> Path:
    d = Path(root) / name
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    splits = {}
    heldout = "test" if role == "domain" else "val"
    for split, n, b in (("train", n_docs, base), (heldout, heldout_docs, base + n_docs)):
        lens = rng.integers(min_len, max_len, n)
        toks = np.repeat(np.arange(b, b + n), lens).astype("<u2")
        ends = np.cumsum(lens)
        toks[ends - 1] = EOS
        toks.tofile(d / f"{split}.ds")
        ends.astype("<u8").tofile(d / f"{split}.ds.index")
        (d / f"{split}.ids").write_text("".join(f"{name}/{split}/{i}\n" for i in range(n)))
        splits[split] = {"documents": int(n), "tokens": int(lens.sum())}
    meta = {"format": "mixer-store/1", "source": name, "role": role,
            "tokenizer": {"name": "synthetic", "sha256": sha, "vocab_size": 65536, "eos_id": EOS},
            "dtype": "<u2", "splits": splits}
    (d / "store.json").write_text(json.dumps(meta))
    seal_store(d)  # checksums, as mixer tokenize writes them
    return d


def doc_lengths(store_dir: Path, split: str = "train") -> np.ndarray:
    return np.diff(np.fromfile(Path(store_dir) / f"{split}.ds.index", dtype="<u8"), prepend=0).astype(np.int64)


def naive_stream(store, stream, epochs: int) -> np.ndarray:
    """A source stream materialized the obvious way, for checking `SourceStream.gather`: the
    store's train documents in `stream`'s permutation of each epoch, one after another."""
    tokens, ends = np.asarray(store.tokens()), store.doc_ends()
    docs = [tokens[(ends[i - 1] if i else 0):ends[i]] for i in range(len(ends))]
    return np.concatenate([docs[j] for e in range(epochs) for j in stream.permutation(e)])
