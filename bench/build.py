"""Benchmark: build throughput next to `cp` of the same bytes, and verify next to a sequential read.

    .venv/bin/python bench/build.py [--dir /tmp/mixer-bench-build] [--tokens 500M]

Stores hold random tokens (a 600M-token general store, a 30M-token domain); the mix is
2% domain at seq-len 2048. Peak memory is measured at two budgets to show it does not
grow with the size of the build. Runs single-process (one task), the laptop case.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from mixer.formats.store import seal_store


def make_store(root: Path, name: str, role: str, tokens: int, mean_doc: int, seed: int) -> None:
    d = root / name
    if (d / "store.json").exists():
        if "checksums" not in json.loads((d / "store.json").read_text()):
            seal_store(d)  # a store this script wrote before stores carried checksums
        return
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    splits = {}
    for split, n_tok in (("train", tokens), ("test" if role == "domain" else "val", tokens // 200)):
        lens = rng.integers(1, 2 * mean_doc, n_tok // mean_doc + 1)
        ends = np.cumsum(lens)
        ends = ends[ends <= n_tok]
        with open(d / f"{split}.ds", "wb") as f:
            for i in range(0, int(ends[-1]), 1 << 26):
                f.write(rng.integers(0, 50256, min(1 << 26, int(ends[-1]) - i), dtype=np.uint16).tobytes())
        toks = np.memmap(d / f"{split}.ds", dtype="<u2", mode="r+")
        toks[ends - 1] = 50256
        toks.flush()
        ends.astype("<u8").tofile(d / f"{split}.ds.index")
        (d / f"{split}.ids").write_text("".join(f"{i}\n" for i in range(len(ends))))
        splits[split] = {"documents": len(ends), "tokens": int(ends[-1])}
    meta = {"format": "mixer-store/1", "source": name, "role": role, "dtype": "<u2", "splits": splits,
            "tokenizer": {"name": "synthetic", "sha256": "bench", "vocab_size": 50257, "eos_id": 50256}}
    (d / "store.json").write_text(json.dumps(meta))
    seal_store(d)  # checksums, as mixer tokenize writes them (build refuses a store without)


def drop_caches() -> bool:
    """Cold-cache measurements where permitted (root): sync, then drop the page cache."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def timed(cmd: list[str], cold: bool = False) -> tuple[float, float]:
    """Wall seconds and the child's peak RSS in MiB (one child per measurement)."""
    if cold:
        drop_caches()
    code = ("import resource,subprocess,sys,time;t=time.perf_counter();r=subprocess.run(sys.argv[1:]);"
            "print(time.perf_counter()-t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss/1024);sys.exit(r.returncode)")
    p = subprocess.run([sys.executable, "-c", code, *cmd], capture_output=True, text=True)
    if p.returncode:
        sys.exit(p.stderr[-2000:])
    wall, rss = p.stdout.split()[-2:]
    return float(wall), float(rss)


def make_stores(stores: Path, general_tokens: int = 600_000_000) -> None:
    """The build benchmarks' stores: a general `web` store of 1,500-token mean documents and a
    30M-token `domain` of 300-token ones (each written once, then reused)."""
    make_store(stores, "web", "general", general_tokens, 1500, 1)
    make_store(stores, "domain", "domain", 30_000_000, 300, 2)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default="/tmp/mixer-bench-build")
    ap.add_argument("--tokens", default="500M")
    a = ap.parse_args()
    root = Path(a.dir)
    stores = root / "stores"
    make_stores(stores)
    mixer = [sys.executable, "-m", "mixer"]
    timed(["sh", "-c", f"cat {stores}/*/*.ds {stores}/*/*.ds.index > /dev/null"])  # warm stores, as cp's source is
    rows = []
    for tokens in ("250M", a.tokens):
        out = root / f"mix-{tokens}"
        shutil.rmtree(out, ignore_errors=True)
        wall, rss = timed([*mixer, "build", "--stores", str(stores), "--domain", "domain", "--fraction", "0.02",
                           "--tokens", tokens, "--seq-len", "2048", "--out", str(out), "--quiet"])
        size = sum(f.stat().st_size for f in out.glob("shard-*.bin"))
        rows.append((tokens, out, wall, rss, size))
        print(f"build {tokens:>5}: {size / 1e6:,.0f} MB of shards in {wall:.2f} s = {size / 1e6 / wall:,.0f} MB/s, peak RSS {rss:,.0f} MiB")
    tokens, out, wall, rss, size = rows[-1]
    src = root / "cp-src.bin"
    with open(src, "wb") as f:  # the same byte count, written once, then copied as cp would
        for shard in sorted(out.glob("shard-*.bin")):
            f.write(shard.read_bytes())
    dst = root / "cp-dst.bin"
    cp_wall, _ = timed(["cp", str(src), str(dst)])
    print(f"cp    {tokens:>5}: {size / 1e6:,.0f} MB in {cp_wall:.2f} s = {size / 1e6 / cp_wall:,.0f} MB/s -> build/cp = {cp_wall / wall:.2f}x")
    os.remove(dst)
    sync_wall, _ = timed(["sh", "-c", f"cp {src} {dst} && sync"])
    print(f"cp+sync {tokens:>3}: {size / 1e6 / sync_wall:,.0f} MB/s (build fsyncs every shard) -> build/(cp+sync) = {sync_wall / wall:.2f}x")
    cold = drop_caches()
    for label, is_cold in (("warm", False), ("cold", True)) if cold else (("warm", False),):
        v_wall, v_rss = timed([*mixer, "verify", str(out), "--quiet"], is_cold)
        r_wall, _ = timed(["sh", "-c", f"cat {out}/shard-*.bin > /dev/null"], is_cold)
        q_wall, _ = timed([*mixer, "verify", str(out), "--quick", "--quiet"], is_cold)
        print(f"verify {tokens} ({label} page cache): full {size / 1e6 / v_wall:,.0f} MB/s (peak RSS {v_rss:,.0f} MiB), "
              f"--quick {size / 1e6 / q_wall:,.0f} MB/s; sequential read (cat) {size / 1e6 / r_wall:,.0f} MB/s "
              f"-> full/read = {r_wall / v_wall:.2f}x, quick/read = {r_wall / q_wall:.2f}x")
    if cold:
        os.remove(dst)
        c_wall, _ = timed(["sh", "-c", f"cp {src} {dst} && sync"], True)
        print(f"cp+sync {tokens} (cold): {size / 1e6 / c_wall:,.0f} MB/s -> build/(cp+sync) = {c_wall / wall:.2f}x")
    os.remove(src), os.remove(dst)


if __name__ == "__main__":
    main()
