"""Benchmark: whole-process peak RSS of `mixer tokenize` on ONE input file of 1M, 4M, 16M short documents.

    .venv/bin/python bench/tokenize_memory.py [--docs 1M 4M 16M] [--baseline DIR] [--work DIR]

Goal (issue 25): the peak stays flat as one input file grows (16M within 1.2x of 1M) and
under 1 GB. Dolma's and Hugging Face's shards hold 0.1-10M documents each, so a flat
merge over many small files (bench/tokenize_merge.py) is not enough.

Each input is one plain .jsonl file of N documents of 3-12 common English words (~8
GPT-2 tokens, ids "0", "1", ...), written once per size. Each measurement is a fresh
`mixer tokenize --role general --tasks 1` process (GPT-2's tokenizer from the sample
cache, the default backend) timed from outside; its peak RSS is the `ru_maxrss` that
wait4 reports for that process alone. `--baseline DIR` runs the same command with mixer
from another checkout (PYTHONPATH=DIR, e.g. an export of main) right after each run of
this one, same input: A, B alternating, so machine load hits both alike.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[0] = str(ROOT)  # bench/tokenize.py would shadow the stdlib module

import argparse  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from mixer.units import parse_count  # noqa: E402

CACHE = Path(os.environ.get("MIXER_CACHE", "~/.cache/mixer")).expanduser()
WORDS = np.array("the of and to in a is that for it as was with be by on not he this are or his from at which".split())


def write_input(path: Path, docs: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    with open(path, "w", encoding="utf-8") as f:
        for a in range(0, docs, 100_000):
            n = min(100_000, docs - a)
            k = rng.integers(3, 13, n)
            words = np.split(WORDS[rng.integers(0, len(WORDS), int(k.sum()))], np.cumsum(k)[:-1])
            f.write("".join(f'{{"id":"{a + i}","text":"{" ".join(w)}"}}\n' for i, w in enumerate(words)))


def run(checkout: Path, inp: Path, stores: Path, tokenizer: Path) -> tuple[float, int]:
    """(wall seconds, peak RSS in bytes) of one `mixer tokenize` process."""
    shutil.rmtree(stores, ignore_errors=True)
    cmd = [sys.executable, "-m", "mixer", "tokenize", "--source", "s", "--role", "general", "--input", str(inp),
           "--tokenizer", str(tokenizer), "--stores", str(stores), "--tasks", "1"]
    t = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=checkout, env=dict(os.environ, PYTHONPATH=str(checkout)),
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = p.stderr.read()
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{err.decode()[-2000:]}")
    return time.perf_counter() - t, usage.ru_maxrss * 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", nargs="+", default=["1M", "4M", "16M"])
    ap.add_argument("--baseline", type=Path, help="another checkout, run after each run of this one")
    ap.add_argument("--work", type=Path, help="scratch folder [default: a temporary folder, removed after]")
    args = ap.parse_args()
    tokenizer = CACHE / "tokenizers" / "gpt2" / "tokenizer.json"
    if not tokenizer.exists():
        raise SystemExit(f"{tokenizer}: missing; run `mixer fetch-samples` first")
    checkouts = {"this": ROOT} | ({"base": args.baseline.resolve()} if args.baseline else {})
    scratch = Path(tempfile.mkdtemp(prefix="mixer-tokmem-", dir=args.work))
    peaks: dict[str, dict[int, int]] = {name: {} for name in checkouts}
    try:
        for docs in (parse_count(d, "--docs") for d in args.docs):
            inp = scratch / f"docs-{docs}.jsonl"
            write_input(inp, docs)
            for name, checkout in checkouts.items():
                wall, peak = run(checkout, inp, scratch / "stores", tokenizer)
                peaks[name][docs] = peak
                print(f"{name:>4}: {docs:>11,} documents in one file ({inp.stat().st_size / 1e6:,.0f} MB): peak RSS "
                      f"{peak / 2**20:7.1f} MiB, {wall:6.1f} s (load {os.getloadavg()[0]:.1f})", flush=True)
            inp.unlink()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    for name, by_docs in peaks.items():
        if len(by_docs) > 1:
            lo, hi = min(by_docs), max(by_docs)
            print(f"{name}: peak RSS at {hi:,} / at {lo:,} documents = {by_docs[hi] / by_docs[lo]:.2f}x (goal <= 1.2x); "
                  f"largest {max(by_docs.values()) / 2**30:.2f} GiB (goal < 1 GB)")


if __name__ == "__main__":
    main()
