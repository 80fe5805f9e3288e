"""Shard k of a mix, computed from the plan alone and written atomically.

shard-00000.bin       (n, seq_len + 1) tokens, raw little-endian
shard-00000.prov.npy  per-sample provenance (source id, stream offset)
shard-00000.json      sidecar: sample count and checksums; its presence means "done"
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mixer.formats.atomic import atomic_open
from mixer.formats.checksum import CHECKSUM, checksum_bytes
from mixer.formats.mix import PROV_DTYPE, write_shard_files
from mixer.mixing.spec import MixPlan



def shard_name(k: int) -> str:
    return f"shard-{k:05d}"


def shard_samples(plan: MixPlan, k: int, reuse: int = 1, buffer: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Tokens and provenance of shard k. `reuse`: the shards this process has left to
    compute, this one included (how far gather may read ahead of a cold store). `buffer`:
    an earlier shard's token array, no longer needed, to fill again (every row is written):
    zeroing fresh pages for each shard was 3% of a build's CPU under perf, and far more on
    a virtual machine that backs memory lazily (docs/benchmarks.md)."""
    start, stop = plan.shard_range(k)
    level, index = plan.layout.positions(start, stop)
    shape = (stop - start, plan.spec.seq_len + 1)
    if buffer is not None and buffer.dtype == plan.dtype and buffer.size >= shape[0] * shape[1]:
        out = buffer.reshape(-1)[: shape[0] * shape[1]].reshape(shape)
    else:
        out = np.empty(shape, dtype=plan.dtype)
    prov = np.empty(stop - start, dtype=PROV_DTYPE)
    for lvl, src in enumerate(plan.level_sources()):
        mask = level == lvl
        if src is None or not mask.any():
            continue
        idx = index[mask]
        if src.role == "general":
            idx = src.stream.general_order(idx, src.samples)
        src.stream.gather(idx, out=out, rows=np.flatnonzero(mask), reuse=reuse)
        prov["source"][mask] = src.id
        prov["offset"][mask] = idx * plan.spec.seq_len
    return out, prov


def write_shard(plan: MixPlan, k: int, out_dir: Path, reuse: int = 1) -> dict:
    return persist_shard(plan, k, out_dir, *shard_samples(plan, k, reuse))


def persist_shard(plan: MixPlan, k: int, out_dir: Path, samples: np.ndarray, prov: np.ndarray) -> dict:
    """Write shard k's files (fsynced, renamed), then its sidecar. Releases the GIL while
    writing, so a build computes shard k + 1 meanwhile (build.run_inline)."""
    counts = np.bincount(prov["source"], minlength=len(plan.sources))
    return write_shard_files(out_dir, shard_name(k), samples, prov, {str(i): int(c) for i, c in enumerate(counts)})


def read_sidecar(out_dir: Path, k: int) -> dict | None:
    path = out_dir / f"{shard_name(k)}.json"
    if not path.exists():
        return None
    return json.loads(path.read_text())


def eval_samples(tokens: np.ndarray, seq_len: int) -> np.ndarray:
    """Held-out tokens cut into (n, seq_len + 1) samples with one-token overlap, in order."""
    n = max(0, (len(tokens) - 1) // seq_len)
    if n == 0:
        return np.zeros((0, seq_len + 1), dtype=tokens.dtype)
    tokens = np.ascontiguousarray(tokens[: n * seq_len + 1])
    return np.lib.stride_tricks.as_strided(
        tokens, shape=(n, seq_len + 1), strides=(seq_len * tokens.itemsize, tokens.itemsize), writeable=False
    )


def write_eval(plan: MixPlan, out_dir: Path) -> list[dict]:
    records = []
    for src in plan.sources:
        split = src.store.heldout
        if split not in src.store.splits:
            continue
        tokens = np.asarray(src.store.tokens(split))
        samples = np.ascontiguousarray(eval_samples(tokens, plan.spec.seq_len))
        rel = f"eval/{src.stream.name}-{split}.bin"
        with atomic_open(out_dir / rel) as f:
            f.write(samples.data)
        records.append({
            "file": rel,
            "source": src.stream.name,
            "role": src.role,
            "split": split,
            "samples": int(len(samples)),
            "documents": src.store.n_docs(split),
            "tokens_dropped": int(len(tokens) - (len(samples) * plan.spec.seq_len + 1 if len(samples) else 0)),
            CHECKSUM: checksum_bytes(samples.data),
        })
    return records
