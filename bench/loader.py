"""Benchmark: the LitGPT loader (MixStream) next to a plain np.memmap random-index loader.

    .venv/bin/python bench/loader.py MIX [--batch 8] [--samples 40000] [--repeat 5] [--baseline DIR]

MIX is any built mix (e.g. the 2 GB mix of bench/build.py: `mixer build ... --tokens
1000M --seq-len 2048`), read warm. Contenders, alternating, best of --repeat:

- plain: np.memmap of every shard, opened once, each batch `--batch` random rows of a
  random shard (one fancy index), cast to int64, torch.from_numpy: issue 25's limit;
- mixstream: mixer_litgpt.data.MixStream over the same number of samples in
  stored order, as LitGPT's loop pulls them (cast to int64 tensors);
- mixstream@base: the same class from another checkout (--baseline DIR), loaded from its file.

Prints samples/s and the ratio to plain (goal: never the bottleneck; re-map once, not per batch).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[1])  # bench/tokenize.py would shadow the stdlib module

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from mixer.formats.mix import MixFiles  # noqa: E402


def plain(files: MixFiles, batch: int, samples: int) -> int:
    """nanoGPT's loader over the shards: every shard mapped once, each batch `batch` random
    rows of one random shard, one fancy index."""
    maps = [np.asarray(np.memmap(files.path / s["file"], dtype=files.dtype, mode="r")).reshape(-1, files.seq_len + 1)
            for s in files.manifest["shards"]]
    rng = np.random.default_rng(0)
    seen = 0
    for _ in range(samples // batch):
        rows = maps[int(rng.integers(0, len(maps)))]
        seen += len(torch.from_numpy(rows[rng.integers(0, len(rows), batch)].astype(np.int64)))
    return seen


def stream(module, files: MixFiles, batch: int, samples: int) -> int:
    seen = 0
    for b in module.MixStream(files, batch, samples // batch * batch):
        seen += len(b)
    return seen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mix", type=Path)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--samples", type=int, default=40_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--baseline", type=Path)
    a = ap.parse_args()
    files = MixFiles.open(a.mix)
    samples = min(a.samples, files.samples) // a.batch * a.batch
    from mixer_litgpt import data as this

    runs = {"plain": lambda: plain(files, a.batch, samples), "mixstream": lambda: stream(this, files, a.batch, samples)}
    if a.baseline:
        spec = importlib.util.spec_from_file_location("base_data", a.baseline / "trainer_adapters/litgpt/data.py")
        base = importlib.util.module_from_spec(spec)
        sys.modules["base_data"] = base  # dataclasses look their module up
        spec.loader.exec_module(base)
        runs["mixstream@base"] = lambda: stream(base, files, a.batch, samples)
    for f in files.path.glob("shard-*.bin"):  # warm
        with open(f, "rb") as fh:
            while fh.read(1 << 24):
                pass
    best = {name: float("inf") for name in runs}
    for _ in range(a.repeat):
        for name, fn in runs.items():
            t = time.perf_counter()
            assert fn() == samples
            best[name] = min(best[name], time.perf_counter() - t)
    print(f"{samples:,} samples of {files.seq_len + 1} tokens, batches of {a.batch}, best of {a.repeat}")
    for name, t in best.items():
        print(f"{name:<15} {samples / t:>10,.0f} samples/s  {best['plain'] / t:.2f}x of plain")


if __name__ == "__main__":
    main()
