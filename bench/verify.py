"""Benchmark: full `mixer verify` next to a sequential read of the same shards, warm stores.

    .venv/bin/python bench/verify.py [--dir /tmp/mixer-bench-build] [--tokens 500M [1000M]] [--repeat 5] [--baseline DIR]

The set-up of bench/build.py (same stores and mix, built if absent): a 600M-token general
store of 1,500-token documents, a 30M-token domain, a 2% mix at seq-len 2048. Each
measurement is a fresh `mixer verify` process, timed from outside; stores and shards are
read once first, so every figure is warm. A shared machine makes wall times noisy: the
best of --repeat runs is reported, with the child's CPU time (user + sys), which other
processes do not inflate. With two sizes (`--tokens 500M 1000M`) it also prints each row's
marginal rate, the extra bytes over the extra seconds, which leaves out what every run pays
once (interpreter start-up, imports, laying out the streams).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build import make_stores  # noqa: E402  (bench/build.py: the same stores)
from warm import warm  # noqa: E402  (bench/warm.py)


def run(cmd: list[str], warmup: bool = False, env: dict | None = None) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + sys) of one child process."""
    if warmup:
        warm()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd="/")  # not a checkout: PYTHONPATH decides
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode:
        sys.exit(p.stderr[-2000:])
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def measure(a: argparse.Namespace, stores: Path, out: Path) -> tuple[int, dict[str, tuple[float, float]]]:
    """(shard bytes, {row: best (wall, CPU) of --repeat}) for one mix."""
    mixer = [sys.executable, "-m", "mixer"]
    size = sum(f.stat().st_size for f in out.glob("shard-*.bin"))
    run(["sh", "-c", f"cat {stores}/*/* {out}/shard-* > /dev/null"])  # warm: stores and shards in page cache
    rows = [("sequential read (cat)", ["sh", "-c", f"cat {out}/shard-*.bin > /dev/null"], None)]
    codes = [("", None)] + ([("base ", dict(os.environ, PYTHONPATH=str(a.baseline.resolve())))] if a.baseline else [])
    for name, env in codes:
        rows += [(f"{name}verify --workers {w}", [*mixer, "verify", str(out), "--quiet", "--workers", str(w)], env)
                 for w in (1, 2)]
        rows += [(f"{name}verify --quick", [*mixer, "verify", str(out), "--quiet", "--quick"], env)]
    print(f"{size / 1e6:,.0f} MB of shards ({out.name}); best of {a.repeat} warm runs")
    got, read = {}, None
    for label, cmd, env in rows:
        wall, cpu = got[label] = min(run(cmd, not a.no_warm, env) for _ in range(a.repeat))
        read = read or wall
        print(f"{label:<22} {wall:6.2f} s wall = {size / 1e6 / wall:6,.0f} MB/s ({read / wall:.2f}x of cat), "
              f"CPU {cpu:5.2f} s = {size / 1e6 / cpu:6,.0f} MB/s per CPU second", flush=True)
    return size, got


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default="/tmp/mixer-bench-build")
    ap.add_argument("--tokens", nargs="+", default=["500M"],
                    help="mix sizes; with two, also the marginal rate between them (start-up does not count)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--no-warm", action="store_true", help="no memory warm-up before each timed command (bench/warm.py)")
    ap.add_argument("--baseline", type=Path, help="another checkout whose verify runs beside this one (PYTHONPATH=DIR)")
    a = ap.parse_args()
    root = Path(a.dir)
    stores = root / "stores"
    make_stores(stores)
    results = []
    for tokens in a.tokens:
        out = root / f"mix-{tokens}"
        if not (out / "manifest.json").exists():
            run([sys.executable, "-m", "mixer", "build", "--stores", str(stores), "--domain", "domain", "--fraction",
                 "0.02", "--tokens", tokens, "--seq-len", "2048", "--out", str(out), "--quiet"])
        results.append(measure(a, stores, out))
    if len(results) == 2:
        (s0, r0), (s1, r1) = results
        print(f"marginal, {s0 / 1e6:,.0f} -> {s1 / 1e6:,.0f} MB (the extra bytes over the extra seconds):")
        for label in r0:
            extra = r1[label][0] - r0[label][0]
            rate = f"{(s1 - s0) / 1e6 / extra:6,.0f} MB/s" if extra > 0 else "  n/a (no slower)"
            print(f"{label:<22} {rate}")


if __name__ == "__main__":
    main()
