"""Token stores and training token files written by hand from real text, for tests.

`write_store` writes the mixer-store/1 layout of docs/formats.md (store.json, <split>.ds,
<split>.ds.index, <split>.ids) from token arrays, so a test controls exactly which
documents are held out; `write_samples` / `write_flat` write training files the way a mix
shard or a nanoGPT-style train.bin holds them.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterable

import numpy as np

from mixer.formats.store import seal_store

EOS_ID = 50256  # GPT-2's <|endoftext|>


def read_docs(sample_cache: Path, corpus: str, limit: int | None = None) -> list[tuple[str, str]]:
    """(id, text) of a sample corpus (samples/<corpus>.jsonl.zst), in file order."""
    from mixer.demo_corpora.fetch import read_jsonl_zst

    out = []
    for rec in read_jsonl_zst(Path(sample_cache) / "samples" / f"{corpus}.jsonl.zst"):
        if rec["text"].strip():
            out.append((rec["id"], rec["text"]))
        if limit is not None and len(out) >= limit:
            break
    return out


class Encoder:
    """GPT-2 (or any tokenizer.json) encoding without special-token parsing."""

    def __init__(self, tokenizer_path: Path) -> None:
        from tokenizers import Tokenizer

        self.path = Path(tokenizer_path)
        self.tok = Tokenizer.from_file(str(tokenizer_path))

    def __call__(self, texts: Iterable[str]) -> list[np.ndarray]:
        return [np.array(e.ids, dtype=np.uint16) for e in self.tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: np.ndarray) -> str:
        return self.tok.decode(ids.tolist())


def write_store(root: Path, name: str, role: str, splits: dict[str, list[tuple[str, np.ndarray]]],
                tokenizer_path: Path | None = None, *, tokenizer: dict | None = None) -> Path:
    """STORES/<name> with the given splits {split: [(doc id, tokens without EOS)]}, sealed.
    The tokenizer is a real tokenizer.json (`tokenizer_path`: GPT-2's ids, its sha256
    recorded) or, for synthetic ids, `tokenizer`: the store.json entry as is (name, sha256,
    vocab_size, eos_id)."""
    if (tokenizer_path is None) == (tokenizer is None):
        raise ValueError("write_store: give tokenizer_path or tokenizer, not both or neither")
    if tokenizer is None:
        sha = hashlib.sha256(Path(tokenizer_path).read_bytes()).hexdigest()
        tokenizer = {"name": "gpt2", "path": str(tokenizer_path), "sha256": sha, "vocab_size": 50257,
                     "eos_id": EOS_ID}
    eos = tokenizer["eos_id"]
    d = Path(root) / name
    d.mkdir(parents=True, exist_ok=True)
    meta_splits = {}
    for split, docs in splits.items():
        toks = np.concatenate([np.append(t, eos) for _, t in docs]).astype("<u2") if docs else np.zeros(0, "<u2")
        toks.tofile(d / f"{split}.ds")
        np.cumsum([len(t) + 1 for _, t in docs], dtype=np.uint64).astype("<u8").tofile(d / f"{split}.ds.index")
        (d / f"{split}.ids").write_text("".join(f"{i}\n" for i, _ in docs), encoding="utf-8")
        meta_splits[split] = {"documents": len(docs), "tokens": int(len(toks))}
    meta = {"format": "mixer-store/1", "source": name, "role": role, "tokenizer": tokenizer,
            "dtype": "<u2", "splits": meta_splits, "mixer_version": "test"}
    (d / "store.json").write_text(json.dumps(meta, indent=2))
    seal_store(d)  # checksums, as mixer tokenize writes them
    return d


def stream(docs: Iterable[np.ndarray]) -> np.ndarray:
    """Documents joined the way a mix stream holds them: each followed by EOS."""
    return np.concatenate([np.append(t, EOS_ID) for t in docs]).astype("<u2")


def write_flat(path: Path, docs: Iterable[np.ndarray]) -> Path:
    stream(docs).tofile(path)
    return Path(path)


def write_samples(path: Path, docs: Iterable[np.ndarray], seq_len: int) -> Path:
    """(n, seq_len+1) samples cut from the stream with a one-token overlap, as a mix shard;
    the last one padded with EOS, so every document given is in the file."""
    s = stream(docs)
    n = max(1, -(-(len(s) - 1) // seq_len))
    s = np.append(s, np.full(n * seq_len + 1 - len(s), EOS_ID, dtype=s.dtype))
    rows = np.lib.stride_tricks.sliding_window_view(s[: n * seq_len + 1], seq_len + 1)[::seq_len]
    np.ascontiguousarray(rows).tofile(path)
    return Path(path)
