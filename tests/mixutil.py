"""Small learnable token stores and mixes for the training tests.

Each source is a Markov chain over a small vocabulary with its own sparse transition
table, so a tiny model learns it in seconds, the domain and general sources differ (a
finetune on one measurably forgets the other), and stores follow docs/formats.md exactly.
Mixes are made by the real `mixer build`.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

import storeutil

VOCAB = 128
EOS = VOCAB - 1


def markov_docs(n_docs: int, seed: int, table_seed: int, branching: int = 3) -> list[np.ndarray]:
    """Documents from a fixed chain (table_seed) with each token followed by one of `branching` tokens."""
    table = np.random.default_rng(table_seed).integers(0, EOS, size=(EOS, branching))
    rng = np.random.default_rng(seed)
    docs = []
    for _ in range(n_docs):
        n = int(rng.integers(20, 120))
        doc = np.empty(n, dtype=np.int64)
        doc[0] = rng.integers(0, EOS)
        picks = rng.integers(0, branching, size=n)
        for i in range(1, n):
            doc[i] = table[doc[i - 1], picks[i]]
        docs.append(doc)
    return docs


def write_store(root: Path, name: str, role: str, splits: dict[str, list[np.ndarray]],
                sha: str = "markov-128") -> Path:
    """A sealed store of Markov-token splits {split: [tokens without EOS]}, ids name/split/i."""
    named = {split: [(f"{name}/{split}/{i}", t) for i, t in enumerate(docs)] for split, docs in splits.items()}
    return storeutil.write_store(root, name, role, named,
                                 tokenizer={"name": "markov", "sha256": sha, "vocab_size": VOCAB, "eos_id": EOS})


def make_stores(root: Path, general_docs: int = 3000, domain_docs: int = 60, sha: str = "markov-128",
                domain_val: bool = True) -> Path:
    """`prose` (general, train/val) and `music` (domain, train/val/test; train/test without
    `domain_val`, as stores made before domain validation splits) stores under root."""
    write_store(root, "prose", "general", {"train": markov_docs(general_docs, 1, table_seed=100),
                                           "val": markov_docs(40, 2, table_seed=100)}, sha)
    domain = {"train": markov_docs(domain_docs, 3, table_seed=200), "test": markov_docs(40, 4, table_seed=200)}
    if domain_val:
        domain["val"] = markov_docs(30, 5, table_seed=200)
    write_store(root, "music", "domain", domain, sha)
    return Path(root)


def build(stores: Path, out: Path, *flags: str) -> Path:
    """`mixer build` as a user runs it."""
    cmd = [sys.executable, "-m", "mixer", "build", "--stores", str(stores), "--domain", "music", "--out", str(out),
           "--quiet", *flags]
    p = subprocess.run(cmd, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    return out


def spt_and_ft_mixes(root: Path) -> dict[str, Path]:
    """Small stores under root and two mixes of them: `spt` (10% domain, 20K tokens) and `ft`
    (4 domain epochs), both at seq-len 32; for the training tests' module fixtures."""
    stores = make_stores(root / "stores", general_docs=300, domain_docs=30)
    return {"root": root,
            "spt": build(stores, root / "spt", "--fraction", "0.1", "--tokens", "20K", "--seq-len", "32"),
            "ft": build(stores, root / "ft", "--epochs", "4", "--seq-len", "32")}


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    """The CLI in this process (no second torch import): (exit code, stdout, stderr)."""
    from mixer.cli import main

    try:
        main(list(args))
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err
