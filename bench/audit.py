"""Benchmark `mixer audit`: throughput over a mix's shards, peak memory, and the
false-positive rate on unrelated real corpora. Needs `mixer fetch-samples`.

    .venv/bin/python bench/audit.py --heldout-tokens 10M --train-tokens 200M --shards 8 --tasks 1 2 --rounds 3 --keep /tmp/audit-bench --json /tmp/audit-bench.json

Held-out side: real documents of every sample corpus (music, Python and Perl docs, Coq
proofs, SMILES), repeated with a marker line when the corpora hold fewer tokens than asked.
Training side: a mix as `mixer build` lays it out: one source's stream of documents (tokens
drawn from the held-out unigram distribution, EOS included, so documents have realistic
lengths), with 1% of its tokens verbatim held-out documents so the hit and exact-copy paths
run, cut into samples of 2049 tokens at offsets k * 2048, shuffled over the shards, each
shard with its provenance sidecar: the audit stitches the samples back into the stream.
`--layout rows` drops the sidecars (n-grams inside rows, the pre-stitching layout).

Two throughputs: scan (training tokens / seconds of the scan tasks and their merge) and
whole process (training tokens / wall seconds of the audit call: held-out index, task
start-up, scan, merge, text check and report), and their ratio, the share of the audit's
time the scan is. Runs alternate between the task counts (and, with `--baseline DIR`,
between this checkout's code and DIR's, e.g. `git archive main | tar -x -C DIR`), each in a
fresh process, `--rounds` times, so that a shared machine's load falls on every variant
alike; the load average is printed with every run.
"""

from __future__ import annotations

import os
import sys

# bench/tokenize.py would shadow the standard library's tokenize (numpy and loguru import it)
sys.path[:] = [p for p in sys.path if os.path.realpath(p or ".") != os.path.dirname(os.path.realpath(__file__))]

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the store writer the tests use
from storeutil import EOS_ID, Encoder, read_docs, write_flat, write_store  # noqa: E402

from mixer.executors import Executor  # noqa: E402
from mixer.checks.audit import TrainFile, audit  # noqa: E402
from mixer.formats.mix import PROV_DTYPE  # noqa: E402
from mixer.demo_corpora.fetch import default_cache  # noqa: E402
from mixer.formats.store import open_store  # noqa: E402
from mixer.units import format_count, parse_count  # noqa: E402

CORPORA = ["music", "pydocs", "perldocs", "proofs", "chem"]
SEQ_LEN = 2048


def warm() -> None:
    """bench/warm.py's memory warm-up (loaded by path: this script keeps bench/ off sys.path)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("warm", Path(__file__).resolve().parent / "warm.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.warm()


def peak_mb() -> tuple[float, float]:
    """(this process, largest finished child) peak resident memory in MB. The process's own
    peak is VmHWM: Linux carries ru_maxrss over exec, so a process started by the (large)
    data-generating parent would report the parent's peak."""
    hwm = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
               if line.startswith("VmHWM:"))
    return hwm / 1024, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


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


def training_shards(folder: Path, docs: list[tuple[str, np.ndarray]], tokens: int, shards: int) -> None:
    rng = np.random.default_rng(0)
    flat = np.concatenate([np.append(t, EOS_ID) for _, t in docs])
    freq = np.bincount(flat, minlength=EOS_ID + 1).astype(np.float64)
    # In chunks: one call draws a float64 and an int64 per token (32 GB at 2B tokens). choice
    # with p draws its uniforms in sequence, so the chunks give the tokens one call would.
    stream, p = np.empty(tokens + 1, dtype="<u2"), freq / freq.sum()
    for a in range(0, len(stream), 1 << 27):
        part = stream[a : a + (1 << 27)]
        part[:] = rng.choice(EOS_ID + 1, size=len(part), p=p)
    at = np.sort(rng.choice(len(stream) - 10_000, len(stream) // 100 // 725, replace=False))
    for a in at:  # ~1% of the tokens: whole held-out documents, verbatim, after an EOS
        t = docs[int(rng.integers(0, len(docs)))][1][:5000]
        stream[a] = EOS_ID
        stream[a + 1 : a + 1 + len(t)] = t
        stream[a + 1 + len(t)] = EOS_ID
    samples = (len(stream) - 1) // SEQ_LEN
    order = rng.permutation(samples)
    for k, part in enumerate(np.array_split(order, shards)):
        rows = np.lib.stride_tricks.sliding_window_view(stream, SEQ_LEN + 1)[part * SEQ_LEN]
        rows.tofile(folder / f"shard-{k:05d}.bin")
        prov = np.zeros(len(part), dtype=PROV_DTYPE)
        prov["offset"] = part * SEQ_LEN
        np.save(folder / f"shard-{k:05d}.prov.npy", prov)


def prepare(args: argparse.Namespace, cache: Path, enc: Encoder, tmp: Path) -> None:
    docs = heldout_docs(enc, cache, parse_count(args.heldout_tokens))
    write_store(tmp / "stores", "held", "domain", {"train": [], "test": docs}, enc.path)
    t = time.perf_counter()
    training_shards(tmp, docs, parse_count(args.train_tokens), args.shards)
    print(f"training: {args.shards} shards with provenance written in {time.perf_counter() - t:.1f} s")


def run_one(tmp: Path, tasks: int, layout: str) -> dict:
    """One audit in this (fresh) process, so its peak memory is the audit's alone."""
    work = tmp / f"work-{tasks}-{layout}-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)  # a fresh audit, not a resumed one
    load = os.getloadavg()[0]
    t0, c0 = time.perf_counter(), time.process_time()
    store = open_store(tmp / "stores", "held")
    files = [TrainFile(str(p), "<u2", SEQ_LEN + 1, str(p.with_suffix(".prov.npy")) if layout == "stitched" else None)
             for p in sorted(tmp.glob("shard-*.bin"))]
    rep = audit([store], files, work, executor=Executor(tasks=tasks))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    shutil.rmtree(work, ignore_errors=True)
    tr = rep["training"]
    return {"tasks": tasks, "layout": layout, "train_tokens": tr["tokens"], "scan_seconds": tr["seconds"],
            "scan_cpu_seconds": tr["cpu_ms"] / 1000, "tokens_per_cpu_s": tr["tokens"] / max(tr["cpu_ms"] / 1000, 1e-9),
            "tokens_per_s": tr["tokens"] / tr["seconds"], "wall_seconds": wall, "whole_tokens_per_s": tr["tokens"] / wall,
            "ratio": tr["seconds"] / wall, "process_cpu_seconds": cpu, "load_before": load,
            "load_after": os.getloadavg()[0],
            "heldout_tokens": int(len(store.tokens("test"))), "heldout_ngrams": rep["heldout"]["distinct_ngrams"],
            "index_seconds": rep["heldout"]["seconds"], "report_seconds": rep["report_seconds"],
            "text_check": rep.get("text_check"),
            "peak_mb_process": peak_mb()[0], "peak_mb_task_processes": peak_mb()[1], "hits": tr["hits"],
            "exact_copies_found": rep["sources"][0]["exact"]}


def throughput(args: argparse.Namespace, tmp: Path) -> list[dict]:
    results = []
    codes = [("this", None)] + ([("baseline", str(args.baseline.resolve()))] if args.baseline else [])
    for rnd in range(args.rounds):
        for tasks in args.tasks:
            for name, code in codes:
                env = dict(os.environ)
                if code:  # the baseline's mixer package, this script's data and measurement
                    env["PYTHONPATH"] = code + os.pathsep + env.get("PYTHONPATH", "")
                if not args.no_warm:
                    warm()
                p = subprocess.run([sys.executable, __file__, "--one", str(tmp), str(tasks), args.layout],
                                   capture_output=True, text=True, env=env)
                if p.returncode:
                    raise SystemExit(p.stderr[-2000:])
                r = {**json.loads(p.stdout.splitlines()[-1]), "code": name, "round": rnd}
                print(f"[{name}] tasks={tasks} ({r['layout']}), load {r['load_before']:.1f}: "
                      f"{format_count(r['train_tokens'])} tokens, scan {r['scan_seconds']:.2f} s = "
                      f"{r['tokens_per_s'] / 1e6:.1f}M tokens/s ({r['scan_cpu_seconds']:.2f} CPU s in the tasks = "
                      f"{r['tokens_per_cpu_s'] / 1e6:.1f}M tokens per CPU second); whole {r['wall_seconds']:.2f} s = "
                      f"{r['whole_tokens_per_s'] / 1e6:.1f}M tokens/s, ratio {r['ratio']:.2f} of the scan "
                      f"({r['process_cpu_seconds']:.2f} CPU s; index {r['index_seconds']:.1f} s, report "
                      f"{r['report_seconds']:.1f} s); peak RSS {r['peak_mb_process']:.0f} MB (audit process), "
                      f"{r['peak_mb_task_processes']:.0f} MB (largest task process); {r['exact_copies_found']} "
                      "held-out documents found exact", flush=True)
                results.append(r)
    for name, _ in codes:
        med = {t: {k: float(np.median([r[k] for r in results if r["code"] == name and r["tasks"] == t]))
                   for k in ("tokens_per_s", "whole_tokens_per_s", "ratio", "wall_seconds", "load_before")}
               for t in args.tasks}
        line = "; ".join(f"tasks={t}: scan {m['tokens_per_s'] / 1e6:.1f}M tok/s, whole {m['whole_tokens_per_s'] / 1e6:.1f}M "
                         f"tok/s, ratio {m['ratio']:.2f} (load {m['load_before']:.1f})" for t, m in med.items())
        if len(args.tasks) > 1:
            a, b = args.tasks[0], args.tasks[-1]
            line += f"; whole time {b} tasks / {a}: {med[b]['wall_seconds'] / med[a]['wall_seconds']:.2f}"
        print(f"median of {args.rounds} [{name}]: {line}")
    return results


def false_positives(cache: Path, enc: Encoder, tmp: Path) -> list[dict]:
    """Whole corpora against each other: prose held out vs music as training, and back."""
    toks = {name: enc([t for _, t in read_docs(cache, name)]) for name in ("music", "pydocs", "perldocs")}
    ids = {name: [i for i, _ in read_docs(cache, name)] for name in toks}
    out = []
    for held, train in (("pydocs", ["music"]), ("perldocs", ["music"]), ("music", ["pydocs", "perldocs"])):
        write_store(tmp / "fp", held, "general", {"train": [], "val": list(zip(ids[held], toks[held]))}, enc.path)
        files = [TrainFile(str(write_flat(tmp / f"fp-{t}.bin", toks[t])), "<u2", None) for t in train]
        for boilerplate in (True, False):
            rep = audit([open_store(tmp / "fp", held)], files, tmp / f"fp-work-{held}", boilerplate=boilerplate)
            s = rep["sources"][0]
            r = {"heldout": held, "train": "+".join(train), "boilerplate": boilerplate, "documents": s["documents"],
                 "with_overlap": s["with_overlap"], "rate": s["with_overlap"] / s["documents"], "flagged": s["flagged"],
                 "train_tokens": rep["training"]["tokens"], "heldout_ngrams": rep["heldout"]["ngrams"]}
            print(f"false positives: {held} held out vs {r['train']} ({format_count(r['train_tokens'])} tokens), "
                  f"boilerplate discount {'on' if boilerplate else 'off'}: {r['with_overlap']} of {r['documents']} "
                  f"documents share an n-gram ({100 * r['rate']:.2f}%), {r['flagged']} flagged")
            out.append(r)
    return out


def main() -> None:
    if sys.argv[1:2] == ["--one"]:
        print(json.dumps(run_one(Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4])))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--heldout-tokens", default="10M")
    ap.add_argument("--train-tokens", default="200M")
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--tasks", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=1, help="Runs per variant, alternating.")
    ap.add_argument("--baseline", type=Path, help="Another checkout's code, run alternately with this one.")
    ap.add_argument("--layout", choices=["stitched", "rows"], default="stitched",
                    help="Shards with provenance sidecars (stitched streams) or without (n-grams inside rows).")
    ap.add_argument("--keep", type=Path, help="Write the data here and keep it (a rerun with the same folder reuses it).")
    ap.add_argument("--skip-fp", action="store_true", help="Throughput and memory only.")
    ap.add_argument("--no-warm", action="store_true", help="No memory warm-up before each timed audit (bench/warm.py).")
    ap.add_argument("--json", type=Path, help="Also write the figures here.")
    args = ap.parse_args()
    cache = default_cache()
    enc = Encoder(cache / "tokenizers" / "gpt2" / "tokenizer.json")
    with tempfile.TemporaryDirectory(prefix="mixer-bench-audit-") as tmp:
        folder = args.keep or Path(tmp)
        if not (folder / "stores" / "held" / "store.json").exists():
            folder.mkdir(parents=True, exist_ok=True)
            prepare(args, cache, enc, folder)
        res = {"throughput": throughput(args, folder),
               "false_positives": [] if args.skip_fp else false_positives(cache, enc, folder)}
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
