"""Synthetic corpora for the audit's fast tests: random-token documents (two documents
never share an n-gram of 13 random ids from 50,000), token stores in the mixer-store/1
layout, mixes made by the real `mixer build`, and hand-made shards with provenance sidecars
for the stream tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import pytest
import storeutil

from mixer.cli import main

EOS = 50256
VOCAB = 50257
PROV = np.dtype([("source", "<u2"), ("offset", "<u8")])


def random_docs(rng: np.random.Generator, n: int, lo: int = 40, hi: int = 400) -> list[np.ndarray]:
    return [rng.integers(0, 50_000, int(rng.integers(lo, hi))).astype("<u2") for _ in range(n)]


def write_store(root: Path, name: str, role: str, splits: dict[str, list[tuple[str, np.ndarray]]]) -> Path:
    """STORES/<name> from {split: [(id, tokens without EOS)]}; the tokenizer has no file, so
    the audit shows snippets as token ids."""
    return storeutil.write_store(root, name, role, splits, tokenizer={
        "name": "synthetic", "sha256": "synthetic-50257", "vocab_size": VOCAB, "eos_id": EOS})


def cli(capsys, *args) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        main([*map(str, args)])
        raise SystemExit(0)  # main returns normally on success
    out = capsys.readouterr()
    return e.value.code or 0, out.out, out.err


def build_mix(capsys, stores: Path, out: Path, *args: str) -> Path:
    code, _, err = cli(capsys, "build", "--stores", stores, "--out", out, "--quiet", *args)
    assert code == 0, err
    return out


def stream_of(docs: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.append(t, EOS) for t in docs]).astype("<u2")


def write_stitched(folder: Path, streams: dict[int, np.ndarray], seq_len: int, shards: int, seed: int = 0,
                   drop: dict[int, list[int]] | None = None) -> list[tuple[Path, Path]]:
    """Shards of a mix by hand: each source's stream cut into samples of seq_len + 1 tokens
    at offsets k * seq_len (the last one padded with EOS), all samples shuffled over
    `shards` files, each with its provenance sidecar. `drop`: sample indices to leave out."""
    folder.mkdir(parents=True, exist_ok=True)
    rows, prov = [], []
    for s, t in streams.items():
        n = max(1, -(-(len(t) - 1) // seq_len))
        t = np.append(t, np.full(n * seq_len + 1 - len(t), EOS, dtype=t.dtype))
        for k in range(n):
            if k in (drop or {}).get(s, []):
                continue
            rows.append(t[k * seq_len : k * seq_len + seq_len + 1])
            prov.append((s, k * seq_len))
    order = np.random.default_rng(seed).permutation(len(rows))
    out = []
    for j, part in enumerate(np.array_split(order, shards)):
        b, p = folder / f"shard-{j:05d}.bin", folder / f"shard-{j:05d}.prov.npy"
        np.array([rows[i] for i in part], dtype="<u2").reshape(-1, seq_len + 1).tofile(b)
        np.save(p, np.array([prov[i] for i in part], dtype=PROV))
        out.append((b, p))
    return out


def substitute_characters(text: str, fraction: float, rng: np.random.Generator) -> str:
    """`text` with `fraction` of its non-whitespace characters replaced, each by another
    character drawn from the text's own (so the copy keeps the text's alphabet and its
    word and line structure): the near copies the audit and the split are measured on."""
    chars = np.array(list(text))
    where = np.flatnonzero(~np.char.isspace(chars))
    at = rng.choice(where, int(round(fraction * len(where))), replace=False)
    pool = chars[where]
    new = pool[rng.integers(0, len(pool), len(at))]
    for _ in range(100):  # redraw those that drew the character they replace
        same = new == chars[at]
        if not same.any() or len(np.unique(pool)) < 2:
            break
        new[same] = pool[rng.integers(0, len(pool), int(same.sum()))]
    chars[at] = new
    return "".join(chars)
