"""Benchmark: `mixer build` next to `cp && sync` of the same bytes, whole process and marginal.

    .venv/bin/python bench/build.py [--dir /tmp/mixer-bench-build] [--tokens 500M 1000M] [--repeat 3]
                                    [--baseline DIR] [--tasks 1 2]

Stores hold random tokens (a 600M-token general store of 1,500-token mean documents, a
30M-token domain of 300-token ones, read once first so they are warm, as `cp`'s source
is); the mix is 2% domain at seq-len 2048, `--tasks` local tasks (each count a variant;
default 1; local tasks are forked processes of the command), built from
scratch into an empty folder by a fresh process. The limit is `cp SRC DST && sync DST`
(coreutils `sync FILE` fsyncs that file: a build fsyncs its own files, not the machine's)
of one file of the same bytes, on the same disk. Every round runs, for each size: the
build (and the `--baseline` checkout's build, PYTHONPATH=DIR), then the copy, so machine
load and the disk's mood hit both alike. Printed per round and as medians:

- whole process: build MB/s / cp+sync MB/s at each size (issue 25: >= 0.5x at 2 GB);
- marginal: the extra bytes of the larger size over the extra seconds, for build and for
  cp+sync (interpreter start-up, imports, claiming the folder and planning cancel out;
  issue 25: >= 0.8x).

Verify: bench/verify.py.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from mixer.formats.store import seal_store

sys.path.insert(0, str(Path(__file__).resolve().parent))
from warm import warm  # noqa: E402  (bench/warm.py)


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


WARM = True  # --no-warm: measure this VM's lazily backed memory as it is (bench/warm.py)


def timed(cmd: list[str], env: dict | None = None) -> float:
    """Wall seconds of one child process (an error stops the bench), after a memory warm-up."""
    if WARM:
        warm()
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd="/")  # not a checkout: PYTHONPATH decides
    if p.returncode:
        sys.exit(p.stderr[-2000:])
    return time.perf_counter() - t


def make_stores(stores: Path, general_tokens: int = 600_000_000) -> None:
    """The build benchmarks' stores: a general `web` store of 1,500-token mean documents and a
    30M-token `domain` of 300-token ones (each written once, then reused)."""
    make_store(stores, "web", "general", general_tokens, 1500, 1)
    make_store(stores, "domain", "domain", 30_000_000, 300, 2)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default="/tmp/mixer-bench-build")
    ap.add_argument("--tokens", nargs=2, default=["500M", "1000M"], help="the two mix sizes")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--baseline", type=Path, help="another checkout whose build runs beside this one")
    ap.add_argument("--tasks", type=int, nargs="+", default=[1], help="local build tasks, each count a variant")
    ap.add_argument("--no-warm", action="store_true", help="no memory warm-up before each timed command (bench/warm.py)")
    a = ap.parse_args()
    global WARM
    WARM = not a.no_warm
    root = Path(a.dir)
    stores = root / "stores"
    make_stores(stores)
    root_dir = Path(__file__).resolve().parents[1]
    checkouts = {f"build --tasks {t}": (root_dir, t) for t in a.tasks} | (
        {f"base --tasks {t}": (a.baseline.resolve(), t) for t in a.tasks} if a.baseline else {})
    sizes: dict[str, int] = {}
    times: dict[str, dict[str, list[float]]] = {name: {t: [] for t in a.tokens} for name in [*checkouts, "cp+sync"]}
    src, dst = root / "cp-src.bin", root / "cp-dst.bin"
    try:
        for r in range(a.repeat):
            timed(["sh", "-c", f"cat {stores}/*/*.ds {stores}/*/*.ds.index > /dev/null"])  # warm, as cp's source
            for tokens in a.tokens:
                out = root / f"mix-{tokens}"
                for name, (checkout, tasks) in checkouts.items():
                    shutil.rmtree(out, ignore_errors=True)
                    env = dict(os.environ, PYTHONPATH=str(checkout))
                    times[name][tokens].append(timed(
                        [sys.executable, "-m", "mixer", "build", "--stores", str(stores), "--domain", "domain",
                         "--fraction", "0.02", "--tokens", tokens, "--seq-len", "2048", "--out", str(out), "--quiet", "--tasks", str(tasks)],
                        env))
                sizes[tokens] = sum(f.stat().st_size for f in out.glob("shard-*.bin"))
                if r == 0 or src.stat().st_size != sizes[tokens]:
                    with open(src, "wb") as f:  # the same byte count, warm, copied as cp would
                        for shard in sorted(out.glob("shard-*.bin")):
                            f.write(shard.read_bytes())
                dst.unlink(missing_ok=True)
                times["cp+sync"][tokens].append(timed(["sh", "-c", f'cp "{src}" "{dst}" && sync "{dst}"']))
                dst.unlink()
                shutil.rmtree(out)
                line = "  ".join(f"{n} {sizes[tokens] / 1e6 / times[n][tokens][-1]:6,.0f} MB/s" for n in times)
                print(f"round {r + 1} {tokens:>6} ({sizes[tokens] / 1e9:.2f} GB): {line} (load "
                      f"{os.getloadavg()[0]:.1f})", flush=True)
    finally:
        src.unlink(missing_ok=True)
        dst.unlink(missing_ok=True)
    small, big = a.tokens
    extra = sizes[big] - sizes[small]
    for name in checkouts:
        whole = [times["cp+sync"][big][i] / t for i, t in enumerate(times[name][big])]
        marg = [(c2 - c1) / (b2 - b1) if b2 > b1 else float("nan") for b1, b2, c1, c2 in
                zip(times[name][small], times[name][big], times["cp+sync"][small], times["cp+sync"][big])]
        rate = [extra / 1e6 / (b2 - b1) for b1, b2 in zip(times[name][small], times[name][big])]
        print(f"{name}: whole process at {sizes[big] / 1e9:.2f} GB: {statistics.median(whole):.2f}x of cp+sync "
              f"(rounds {', '.join(f'{x:.2f}' for x in whole)}; goal >= 0.5x); marginal {small} -> {big}: "
              f"{statistics.median(rate):,.0f} MB/s = {statistics.median(marg):.2f}x of cp+sync's marginal "
              f"(rounds {', '.join(f'{x:.2f}' for x in marg)}; goal >= 0.8x)")


if __name__ == "__main__":
    main()
