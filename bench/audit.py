"""Benchmark `mixer audit`: n-gram membership throughput over training shards, peak memory,
and the false-positive rate on unrelated real corpora. Needs `mixer fetch-samples`.

    .venv/bin/python bench/audit.py --heldout-tokens 10M --train-tokens 200M --tasks 1 2 --json /tmp/audit-bench.json

Held-out side: real documents of every sample corpus (music, Python and Perl docs, Coq
proofs, SMILES), repeated with a marker line when the corpora hold fewer tokens than asked.
Training side: shards of (n, 2049) samples of tokens drawn from the held-out unigram
distribution (realistic token frequencies, EOS included), with 1% of the samples copied from
held-out documents so the hit path is exercised. Throughput counts the scan only (training
tokens / seconds of the datatrove tasks); held-out indexing is timed separately.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the store writer the tests use
from storeutil import EOS_ID, Encoder, read_docs, write_flat, write_store  # noqa: E402

from mixer.checks.audit import TrainFile, audit  # noqa: E402
from mixer.demo_corpora.fetch import default_cache  # noqa: E402
from mixer.formats.store import open_store  # noqa: E402
from mixer.units import format_count, parse_count  # noqa: E402

CORPORA = ["music", "pydocs", "perldocs", "proofs", "chem"]
SEQ_LEN = 2048


def peak_mb() -> tuple[float, float]:
    """(this process, largest finished child) peak resident memory in MB (Linux: KiB units)."""
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)


def heldout_docs(enc: Encoder, cache: Path, tokens: int) -> list[tuple[str, np.ndarray]]:
    docs = []
    for name in CORPORA:
        recs = read_docs(cache, name)
        docs += [(f"{name}/{i}", t) for (i, _), t in zip(recs, enc([t for _, t in recs]))]
    have, out, rnd = sum(len(t) for _, t in docs), [], 0
    while sum(len(t) for _, t in out) < tokens:  # repeat with a distinct marker so copies are distinct documents
        mark = enc([f"copy {rnd}\n"])[0]
        out += [(f"{i}~{rnd}", np.concatenate([mark, t]) if rnd else t) for i, t in docs]
        rnd += 1
    total, cut = 0, []
    for i, t in out:
        if total >= tokens:
            break
        cut.append((i, t))
        total += len(t)
    print(f"held-out: {len(cut):,} documents, {format_count(total)} tokens ({format_count(have)} distinct real tokens)")
    return cut


def training_shards(folder: Path, docs: list[tuple[str, np.ndarray]], tokens: int, shards: int) -> list[TrainFile]:
    rng = np.random.default_rng(0)
    flat = np.concatenate([np.append(t, EOS_ID) for _, t in docs])
    freq = np.bincount(flat, minlength=EOS_ID + 1).astype(np.float64)
    rows_per = tokens // SEQ_LEN // shards
    files = []
    for k in range(shards):
        x = rng.choice(EOS_ID + 1, size=(rows_per, SEQ_LEN + 1), p=freq / freq.sum()).astype("<u2")
        for r in rng.choice(rows_per, rows_per // 100, replace=False):  # 1% of samples: verbatim held-out text
            start = int(rng.integers(0, len(flat) - SEQ_LEN - 1))
            x[r] = flat[start : start + SEQ_LEN + 1]
        path = folder / f"shard-{k:05d}.bin"
        x.tofile(path)
        files.append(TrainFile(str(path), "<u2", SEQ_LEN + 1))
    return files


def prepare(args: argparse.Namespace, cache: Path, enc: Encoder, tmp: Path) -> list[TrainFile]:
    docs = heldout_docs(enc, cache, parse_count(args.heldout_tokens))
    write_store(tmp / "stores", "held", "domain", {"train": [], "test": docs}, enc.path)
    t = time.perf_counter()
    files = training_shards(tmp, docs, parse_count(args.train_tokens), args.shards)
    print(f"training: {len(files)} shards written in {time.perf_counter() - t:.1f} s")
    return files


def run_one(tmp: Path, tasks: int) -> dict:
    """One audit in this (fresh) process, so its peak memory is the audit's alone."""
    store = open_store(tmp / "stores", "held")
    files = [TrainFile(str(p), "<u2", SEQ_LEN + 1) for p in sorted(tmp.glob("shard-*.bin"))]
    rep = audit([store], files, tmp / f"work-{tasks}", tasks=tasks, max_overlap=1.0)
    tr = rep["training"]
    return {"tasks": tasks, "train_tokens": tr["tokens"], "scan_seconds": tr["seconds"],
            "tokens_per_s": tr["tokens"] / tr["seconds"], "heldout_tokens": int(len(store.tokens("test"))),
            "heldout_ngrams": rep["heldout"]["distinct_ngrams"], "index_seconds": rep["heldout"]["seconds"],
            "peak_mb_process": peak_mb()[0], "peak_mb_task_processes": peak_mb()[1], "hits": tr["hits"]}


def throughput(args: argparse.Namespace, tmp: Path) -> list[dict]:
    results = []
    for tasks in args.tasks:
        p = subprocess.run([sys.executable, "-P", __file__, "--one", str(tmp), str(tasks)], capture_output=True, text=True)
        if p.returncode:
            raise SystemExit(p.stderr[-2000:])
        r = json.loads(p.stdout.splitlines()[-1])
        print(f"tasks={tasks}: {format_count(r['train_tokens'])} tokens in {r['scan_seconds']:.2f} s = "
              f"{r['tokens_per_s'] / 1e6:.1f}M tokens/s; held-out index ({format_count(r['heldout_tokens'])} tokens, "
              f"{format_count(r['heldout_ngrams'])} distinct n-grams) {r['index_seconds']:.1f} s; peak RSS "
              f"{r['peak_mb_process']:.0f} MB (audit process), {r['peak_mb_task_processes']:.0f} MB (largest task process)")
        results.append(r)
    return results


def false_positives(cache: Path, enc: Encoder, tmp: Path) -> list[dict]:
    """Whole corpora against each other: prose held out vs music as training, and back."""
    toks = {name: enc([t for _, t in read_docs(cache, name)]) for name in ("music", "pydocs", "perldocs")}
    ids = {name: [i for i, _ in read_docs(cache, name)] for name in toks}
    out = []
    for held, train in (("pydocs", ["music"]), ("perldocs", ["music"]), ("music", ["pydocs", "perldocs"])):
        write_store(tmp / "fp", held, "general", {"train": [], "val": list(zip(ids[held], toks[held]))}, enc.path)
        files = [TrainFile(str(write_flat(tmp / f"fp-{t}.bin", toks[t])), "<u2", None) for t in train]
        for allowlist in (True, False):
            rep = audit([open_store(tmp / "fp", held)], files, tmp / f"fp-work-{held}", allowlist=allowlist)
            s = rep["sources"][0]
            r = {"heldout": held, "train": "+".join(train), "allowlist": allowlist, "documents": s["documents"],
                 "with_overlap": s["with_overlap"], "rate": s["with_overlap"] / s["documents"],
                 "train_tokens": rep["training"]["tokens"], "heldout_ngrams": rep["heldout"]["ngrams"]}
            print(f"false positives: {held} held out vs {r['train']} ({format_count(r['train_tokens'])} tokens), "
                  f"allowlist {'on' if allowlist else 'off'}: {r['with_overlap']} of {r['documents']} documents "
                  f"({100 * r['rate']:.2f}%)")
            out.append(r)
    return out


def main() -> None:
    if sys.argv[1:2] == ["--one"]:
        print(json.dumps(run_one(Path(sys.argv[2]), int(sys.argv[3]))))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--heldout-tokens", default="10M")
    ap.add_argument("--train-tokens", default="200M")
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--tasks", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--skip-fp", action="store_true", help="Throughput and memory only.")
    ap.add_argument("--json", type=Path, help="Also write the figures here.")
    args = ap.parse_args()
    cache = default_cache()
    enc = Encoder(cache / "tokenizers" / "gpt2" / "tokenizer.json")
    with tempfile.TemporaryDirectory(prefix="mixer-bench-audit-") as tmp:
        prepare(args, cache, enc, Path(tmp))
        res = {"throughput": throughput(args, Path(tmp)),
               "false_positives": [] if args.skip_fp else false_positives(cache, enc, Path(tmp))}
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
