"""Benchmark: `mixer plan` for the paper's scale (200B tokens, seq-len 2048, 300M-token domain).

Synthetic stores: real index files (document ends) and sparse token files, so the plan
sees a 200B-token general store and a 300M-token domain without 400 GB on disk.

    .venv/bin/python bench/plan.py [--dir /tmp/mixer-bench-plan] [--general-docs 100000000]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def make_store(root: Path, name: str, role: str, tokens: int, docs: int, seed: int) -> None:
    d = root / name
    if (d / "store.json").exists():
        return
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    heldout = "test" if role == "domain" else "val"
    splits = {}
    for split, n_tok, n_doc in (("train", tokens, docs), (heldout, max(10_000, tokens // 100), max(10, docs // 100))):
        with open(d / f"{split}.ds.index", "wb") as f:
            # Document ends in chunks: lengths around the mean, the last one absorbing the remainder.
            mean, done, total = n_tok / n_doc, 0, 0
            for i in range(0, n_doc, 1 << 24):
                k = min(1 << 24, n_doc - i)
                lens = np.maximum(1, rng.integers(1, int(2 * mean), k))
                if i + k == n_doc:
                    lens[-1] = max(1, n_tok - total - int(lens[:-1].sum()))
                ends = total + np.cumsum(lens, dtype=np.uint64)
                total = int(ends[-1])
                ends.astype("<u8").tofile(f)
                done += k
        with open(d / f"{split}.ds", "wb") as f:
            f.truncate(total * 2)  # sparse: the plan never reads tokens
        (d / f"{split}.ids").write_text("")
        splits[split] = {"documents": n_doc, "tokens": total}
    meta = {"format": "mixer-store/1", "source": name, "role": role, "dtype": "<u2", "splits": splits,
            "tokenizer": {"name": "synthetic", "sha256": "bench", "vocab_size": 50257, "eos_id": 50256}}
    (d / "store.json").write_text(json.dumps(meta))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default="/tmp/mixer-bench-plan")
    ap.add_argument("--general-docs", type=int, default=100_000_000)
    ap.add_argument("--general-tokens", type=float, default=200e9)
    ap.add_argument("--domain-docs", type=int, default=1_000_000)
    ap.add_argument("--domain-tokens", type=float, default=300e6)
    a = ap.parse_args()
    root = Path(a.dir) / "stores"
    t = time.perf_counter()
    make_store(root, "dolma", "general", int(a.general_tokens), a.general_docs, 1)
    make_store(root, "musicpile", "domain", int(a.domain_tokens), a.domain_docs, 2)
    print(f"stores ready in {time.perf_counter() - t:.1f} s ({a.general_docs:,} general docs, {a.domain_docs:,} domain docs)")
    for fraction in ("0.02", "0.05"):
        cmd = [sys.executable, "-m", "mixer", "plan", "--stores", str(root), "--domain", "musicpile",
               "--fraction", fraction, "--tokens", "200B", "--seq-len", "2048", "--json"]
        t = time.perf_counter()
        p = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t
        if p.returncode:
            sys.exit(p.stderr)
        rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        s = json.loads(p.stdout)
        dom = next(x for x in s["sources"] if x["role"] == "domain")
        print(f"plan --fraction {fraction} --tokens 200B: {s['samples']:,} samples, {s['shards']} shards, "
              f"domain {dom['epochs']:.2f} epochs {dom['documents_full_passes']}: {wall:.1f} s, peak RSS {rss:,.0f} MiB")


if __name__ == "__main__":
    main()
