"""Benchmark: peak memory of the tokenize merge (parts -> store) as the corpus grows.

    .venv/bin/python bench/tokenize_merge.py [--docs 1M 4M 16M] [--ids short uuid] [--split tokens fraction]
                                             [--tasks 8] [--docs-per-file 125K] [--work DIR]

Only the merge is measured: the parts are written directly in the part format of
`mixer.ingest.tokenizer_step` (tokens, the per-document table, ids, one part per task,
task r holding input files r, r+tasks, ...), as a general source (no near-duplicates;
`--near-duplicates`: a domain source with MinHash clustering, random signatures).
Every document is 2-9 tokens long, so the token files stay small and what is measured
is the per-document cost. A bigger corpus has more input files, not bigger ones, as real
corpora grow (Dolma's and FineWeb's files hold 10^5-10^6 documents each). Id styles:
`short` (the document number in decimal) and `uuid` (FineWeb's `<urn:uuid:...>`, 47
characters). Each merge runs in a fresh Python process
(`write_store` with the real split: `--split tokens` holds out 1% of the tokens by
`test_tokens`, `--split fraction` by `test_fraction = 0.01`) and reports its own peak RSS
(`VmHWM`) and wall time. Needs ~1.3 GB of disk per 16M documents with uuid ids.
"""

from __future__ import annotations

import sys
from pathlib import Path

# first of all: the script's folder holds bench/tokenize.py, which would shadow the stdlib module
ROOT = Path(__file__).resolve().parents[1]
sys.path[0] = str(ROOT)

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from mixer.units import parse_count  # noqa: E402

EOS = 50256
HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


def uuid_ids(rng: np.random.Generator, n: int) -> bytes:
    """n FineWeb-style ids, `<urn:uuid:8-4-4-4-12>` + newline, built as one byte array."""
    rows = np.empty((n, 48), dtype=np.uint8)
    rows[:, :10] = np.frombuffer(b"<urn:uuid:", dtype=np.uint8)
    hexes = HEX[rng.integers(0, 16, size=(n, 32), dtype=np.uint8)]
    col = 10
    h = 0
    for width in (8, 4, 4, 4, 12):
        rows[:, col : col + width] = hexes[:, h : h + width]
        col, h = col + width, h + width
        rows[:, col] = ord("-")
        col += 1
    rows[:, col - 1] = ord(">")
    rows[:, col] = ord("\n")
    return rows.tobytes()


def short_ids(first: int, n: int) -> bytes:
    return "".join(f"{i}\n" for i in range(first, first + n)).encode()


def write_parts(work: Path, docs: int, ids: str, tasks: int, files: int, minhash: bool = False, seed: int = 0) -> None:
    """The parts of `docs` documents spread over `files` input files and `tasks` parts."""
    from mixer.ingest.neardup import NUM_PERM
    from mixer.ingest.tokenizer_step import DOC_DTYPE, part_name

    parts = work / "parts"
    parts.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    per_file = np.full(files, docs // files)
    per_file[: docs % files] += 1
    first = np.concatenate([[0], np.cumsum(per_file)[:-1]])
    for r in range(tasks):
        base = parts / part_name(r)
        with open(base.with_suffix(".ds"), "wb") as ds, open(base.with_suffix(".docs"), "wb") as table_out, \
                open(base.with_suffix(".ids"), "wb") as ids_out, \
                open(base.with_suffix(".minhash") if minhash else os.devnull, "wb") as sig_out:
            for f in range(r, files, tasks):
                for a in range(0, int(per_file[f]), 1 << 20):
                    n = min(1 << 20, int(per_file[f]) - a)
                    lengths = rng.integers(2, 10, size=n)
                    table = np.empty(n, dtype=DOC_DTYPE)
                    table["file"], table["length"] = f, lengths
                    table["hash"] = rng.integers(0, 2**63, size=n, dtype=np.int64).astype(np.uint64) * 2 + 1
                    tokens = rng.integers(0, EOS, size=int(lengths.sum()), dtype=np.uint16)
                    tokens[np.cumsum(lengths) - 1] = EOS
                    ds.write(tokens.tobytes())
                    table_out.write(table.tobytes())
                    ids_out.write(uuid_ids(rng, n) if ids == "uuid" else short_ids(int(first[f]) + a, n))
                    if minhash:  # random signatures: every document its own cluster
                        sig_out.write(rng.integers(0, 2**32 - 2, size=(n, NUM_PERM), dtype=np.uint32).tobytes())
        (parts / f"reader-{r:05d}.json").write_text(json.dumps(
            {"rank": r, "files": 0, "documents": 0, "empty": 0, "bad_records": 0, "skipped": [], "error": None}))


def child(work: Path, tasks: int, files: int, split: str, tokens: int, near: bool) -> None:
    """Run one merge in this (fresh) process and print its figures as JSON."""
    from mixer.ingest.merge import write_store
    from mixer.ingest.sources import SourceSpec
    from mixer.ingest.vocab import TokenizerInfo

    kw = {"test_tokens": max(1, tokens // 100)} if split == "tokens" else {"test_fraction": 0.01}
    spec = SourceSpec("bench", "domain" if near else "general", ["synthetic"], "synthetic", near_duplicates=near, **kw)
    tok = TokenizerInfo("synthetic", "synthetic", "0" * 64, EOS + 1, EOS, "<|endoftext|>")
    reports = [json.loads((work / "parts" / f"reader-{r:05d}.json").read_text()) for r in range(tasks)]
    (work / "stores").mkdir(exist_ok=True)
    start = time.perf_counter()
    meta = write_store(spec, tok, np.dtype("<u2"), tasks, work, work / "stores", reports,
                       {"input_files": files, "fingerprint": "bench"})
    wall = time.perf_counter() - start
    print(json.dumps({"wall_s": wall, "peak_rss": own_peak_rss(), "splits": meta["splits"]}))


def own_peak_rss() -> int:
    """This process's peak RSS in bytes. Not ru_maxrss: Linux carries that across exec, so a
    child would report its parent's peak at the fork if that was higher."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", nargs="+", default=["1M", "4M", "16M"])
    ap.add_argument("--ids", nargs="+", default=["short", "uuid"], choices=["short", "uuid"])
    ap.add_argument("--split", nargs="+", default=["tokens"], choices=["tokens", "fraction"])
    ap.add_argument("--tasks", type=int, default=8)
    ap.add_argument("--docs-per-file", default="125K")
    ap.add_argument("--near-duplicates", action="store_true",
                    help="a domain source with MinHash clustering (signatures in the parts, 256 B per document)")
    ap.add_argument("--work", type=Path, help="scratch folder [default: a temporary folder, removed after]")
    ap.add_argument("--files", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--child-split", default="tokens", help=argparse.SUPPRESS)
    ap.add_argument("--child-tokens", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.tasks, args.files, args.child_split, args.child_tokens, args.near_duplicates)
        return

    scratch = Path(tempfile.mkdtemp(prefix="mixer-merge-bench-", dir=args.work))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    rows = []
    try:
        for ids in args.ids:
            for docs in map(lambda d: parse_count(d, "--docs"), args.docs):
                work = scratch / f"{ids}-{docs}"
                files = max(1, -(-docs // parse_count(args.docs_per_file, "--docs-per-file")))
                t0 = time.perf_counter()
                write_parts(work, docs, ids, args.tasks, files, args.near_duplicates)
                made = time.perf_counter() - t0
                tokens = sum(p.stat().st_size for p in (work / "parts").glob("*.ds")) // 2
                for split in args.split:
                    shutil.rmtree(work / "stores", ignore_errors=True)
                    out = subprocess.run(
                        [sys.executable, __file__, "--child", str(work), "--tasks", str(args.tasks), "--files",
                         str(files), "--child-split", split, "--child-tokens", str(tokens)]
                        + (["--near-duplicates"] if args.near_duplicates else []),
                        env=env, capture_output=True, text=True)
                    if out.returncode:
                        raise SystemExit(f"merge of {work} failed:\n{out.stderr}")
                    r = json.loads(out.stdout.strip().splitlines()[-1])
                    rows.append((ids, docs, split, r["peak_rss"], r["wall_s"], made))
                    print(f"{ids:>5} ids {docs:>11,} docs  split by {split:<8}  peak RSS {r['peak_rss'] / 2**20:8.1f} "
                          f"MiB  merge {r['wall_s']:6.1f} s  ({r['peak_rss'] / docs:6.1f} B/doc; parts made in "
                          f"{made:.0f} s)", flush=True)
                shutil.rmtree(work)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    for ids in args.ids:
        for split in args.split:
            mine = [r for r in rows if r[0] == ids and r[2] == split]
            if len(mine) > 1:
                lo, hi = min(mine, key=lambda r: r[1]), max(mine, key=lambda r: r[1])
                print(f"{ids} ids, split by {split}: peak RSS at {hi[1]:,} docs / at {lo[1]:,} docs = "
                      f"{hi[3] / lo[3]:.2f}x")


if __name__ == "__main__":
    main()
