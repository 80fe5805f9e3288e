"""Benchmark: build throughput from a store in the page cache (warm) and from disk (cold).

    .venv/bin/python bench/build_cold.py [--dir /tmp/mixer-bench-cold] [--general-tokens 2B] [--tokens 500M]

Stores of random tokens (a general store of --general-tokens, 1,500-token mean documents;
a 30M-token domain, 300-token documents), sealed; the mix is 2% domain at seq-len 2048,
one task. A first `mixer build --shards 0:1` claims the folder (it proves the stores'
checksums, which reads them whole) and computes the plan; the measured run is the resume
that writes every other shard, as a task does on a machine whose page cache never held the
store. Before a cold run every store file is fdatasync'ed and its pages dropped with
posix_fadvise(POSIX_FADV_DONTNEED) (`fincore` reports what stayed); before a warm run the
store files are read whole. Each run builds a fresh folder; the runs' shard checksums must
agree. Prints MB/s of shards written.

Two cold cases: `cold` drops the store's pages once, before the resume (a store that fits
in RAM gets warm while the build reads it); `cold per shard` drops them before every
shard, in one process (`build(..., shards="k:k+1")` in a loop, the same loop warm for
comparison): no page read for one shard helps the next, as when the store is much larger
than RAM or every task runs on a node that never read it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.build import make_stores  # noqa: E402
from mixer.units import parse_count  # noqa: E402


def store_files(stores: Path) -> list[Path]:
    return sorted(p for p in stores.rglob("*") if p.is_file())


def drop(files: list[Path]) -> None:
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fdatasync(fd)  # dirty pages are not dropped
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def warm(files: list[Path]) -> None:
    for f in files:
        with open(f, "rb", buffering=0) as fh:
            while fh.read(1 << 24):
                pass


def cached_mb(files: list[Path]) -> float:
    """Resident page-cache MB of the files, from util-linux `fincore` (nan without it)."""
    try:
        out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", *map(str, files)],
                             capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return float("nan")
    return sum(int(x) for x in out.split()) / 1e6


def per_shard(stores: str, out: str, tokens: str, cold: bool) -> None:
    """Write every shard but the first, one `build` call each, dropping the store's pages
    before each when `cold`; then the manifest."""
    from mixer.mixing.build import build
    from mixer.mixing.spec import MixSpec

    spec = MixSpec(stores=stores, domain="domain", fraction=0.02, tokens=parse_count(tokens), seq_len=2048)
    files = store_files(Path(stores))
    n = build(spec, Path(out), shards="0:1", progress=False)["shards_total"]
    for k in range(1, n):
        if cold:
            drop(files)
        build(spec, Path(out), shards=f"{k}:{k + 1}", progress=False)


def run(cmd: list[str]) -> float:
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode:
        sys.exit(p.stderr[-2000:])
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default="/tmp/mixer-bench-cold")
    ap.add_argument("--general-tokens", default="2B")
    ap.add_argument("--tokens", default="500M")
    ap.add_argument("--repeat", type=int, default=2)
    a = ap.parse_args()
    root = Path(a.dir)
    stores = root / "stores"
    make_stores(stores, parse_count(a.general_tokens))  # sealed as they are written
    files = store_files(stores)
    size = sum(f.stat().st_size for f in files)
    flags = ["--stores", str(stores), "--domain", "domain", "--fraction", "0.02", "--tokens", a.tokens,
             "--seq-len", "2048", "--quiet"]
    mixer = [sys.executable, "-m", "mixer", "build", *flags]
    print(f"stores: {size / 1e9:.2f} GB; mix {a.tokens} tokens", flush=True)
    checksums = set()
    for rep in range(a.repeat):
        for label in ("warm", "cold"):
            out = root / f"mix-{label}"
            shutil.rmtree(out, ignore_errors=True)
            run([*mixer, "--out", str(out), "--shards", "0:1"])
            if label == "cold":
                drop(files)
            else:
                warm(files)
            resident = cached_mb(files)
            wall = run([*mixer, "--out", str(out)])
            m = json.loads((out / "manifest.json").read_text())
            written = sum(s["samples"] for s in m["shards"][1:]) * (m["seq_len"] + 1) * 2
            checksums.add(tuple(s["xxh3_128"] for s in m["shards"]))
            print(f"{label} (store pages cached before the run: {resident:,.0f} of {size / 1e6:,.0f} MB): "
                  f"{written / 1e6:,.0f} MB of shards in {wall:.2f} s = {written / 1e6 / wall:,.0f} MB/s", flush=True)
        for label in ("warm per shard", "cold per shard"):
            out = root / f"mix-{label.replace(' ', '-')}"
            shutil.rmtree(out, ignore_errors=True)
            run([*mixer, "--out", str(out), "--shards", "0:1"])
            code = (f"import sys, time; sys.path.insert(0, {str(ROOT)!r}); from bench.build_cold import per_shard; "
                    f"per_shard({str(stores)!r}, {str(out)!r}, {a.tokens!r}, {label.startswith('cold')})")
            wall = run([sys.executable, "-c", code])
            m = json.loads((out / "manifest.json").read_text())
            written = sum(s["samples"] for s in m["shards"][1:]) * (m["seq_len"] + 1) * 2
            checksums.add(tuple(s["xxh3_128"] for s in m["shards"]))
            print(f"{label}: {written / 1e6:,.0f} MB of shards in {wall:.2f} s = {written / 1e6 / wall:,.0f} MB/s "
                  "(one process, start-up included)", flush=True)
    if len(checksums) != 1:
        sys.exit("the runs wrote different shards")
    print("every run wrote the same shards")


if __name__ == "__main__":
    main()
