"""Benchmark: `mixer plan` at the paper's scale, and the memory of plan and build tasks.

Synthetic stores: real index files (document ends) and sparse token files, so the plan
sees a 200B-token general store and a 300M-token domain without 400 GB on disk.

    .venv/bin/python bench/plan.py [--dir /tmp/mixer-bench-plan] [--general-docs 100000000]

`--memory 16M 64M 256M`: for each general store size (sealed, so a build accepts it;
`--mean-doc` tokens per document, default 64, keeps the sparse token file small), the
peak memory of `mixer plan`, of a first build task (`mixer build --shards 0:1`, which
computes the plan once into `.build/plan/`) and of a second task (`--shards K:K+1`, which
reads it). The mix takes ~0.98 epochs of the general store, 2% domain. Each process is
polled every 5 ms (/proc/PID/status) for its anonymous (RssAnon: heap, what must fit in
memory) and file-backed (RssFile: mapped pages of stores and plan files, page cache the
kernel reclaims) resident sizes; `VmHWM` is the kernel's peak of their sum.

    .venv/bin/python bench/plan.py --memory 16M 64M 256M
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mixer.units import parse_count  # noqa: E402


def make_store(root: Path, name: str, role: str, tokens: int, docs: int, seed: int, seal: bool = False) -> None:
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
    if seal:
        from mixer.formats.store import seal_store

        seal_store(d)


def watch(cmd: list[str]) -> dict:
    """Run `cmd`, polling its /proc status: wall s, peak RssAnon / RssFile / VmHWM in MiB."""
    t = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = {"RssAnon": 0, "RssFile": 0, "VmHWM": 0}
    status = Path(f"/proc/{p.pid}/status")
    while p.poll() is None:
        try:
            for line in status.read_text().splitlines():
                key, _, value = line.partition(":")
                if key in peak:
                    peak[key] = max(peak[key], int(value.split()[0]))
        except (OSError, ValueError, IndexError):
            pass
        time.sleep(0.005)
    out, err = p.communicate()
    if p.returncode:
        sys.exit(f"{' '.join(cmd)}: {err[-2000:]}")
    return {"wall": time.perf_counter() - t, "stdout": out, **{k: v / 1024 for k, v in peak.items()}}


def memory(a: argparse.Namespace) -> None:
    mixer = [sys.executable, "-m", "mixer"]
    print("| general documents | process | wall s | peak RssAnon MiB | peak RssFile MiB | VmHWM MiB |")
    print("|---:|---|---:|---:|---:|---:|")
    for docs_text in a.memory:
        docs = parse_count(docs_text)
        root = Path(a.dir) / f"mem-{docs_text}"
        stores = root / "stores"
        make_store(stores, "web", "general", docs * a.mean_doc, docs, 1, seal=True)
        make_store(stores, "music", "domain", 30_000_000, 100_000, 2, seal=True)
        general = json.loads((stores / "web" / "store.json").read_text())["splits"]["train"]["tokens"]
        flags = ["--stores", str(stores), "--domain", "music", "--fraction", "0.02", "--tokens", str(general),
                 "--seq-len", "2048"]
        out = root / "mix"
        shutil.rmtree(out, ignore_errors=True)
        plan = watch([*mixer, "plan", *flags, "--json"])
        shards = json.loads(plan["stdout"])["shards"]
        rows = [("mixer plan", plan),
                ("build, first task (plans)", watch([*mixer, "build", *flags, "--out", str(out), "--shards", "0:1", "--quiet"])),
                ("build, second task", watch([*mixer, "build", *flags, "--out", str(out), "--shards",
                                               f"{shards // 2}:{shards // 2 + 1}", "--quiet"]))]
        for what, r in rows:
            print(f"| {docs:,} | {what} | {r['wall']:.1f} | {r['RssAnon']:,.0f} | {r['RssFile']:,.0f} | {r['VmHWM']:,.0f} |",
                  flush=True)
        if not a.keep:
            shutil.rmtree(root)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default="/tmp/mixer-bench-plan")
    ap.add_argument("--general-docs", type=int, default=100_000_000)
    ap.add_argument("--general-tokens", type=float, default=200e9)
    ap.add_argument("--domain-docs", type=int, default=1_000_000)
    ap.add_argument("--domain-tokens", type=float, default=300e6)
    ap.add_argument("--memory", nargs="+", metavar="DOCS", help="general store sizes for the memory table (16M 64M 256M)")
    ap.add_argument("--mean-doc", type=int, default=64, help="mean tokens per general document (--memory)")
    ap.add_argument("--keep", action="store_true", help="keep the --memory stores and mixes")
    a = ap.parse_args()
    if a.memory:
        memory(a)
        return
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
