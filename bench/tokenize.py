"""Benchmark: whole-process `mixer tokenize` (HF and tiktoken backends) vs raw `Tokenizer.encode_batch`.

    .venv/bin/python bench/tokenize.py [--cores 0,1] [--repeat 3] [--corpora music proofs pydocs perldocs]
                                       [--only raw mixer-tiktoken ...] [--short 120M] [--baseline DIR]

Every contender runs on the same cores (CPU affinity, inherited by child processes) and
over the same texts:

- raw: `Tokenizer.encode_batch(all texts)` in one call, texts already in memory (the
  ceiling: no reading, no writing, no Python per document);
- raw-fast: `encode_batch_fast` (no character offsets), what mixer's HF backend calls;
- raw-tiktoken: mixer's tiktoken encoder (`TiktokenEncoder`, one thread per core) over
  the same texts in memory, ids mapped to HF's, one Rust call per text;
- tiktoken-batch: tiktoken's own batch call, `Encoding.encode_ordinary_batch(texts,
  num_threads=cores)` with the same vocabulary, texts in memory: what a user of tiktoken
  writes, and the limit of issue 25's short-document row;
- mixer-hf / mixer-tiktoken: the `mixer tokenize` command as a user runs it (process
  start, imports, reading .jsonl.zst, split hashing, tokenizing, part files, merge into
  the store), timed from outside, with `--tokenizer-backend hf` / `tiktoken` (the
  tiktoken run includes its HF check of ~1% of documents); near-duplicate detection
  off (extra work the raw baseline does not do);
- mixer-tiktoken+neardup / mixer-hf+neardup: the same with MinHash clustering on (the
  domain default);
- datatrove: datatrove's stock JsonlReader -> DocumentTokenizer (no shuffling) under
  LocalPipelineExecutor, whole process.

`--short 120M`: instead of the sample corpora, short documents: their paragraphs (cut at
blank lines, ~150 characters, ~40 tokens each) repeated up to that many characters, in one
plain .jsonl file. `--baseline DIR`: also run the mixer contenders from another checkout
(`PYTHONPATH=DIR`, e.g. a worktree of main), as `<name>@base`, in the same rounds.

Rounds are interleaved and the best of `--repeat` is kept per contender: the machine is
shared, and other load only ever slows a run down. Wall time is the goal; CPU seconds
(user+sys of the process and its children) are printed beside it because they are far
less sensitive to other people's load on a shared machine. Tokens exclude the EOS mixer appends,
so every contender counts the same tokens; the bench also checks that both backends
write byte-identical token files and that raw-tiktoken's ids are raw HF's. Uses the real sample corpora from
$MIXER_CACHE/samples (`mixer fetch-samples`) when present, else a synthetic corpus.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("MIXER_CACHE", "~/.cache/mixer")).expanduser()
MIXER = [sys.executable, "-m", "mixer.cli"]

MIXER_RUNS = {
    "mixer-hf": ["--tokenizer-backend", "hf", "--no-near-duplicates"],
    "mixer-tiktoken": ["--tokenizer-backend", "tiktoken", "--no-near-duplicates"],
    "mixer-tiktoken+neardup": ["--tokenizer-backend", "tiktoken", "--near-duplicates"],
    "mixer-hf+neardup": ["--tokenizer-backend", "hf", "--near-duplicates"],
}
CONTENDERS = ("raw", "raw-fast", "raw-tiktoken", "tiktoken-batch", *MIXER_RUNS, "datatrove")

DATATROVE = """
import sys
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.tokens import DocumentTokenizer
src, out, tok = sys.argv[1:4]
LocalPipelineExecutor([
    JsonlReader(src, glob_pattern="*.jsonl.zst"),
    DocumentTokenizer(out, tokenizer_name_or_path=tok, eos_token="<|endoftext|>", shuffle_documents=False),
], tasks=1, workers=1, logging_dir=out + "/logs").run()
"""


def read_texts(files: list[Path]) -> list[str]:
    import zstandard

    texts = []
    for f in files:
        with open(f, "rb") as fh:
            for line in io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(fh), encoding="utf-8"):
                text = json.loads(line)["text"]
                if text.strip():
                    texts.append(text)
    return texts


def short_documents(folder: Path, corpora: list[str], chars: int) -> list[Path]:
    """The sample corpora's paragraphs as documents, repeated up to `chars` characters, one .jsonl."""
    paragraphs = [p for t in read_texts([CACHE / "samples" / f"{c}.jsonl.zst" for c in corpora])
                  for p in t.split("\n\n") if p.strip()]
    path, total, k = folder / "short.jsonl", 0, 0
    with open(path, "w", encoding="utf-8") as f:
        while total < chars:
            for i, p in enumerate(paragraphs):
                f.write(json.dumps({"id": f"{k}-{i}", "text": p}) + "\n")
                total += len(p)
                if total >= chars:
                    break
            k += 1
    return [path]


def read_jsonl(files: list[Path]) -> list[str]:
    texts = []
    for f in files:
        with open(f, encoding="utf-8") as fh:
            texts += [t for t in (json.loads(line)["text"] for line in fh) if t.strip()]
    return texts


def synthetic(folder: Path, n_docs: int = 20000) -> list[Path]:
    """English-like documents from a Zipf vocabulary, when no real samples are cached."""
    import zstandard

    rng = random.Random(0)
    vocab = ["".join(rng.choice("etaoinshrdlucmfwypvbgkqjxz") for _ in range(rng.randint(1, 9))) for _ in range(20000)]
    weights = [1 / (i + 1) for i in range(len(vocab))]
    lines = []
    for i in range(n_docs):
        words = rng.choices(vocab, weights, k=rng.randint(50, 1500))
        lines.append(json.dumps({"id": str(i), "text": " ".join(words)}))
    path = folder / "synthetic.jsonl.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress(("\n".join(lines) + "\n").encode()))
    return [path]


def tokenizer_path(folder: Path) -> Path:
    gpt2 = CACHE / "tokenizers" / "gpt2" / "tokenizer.json"
    if gpt2.exists():
        return gpt2
    from tokenizers import ByteLevelBPETokenizer

    texts = read_texts(sorted(folder.glob("*.jsonl.zst")))
    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(texts, vocab_size=8000, special_tokens=["<|endoftext|>"])
    path = folder / "tokenizer.json"
    tok.save(str(path))
    return path


def cpu_seconds(who: int) -> float:
    u = resource.getrusage(who)
    return u.ru_utime + u.ru_stime


def timed(cmd: list[str], checkout: Path = ROOT) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the process and its children), mixer taken from `checkout`."""
    c, t = cpu_seconds(resource.RUSAGE_CHILDREN), time.perf_counter()
    env = dict(os.environ, PYTHONPATH=str(checkout))
    r = subprocess.run(cmd, cwd=checkout, capture_output=True, text=True, env=env)
    dt, dc = time.perf_counter() - t, cpu_seconds(resource.RUSAGE_CHILDREN) - c
    if r.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
    return dt, dc


def timed_call(fn) -> tuple[float, float]:
    c, t = cpu_seconds(resource.RUSAGE_SELF), time.perf_counter()
    fn()
    return time.perf_counter() - t, cpu_seconds(resource.RUSAGE_SELF) - c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cores", default="0,1", help="CPU ids every contender is pinned to")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--corpora", nargs="*", default=["music", "proofs", "pydocs", "perldocs"])
    ap.add_argument("--only", nargs="*", choices=CONTENDERS, default=list(CONTENDERS), help="contenders to run")
    ap.add_argument("--short", help="short documents: the samples' paragraphs up to this many characters (e.g. 120M)")
    ap.add_argument("--baseline", type=Path, help="a checkout whose mixer runs as <name>@base beside this one")
    args = ap.parse_args()
    cores = {int(c) for c in args.cores.split(",")}
    os.sched_setaffinity(0, cores)  # children inherit it

    work = Path(tempfile.mkdtemp(prefix="mixer-bench-"))
    try:
        data = work / "data"
        data.mkdir()
        files = [CACHE / "samples" / f"{c}.jsonl.zst" for c in args.corpora]
        if args.short:
            from mixer.units import parse_count

            files = short_documents(data, args.corpora, parse_count(args.short, "--short"))
            corpus = f"short documents: paragraphs of {', '.join(args.corpora)}, repeated"
        elif all(f.exists() for f in files):
            for f in files:
                os.symlink(f, data / f.name)
            corpus = "samples: " + ", ".join(args.corpora)
        else:
            synthetic(data)
            corpus = "synthetic (no samples cached)"
        files = sorted(data.glob("*.jsonl.zst")) or sorted(data.glob("*.jsonl"))
        tok_path = tokenizer_path(work)
        texts = read_texts(files) if files[0].suffix == ".zst" else read_jsonl(files)

        from tokenizers import Tokenizer

        from mixer.ingest.tiktoken_backend import TiktokenEncoder, load_spec

        import tiktoken

        tok = Tokenizer.from_file(str(tok_path))
        reference = [e.ids for e in tok.encode_batch_fast(texts)]  # also warms the tokenizer up
        n_tokens = sum(map(len, reference))
        spec = load_spec(tok_path)
        fast = TiktokenEncoder(spec, threads=len(cores))
        assert [a.tolist() for a in fast.encode(texts)] == reference, "tiktoken's ids differ from HF's"
        plain = tiktoken.Encoding("bench", pat_str=spec.pattern, mergeable_ranks=spec.mergeable_ranks,
                                  special_tokens=spec.special_tokens)
        if spec.to_hf is None:
            assert plain.encode_ordinary_batch(texts[:2000]) == reference[:2000], "tiktoken's ids differ from HF's"
        del reference
        runs = {name: (extra, ROOT) for name, extra in MIXER_RUNS.items() if name in args.only}
        if args.baseline:
            runs |= {f"{name}@base": (extra, args.baseline.resolve()) for name, (extra, _) in list(runs.items())}
        best: dict[str, list[float]] = {}
        run = set(args.only)

        def keep(name: str, wall_cpu: tuple[float, float]) -> None:
            old = best.get(name, [float("inf"), float("inf")])
            best[name] = [min(old[0], wall_cpu[0]), min(old[1], wall_cpu[1])]
            print(f"  {name:14s} {wall_cpu[0]:7.2f} s wall {wall_cpu[1]:7.2f} s CPU", file=sys.stderr)

        for r in range(args.repeat):
            print(f"round {r + 1}/{args.repeat} (load average {os.getloadavg()[0]:.1f})", file=sys.stderr)
            if "raw" in run:
                keep("raw", timed_call(lambda: tok.encode_batch(texts)))
            if "raw-fast" in run:
                keep("raw-fast", timed_call(lambda: tok.encode_batch_fast(texts)))
            if "raw-tiktoken" in run:
                keep("raw-tiktoken", timed_call(lambda: fast.encode(texts)))
            if "tiktoken-batch" in run:
                keep("tiktoken-batch", timed_call(lambda: plain.encode_ordinary_batch(texts, num_threads=len(cores))))
            written = {}
            for name, (extra, checkout) in runs.items():
                stores = work / f"stores-{name}-{r}"
                keep(name, timed(MIXER + ["tokenize", "--source", "bench", "--role", "domain", "--input", str(data),
                                          "--tokenizer", str(tok_path), "--stores", str(stores), *extra], checkout))
                meta = json.loads((stores / "bench" / "store.json").read_text())
                got = sum(s["tokens"] - s["documents"] for s in meta["splits"].values())
                assert got == n_tokens, f"{name} wrote {got} tokens, raw encode_batch gives {n_tokens}"
                from mixer.formats.checksum import checksum_file

                written[name] = {f: checksum_file(stores / "bench" / f) for f in ("train.ds", "test.ds")}
                shutil.rmtree(stores)
            if len({str(w) for w in written.values()}) > 1:
                raise SystemExit(f"the mixer runs wrote different tokens: {written}")
            if "datatrove" in run:
                out = work / f"datatrove-{r}"
                keep("datatrove", timed([sys.executable, "-c", DATATROVE, str(data), str(out), str(tok_path)]))
                shutil.rmtree(out)

        print(f"\ncorpus: {corpus}; {len(texts):,} documents, {n_tokens:,} tokens; cores {sorted(cores)}; "
              f"best of {args.repeat}\n")
        print("| contender | wall s | tokens/s | vs raw (wall) | CPU s | vs raw (CPU) |")
        print("|---|---:|---:|---:|---:|---:|")
        raw_wall, raw_cpu = best.get("raw", (float("nan"), float("nan")))
        for name in [c for c in CONTENDERS if c in best] + [c for c in best if c not in CONTENDERS]:
            wall, cpu = best[name]
            print(f"| {name} | {wall:.2f} | {n_tokens / wall / 1e6:.2f}M | {raw_wall / wall:.2f}x | {cpu:.2f} | "
                  f"{raw_cpu / cpu:.2f}x |")
        if "tiktoken-batch" in best:
            limit_wall, limit_cpu = best["tiktoken-batch"]
            for name in [n for n in best if n.startswith("mixer-tiktoken")]:
                wall, cpu = best[name]
                print(f"{name} (whole process) / tiktoken-batch (texts in memory): {limit_wall / wall:.2f}x wall, "
                      f"{limit_cpu / cpu:.2f}x CPU (goal >= 0.95x)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
