"""`mixer verify`: re-derive a mix from the stores and compare; trust only the manifest's claims.

What is checked, and against what:
  * every shard and provenance file: size (truncation) and checksum, against the manifest;
  * provenance coverage: the offsets of each source, over all shards, are exactly
    0, L, 2L, ... (every stream token a target exactly once; none skipped, none twice);
  * per-document epochs: recounted from that coverage and the stores' document lengths,
    against the manifest's histogram;
  * the fraction in every window of W samples (W = 1, 2, 4, ... up to the window), from
    the provenance source ids alone, against the achieved fraction;
  * bytes (not with --quick): every sample re-read from the store via its provenance.
"""

from __future__ import annotations

import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mixer.errors import MixerError
from mixer.formats.mix import load_manifest
from mixer.formats.checksum import CHECKSUM, checksum_bytes, checksum_file
from mixer.mixing.spec import plan_from_manifest
from mixer.mixing.shards import PROV_DTYPE
from mixer.checks.verify_store import verify_mix_stores


def _fail(msg: str) -> None:
    raise MixerError(msg)


def _load_shard(mix: Path, rec: dict, seq_len: int, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """Read a shard once (its checksum and the byte comparison share the buffer)."""
    f = mix / rec["file"]
    if not f.exists():
        _fail(f"{f}: missing shard")
    expected = rec["samples"] * (seq_len + 1) * dtype.itemsize
    if f.stat().st_size != expected:
        _fail(f"{f}: {f.stat().st_size} bytes, manifest says {rec['samples']} samples = {expected} bytes (truncated or padded)")
    data = np.fromfile(f, dtype=dtype)
    if checksum_bytes(data.data) != rec[CHECKSUM]:
        _fail(f"{f}: checksum mismatch ({CHECKSUM}); the shard was modified or corrupted")
    pf = mix / rec["provenance"]
    if not pf.exists() or checksum_file(pf) != rec[f"provenance_{CHECKSUM}"]:
        _fail(f"{pf}: provenance missing or its checksum does not match the manifest")
    prov = np.load(pf, allow_pickle=False)
    if prov.dtype != PROV_DTYPE or len(prov) != rec["samples"]:
        _fail(f"{pf}: expected {rec['samples']} rows of {PROV_DTYPE}, found {len(prov)} of {prov.dtype}")
    return data.reshape(rec["samples"], seq_len + 1), prov


def window_deviation(is_domain: np.ndarray, fraction: float, sizes: list[int]) -> dict[int, float]:
    """max over all windows of W consecutive samples of |domain count - W * fraction|."""
    c = np.concatenate([[0], np.cumsum(is_domain, dtype=np.int64)])
    return {w: float(np.max(np.abs((c[w:] - c[:-w]) - w * fraction))) for w in sizes if w <= len(is_domain)}


_PLANS: dict[str, tuple[dict, object]] = {}


def _check_shard(arg: tuple[str, int, bool]) -> tuple[np.ndarray, dict[int, np.ndarray], int]:
    """Check one shard's bytes; return its source sequence and per-source offsets for the
    global checks. Runs in a worker process, so it reloads (and caches) the plan."""
    mix_s, i, quick = arg
    if mix_s not in _PLANS:
        manifest = load_manifest(mix_s)
        _PLANS[mix_s] = (manifest, plan_from_manifest(manifest))
    m, plan = _PLANS[mix_s]
    mix, rec = Path(mix_s), m["shards"][i]
    seq_len = m["seq_len"]
    samples, prov = _load_shard(mix, rec, seq_len, np.dtype(m["dtype"]))
    per_source = {}
    expected = None if quick else np.empty_like(samples)
    for src in plan.sources:
        sel = np.flatnonzero(prov["source"] == src.id)
        if not len(sel):
            continue
        off = prov["offset"][sel].astype(np.int64)
        per_source[src.id] = off
        if quick:
            continue
        if np.any(off % seq_len):
            _fail(f"{mix / rec['provenance']}: sample {int(sel[0])} has an offset off the sample grid")
        src.stream.gather(off // seq_len, out=expected, rows=sel)
    if expected is not None and not np.array_equal(expected, samples):  # rows located only on failure
        bad = np.flatnonzero(np.any(expected != samples, axis=1))
        j = int(bad[0])
        name = next((s.stream.name for s in plan.sources if s.id == prov["source"][j]), f"id {prov['source'][j]}")
        _fail(f"{mix / rec['file']}: sample {j} (source {name}, stream offset {int(prov['offset'][j])}) "
              f"differs from the store ({len(bad)} samples differ in this shard)")
    return prov["source"].copy(), per_source, samples.nbytes


def verify(mix_dir: Path | str, quick: bool = False, progress: bool = True, workers: int = 1) -> dict:
    mix = Path(mix_dir)
    t0 = time.perf_counter()
    m = load_manifest(mix)
    stores_checked = verify_mix_stores(mix, m, quick)  # first: a corrupted store is named, not blamed on a shard
    plan = plan_from_manifest(m)
    _PLANS[str(mix)] = (m, plan)
    seq_len = m["seq_len"]
    if plan.counts.samples != m["samples"] or sum(s["samples"] for s in m["shards"]) != m["samples"]:
        _fail(f"{mix}/manifest.json: sample counts disagree with the recipe ({plan.counts.samples} derived, {m['samples']} claimed)")

    offsets: dict[int, list[np.ndarray]] = {s.id: [] for s in plan.sources}
    source_seq = []
    n_bytes = 0
    args = [(str(mix), i, quick) for i in range(len(m["shards"]))]
    if workers > 1:
        # ProcessPoolExecutor, not multiprocessing.Pool: Pool.terminate() can deadlock after a
        # worker raises (seen here); the executor cancels pending shards and shuts down cleanly.
        ctx = multiprocessing.get_context("spawn")  # no fork: numpy/tokenizers threads
        with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            futures = [pool.submit(_check_shard, a) for a in args]
            try:
                results = [f.result() for f in tqdm(futures, desc=f"verify {mix.name}", unit="shard", disable=not progress)]
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
    else:
        results = (_check_shard(a) for a in tqdm(args, desc=f"verify {mix.name}", unit="shard", disable=not progress))
    for seq, per_source, nb in results:
        source_seq.append(seq)
        n_bytes += nb
        for sid, off in per_source.items():
            offsets.setdefault(sid, []).append(off)
    unknown = set(np.unique(np.concatenate(source_seq)).tolist()) - {s.id for s in plan.sources}
    if unknown:
        _fail(f"{mix}: provenance names unknown source ids {sorted(unknown)}")

    sources = []
    claimed = {s["id"]: s for s in m["sources"]}
    for src in plan.sources:
        off = np.sort(np.concatenate(offsets[src.id])) if offsets[src.id] else np.zeros(0, np.int64)
        if len(off) != src.samples or np.any(off != np.arange(src.samples, dtype=np.int64) * seq_len):
            _fail(f"{mix}: source {src.stream.name}: provenance does not cover its stream exactly once "
                  f"({len(off)} samples, {src.samples} expected, or offsets duplicated/skipped)")
        hist, partial = src.stream.pass_histogram(src.stream_tokens)
        claim = claimed.get(src.id, {})
        if src.train and (hist != claim.get("documents_full_passes") or partial != claim.get("partial_documents")):
            _fail(f"{mix}/manifest.json: source {src.stream.name}: per-document passes {hist} (+{partial} partial) "
                  f"recounted, manifest claims {claim.get('documents_full_passes')}")
        sources.append({"name": src.stream.name, "role": src.role, "samples": src.samples, "epochs": round(src.epochs, 4),
                        "passes": hist, "partial_documents": partial})

    seq = np.concatenate(source_seq)
    windows = {}
    if plan.general is not None and plan.general.train:
        w0, w1 = plan.placement.w0, plan.placement.w1
        sizes = [2**k for k in range(0, int(np.log2(max(1, w1 - w0))) + 1)]
        claims = {c["id"]: c for c in m.get("placed", [])}
        for src, pl, bound in zip(plan.level_sources(), plan.layout.levels, plan.layout.bounds()):
            if src is None or not src.train:
                continue
            is_src = seq == src.id
            if is_src[:w0].any() or is_src[w1:].any():
                _fail(f"{mix}: {src.stream.name} samples outside the window {m['fraction']['window']}")
            # The share is recounted from the provenance; only the claim is read from the manifest.
            f = int(is_src.sum()) / max(1, w1 - w0)
            claimed = m["fraction"]["achieved"] if src.id == getattr(plan.domain, "id", None) else claims.get(src.id, {}).get("achieved")
            if claimed is None or abs(f - claimed) > 1e-12:
                _fail(f"{mix}/manifest.json: {src.stream.name}: achieved fraction {f:.9g} recounted, manifest claims {claimed}")
            dev = window_deviation(is_src[w0:w1], f, sizes)
            worst = max(dev.values(), default=0.0)
            if worst >= bound:
                w = max(dev, key=dev.get)
                _fail(f"{mix}: {src.stream.name}: a window of {w} samples deviates by {worst:.2f} samples from "
                      f"fraction {f:.6g} (must be < {bound:.4g})")
            if src.id == getattr(plan.domain, "id", None):
                windows = dev
            else:
                sources[[s["name"] for s in sources].index(src.stream.name)]["max_window_deviation"] = {
                    str(k): round(v, 4) for k, v in dev.items()}

    for ev in m.get("eval", []):
        f = mix / ev["file"]
        if not f.exists() or checksum_file(f) != ev[CHECKSUM]:
            _fail(f"{f}: eval set missing or its checksum does not match the manifest")

    seconds = time.perf_counter() - t0
    return {
        "mix": str(mix), "ok": True, "quick": quick, "shards": len(m["shards"]), "samples": m["samples"],
        "tokens": m["tokens"], "fraction": m["fraction"], "sources": sources,
        "max_window_deviation": {str(k): round(v, 4) for k, v in windows.items()},
        "bytes": n_bytes, "seconds": round(seconds, 3), "mb_per_s": round(n_bytes / 1e6 / max(seconds, 1e-9), 1),
        "stores_checked": stores_checked,
    }
