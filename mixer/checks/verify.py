"""`mixer verify MIX`: re-derive a mix from its recipe and its stores and compare every claim.

Independent of the build: what is right is decided by mixer/checks/expect.py and
restream.py, written from docs/formats.md ("Streams and counts") without importing
mixer/mixing/, so a logic error of the schedule or the streams is caught, not repeated.

What is checked, and against what:
  * the stores: every file against the checksums the manifest recorded (verify_store.py);
  * every field of the manifest a consumer reads (name, kind, dtype, tokenizer, stores,
    domain, general, fraction, window, samples, tokens, sources with their passes and
    epoch starts, placed fractions and bounds, shard and eval records), against the
    value re-derived from the recipe and the stores;
  * every shard and provenance file: name, size, checksum, per-source counts;
  * provenance: each source's samples are exactly its stream's samples 0..n-1, in the
    documented order (domain-role sources in stream order, general-role sources within
    blocks of one epoch), each source's count as the recipe gives it, placed sources only
    inside the window, and each within its bound B of W times its fraction in *every*
    window of W samples (exactly, for all W at once: max - min of C(q) - q f over the window);
  * tokens (not with --quick): every sample against its stream, built from the store;
  * eval sets against the stores' held-out splits, sample sets against the domain store
    (verify_samples.py); a stage's exposure against its stages.
"""

from __future__ import annotations

import io
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import TypedDict

import numpy as np
import xxhash
from tqdm import tqdm

from mixer.checks.expect import Expected, document_passes, expected_mix
from mixer.checks.verify_samples import check_sample_sets
from mixer.checks.verify_store import verify_mix_stores
from mixer.errors import MixerError, UsageError
from mixer.formats.atomic import load_npy
from mixer.formats.checksum import CHECKSUM, checksum_bytes, checksum_file
from mixer.formats.mix import PROV_DTYPE, load_manifest
from mixer.forks import cores, fork_safe, forked_pool, inherited

CHUNK_TOKENS = 1 << 20  # tokens compared per step: 2 MiB stay in cache between building and comparing
SLICE_MIN_RUN = 64  # mean store run (tokens) above which copying runs beats a per-token index
_TOP = ("name", "kind", "seed", "seq_len", "dtype", "tokenizer", "stores", "domain", "general", "fraction",
        "samples", "tokens", "samples_per_shard", "bytes", "sources", "placed")
_HASHER = {"xxh3_128": xxhash.xxh3_128}[CHECKSUM]  # streaming form of the recorded checksum
_WORDS = {"achieved": "achieved fraction", "requested": "requested fraction"}
_ABSENT = object()


def _fail(msg: str) -> None:
    raise MixerError(msg)


# -- manifest fields ------------------------------------------------------------------


def _diff(claimed: object, expected: object, path: str) -> tuple[str, object, object] | None:
    """The first place where `claimed` differs from `expected` (numbers by value, the rest exactly)."""
    if isinstance(expected, dict):
        if not isinstance(claimed, dict):
            return path, claimed, expected
        for k, v in expected.items():
            d = _diff(claimed.get(k, _ABSENT), v, f"{path}.{k}" if path else k)
            if d:
                return d
        extra = sorted(set(claimed) - set(expected))
        return (f"{path}.{extra[0]}", claimed[extra[0]], _ABSENT) if extra else None
    if isinstance(expected, list):
        if not isinstance(claimed, list) or len(claimed) != len(expected):
            return path, claimed, expected
        for i, (c, e) in enumerate(zip(claimed, expected)):
            d = _diff(c, e, f"{path}[{i}]")
            if d:
                return d
        return None
    number = (int, float)
    same_kind = (isinstance(claimed, number) and not isinstance(claimed, bool)) if isinstance(expected, number) \
        else type(claimed) is type(expected)
    return None if same_kind and claimed == expected else (path, claimed, expected)


def _show(v: object) -> str:
    return "absent" if v is _ABSENT else repr(v)


def _compare(file: Path, claimed: dict, expected: dict, label: str = "") -> None:
    d = _diff(claimed, expected, "")
    if d is None:
        return
    path, got, want = d
    entity, field = "", path
    head, _, rest = path.partition("].")
    if rest and "[" in head:  # name a list entry by its source: "proofs: achieved fraction"
        lst, i = head.split("[")
        entry = claimed.get(lst, [])[int(i)] if isinstance(claimed.get(lst), list) else {}
        name = entry.get("name", entry.get("source", entry.get("file"))) if isinstance(entry, dict) else None
        entity, field = (f"{name}: " if isinstance(name, str) else ""), rest
    _fail(f"{file}: {label}{entity}{_WORDS.get(field, field)} {_show(got)} claimed, {_show(want)} re-derived ({label}{path})")


def _check_fields(mix: Path, m: dict, exp: Expected) -> None:
    file = mix / "manifest.json"
    # The counts first: everything else is sized by them (an edited recipe may ask for a huge mix).
    _compare(file, {"samples": m.get("samples", _ABSENT)}, {"samples": exp.samples})
    claimed = m.get("sources")
    _compare(file, {"sources": [{"samples": c.get("samples", _ABSENT), "name": c.get("name")} if isinstance(c, dict) else c
                                for c in claimed] if isinstance(claimed, list) else claimed},
             {"sources": [{"samples": s.samples, "name": s.name} for s in exp.sources]})
    fields = exp.fields()
    _compare(file, {k: m.get(k, _ABSENT) for k in _TOP if k in m or k in fields}, fields)
    shards = m.get("shards")
    if not isinstance(shards, list) or len(shards) != exp.shards:
        _fail(f"{file}: shards lists {len(shards) if isinstance(shards, list) else shards!r} shards, "
              f"re-derived {exp.shards} ({exp.samples} samples of {exp.samples_per_shard})")
    recorded = m.get("store_checksums")
    if recorded is not None:  # the stores verify_store checks are the ones re-derived from
        paths = {k: v.get("path") if isinstance(v, dict) else v for k, v in recorded.items()} \
            if isinstance(recorded, dict) else recorded
        _compare(file, {"store_checksums": paths},
                 {"store_checksums": {s.name: str(Path(exp.stores) / s.store.path.name) for s in exp.sources}})
    warnings = m.get("warnings", [])
    ok = isinstance(warnings, list) and len(warnings) == len(exp.warnings) and all(
        isinstance(w, str) and name in w and what in w for w, (name, what) in zip(warnings, exp.warnings))
    if not ok:
        _fail(f"{file}: warnings {warnings!r} claimed; re-derived: "
              + ("; ".join(f"{n} repeats {w}" for n, w in exp.warnings) or "none"))


# -- shards ---------------------------------------------------------------------------


class _Buffers(threading.local):
    """One comparison buffer per thread, allocated once (page faults cost more than copies)."""

    def get(self, n: int, dtype: np.dtype) -> np.ndarray:
        buf = getattr(self, "buf", None)
        if buf is None or len(buf) < n or buf.dtype != dtype:
            self.buf = buf = np.empty(n, dtype=dtype)
        return buf[:n]


_BUFFERS = _Buffers()


def _expected_rows(exp: Expected, src: np.ndarray, ks: np.ndarray) -> np.ndarray:
    """The rows a shard must hold for samples (source id, stream sample) in this order."""
    width = exp.seq_len + 1
    parts = []
    for sid in np.unique(src).tolist():
        rows = np.flatnonzero(src == sid)
        stream = exp.sources[sid].stream
        store_at, length, row, col = stream.runs(ks[rows])
        parts.append((stream.tokens, rows, store_at, length, rows[row] * width + col))
    n_runs = sum(len(p[2]) for p in parts)
    if n_runs * SLICE_MIN_RUN < len(src) * width:
        # Long documents: join each contiguous store run (a Python step per run, not per token).
        # Memoryview slices and bytes.join cost 3/4 of numpy views and np.concatenate.
        size = exp.dtype.itemsize
        views = [mv[a:b] for tok, _, at, ln, _ in parts
                 for mv in (memoryview(tok).cast("B"),) for a, b in zip((at * size).tolist(), ((at + ln) * size).tolist())]
        if len(parts) > 1:
            order = np.argsort(np.concatenate([p[4] for p in parts]), kind="stable").tolist()
            views = [views[i] for i in order]
        return np.frombuffer(b"".join(views), dtype=exp.dtype).reshape(-1, width)
    rows2d = _BUFFERS.get(len(src) * width, exp.dtype).reshape(-1, width)
    for tok, rows, at, ln, _ in parts:
        # Short documents: one per-token index (a cumsum of steps) and one take per source.
        step = np.ones(len(rows) * width, dtype=np.int64)
        first = np.cumsum(ln) - ln
        step[first[1:]] = at[1:] - (at[:-1] + ln[:-1] - 1)
        step[0] = at[0]
        rows2d[rows] = np.take(tok, np.cumsum(step, out=step)).reshape(-1, width)
    return rows2d


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    """Byte equality of two C-contiguous arrays, compared as uint64 words."""
    x, y = a.reshape(-1).view(np.uint8), b.reshape(-1).view(np.uint8)
    if len(x) != len(y):
        return False
    n = len(x) // 8 * 8
    return bool(np.array_equal(x[:n].view(np.uint64), y[:n].view(np.uint64)) and np.array_equal(x[n:], y[n:]))


def _read_provenance(pf: Path, claimed: str) -> np.ndarray:
    if not pf.is_file():
        _fail(f"{pf}: provenance missing")
    data = pf.read_bytes()
    if checksum_bytes(data) != claimed:
        _fail(f"{pf}: provenance checksum does not match the manifest; the file was modified or corrupted")
    try:
        return load_npy(io.BytesIO(data))
    except Exception as e:  # a damaged header: numpy raises ValueError, EOFError, SyntaxError, ...
        raise MixerError(f"{pf}: not a readable provenance file ({type(e).__name__})") from None


def _check_shard(mix: Path, m: dict, exp: Expected, k: int, quick: bool) -> tuple[np.ndarray, np.ndarray, int]:
    """One shard's files against its record and the stores; returns its (source ids, stream samples)."""
    rec, name, n = m["shards"][k], f"shard-{k:05d}", exp.shard_samples(k)
    sources = exp.sources
    want = {"file": f"{name}.bin", "samples": n, CHECKSUM: _ABSENT, "provenance": f"{name}.prov.npy",
            f"provenance_{CHECKSUM}": _ABSENT, "source_samples": _ABSENT}
    if not isinstance(rec, dict):
        _fail(f"{mix / 'manifest.json'}: shards[{k}] is not a record")
    for key in (CHECKSUM, f"provenance_{CHECKSUM}"):
        if not isinstance(rec.get(key), str):
            _fail(f"{mix / 'manifest.json'}: shards[{k}].{key} is not a checksum")
    want.update({key: rec[key] for key in (CHECKSUM, f"provenance_{CHECKSUM}")}, source_samples=rec.get("source_samples"))
    _compare(mix / "manifest.json", rec, want, label=f"shards[{k}].")
    width, L = exp.seq_len + 1, exp.seq_len
    f = mix / rec["file"]
    if not f.is_file():
        _fail(f"{f}: missing shard")
    size = f.stat().st_size
    if size != n * width * exp.dtype.itemsize:
        _fail(f"{f}: {size} bytes, manifest says {n} samples = {n * width * exp.dtype.itemsize} bytes (truncated or padded)")
    x = np.asarray(np.memmap(f, dtype=exp.dtype, mode="r", shape=(n, width)))  # plain view: memmap slicing is slow
    corrupt = f"{f}: checksum mismatch ({CHECKSUM}); the shard was modified or corrupted"
    if quick and checksum_bytes(x.data) != rec[CHECKSUM]:
        _fail(corrupt)
    pf = mix / rec["provenance"]
    prov = _read_provenance(pf, rec[f"provenance_{CHECKSUM}"])
    if prov.dtype != PROV_DTYPE or prov.shape != (n,):
        _fail(f"{pf}: expected {n} rows of {PROV_DTYPE}, found {prov.shape} of {prov.dtype}")
    src, off = prov["source"].astype(np.int64), prov["offset"]
    counts = np.bincount(src, minlength=len(sources))
    if len(counts) > len(sources):
        _fail(f"{pf}: names source id {int(src.max())}; the mix has {len(sources)} sources")
    recount = {str(i): int(c) for i, c in enumerate(counts)}
    _compare(mix / "manifest.json", {"source_samples": rec["source_samples"]}, {"source_samples": recount}, f"shards[{k}].")
    limit = np.array([s.samples for s in sources], dtype=np.uint64)[src] * np.uint64(L)
    bad = np.flatnonzero((off % np.uint64(L) != 0) | (off >= limit))
    if len(bad):
        j = int(bad[0])
        _fail(f"{pf}: sample {j} (source {sources[src[j]].name}) has stream offset {int(off[j])}, not one of its "
              f"{sources[src[j]].samples} samples (multiples of {L})")
    ks = (off // np.uint64(L)).astype(np.int64)
    if not quick:
        # One pass: each chunk is hashed right after it is compared, while it is still in cache.
        h, differs = _HASHER(), None
        step = max(8, CHUNK_TOKENS // width // 8 * 8)  # a multiple of 8 rows keeps uint64 words aligned
        for r0 in range(0, n, step):
            r1 = min(n, r0 + step)
            if differs is None:
                want_rows = _expected_rows(exp, src[r0:r1], ks[r0:r1])
                if not _same(x[r0:r1], want_rows):
                    diff = np.flatnonzero(np.any(x[r0:r1] != want_rows, axis=1))
                    j = r0 + int(diff[0])
                    differs = (f"{f}: sample {j} (source {sources[src[j]].name}, stream offset {int(off[j])}) differs "
                               f"from the store ({len(diff)} samples differ in rows {r0}..{r1 - 1})")
            h.update(x[r0:r1].data)
        if h.hexdigest() != rec[CHECKSUM]:
            _fail(corrupt)  # a corrupted file, not a forged one: say so, whatever the first sample that differs
        if differs:
            _fail(differs)
    # compact for the whole-mix checks: 98M samples of a 200B mix hold 0.6 GB, not 1.6
    return prov["source"].copy(), ks.astype(np.int32 if len(sources) and max(s.samples for s in sources) < 2**31 else np.int64), \
        n * width * exp.dtype.itemsize


# -- what the provenance says about the whole mix -------------------------------------


def window_deviation(is_src: np.ndarray, fraction: float, sizes: list[int]) -> dict[int, float]:
    """max over all windows of W consecutive samples of |count - W * fraction|, per W."""
    c = np.concatenate([[0], np.cumsum(is_src, dtype=np.int64)])
    return {w: float(np.max(np.abs((c[w:] - c[:-w]) - w * fraction))) for w in sizes if w <= len(is_src)}


def _where(exp: Expected, p: int) -> str:
    return f"shard-{p // exp.samples_per_shard:05d} row {p % exp.samples_per_shard}"


def _check_provenance(mix: Path, exp: Expected, src: np.ndarray, ks: np.ndarray) -> tuple[dict, dict]:
    """Counts, coverage, order and windows of every source, from provenance alone."""
    L = exp.seq_len
    for s in exp.sources:
        pos = np.flatnonzero(src == s.id)
        if len(pos) != s.samples:
            _fail(f"{mix}: source {s.name}: {len(pos)} samples in the shards, the recipe gives {s.samples}")
        mine = ks[pos]
        if s.role == "general":  # shuffled within blocks of one epoch's worth of samples, blocks in order
            block = max(1, min(s.samples, s.stream.epoch_tokens // L))
            wrong = np.flatnonzero(mine // block != np.arange(len(mine)) // block)
            rule = f"the {s.role} source's i-th sample must come from block i // {block} of its stream"
        else:
            wrong = np.flatnonzero(mine != np.arange(len(mine)))
            rule = f"a {s.role} source's samples are in stream order"
        if len(wrong):
            i = int(wrong[0])
            _fail(f"{mix}: source {s.name}: {_where(exp, int(pos[i]))}, its sample {i}, is stream sample "
                  f"{int(mine[i])} ({rule})")
        if s.role == "general" and len(mine) and np.any(np.bincount(mine, minlength=s.samples) != 1):
            _fail(f"{mix}: source {s.name}: provenance does not cover its stream exactly once (samples repeated or missing)")
    windows, per_source = {}, {}
    w0, w1 = exp.w0, exp.w1
    width = w1 - w0
    sizes = [2**k for k in range(0, int(np.log2(max(1, width))) + 1)]
    for p in exp.placed:
        s = p.source
        if not s.train:
            continue
        is_s = src == s.id
        outside = np.flatnonzero(is_s[:w0]).tolist()[:1] + (w1 + np.flatnonzero(is_s[w1:])).tolist()[:1]
        if outside:
            _fail(f"{mix}: source {s.name}: {_where(exp, outside[0])} lies outside the window {exp.recipe['window']}")
        # Every window at once: a window [a, b) deviates by D(b) - D(a), D(q) = C(q) W - q n (integers).
        c = np.concatenate([[0], np.cumsum(is_s[w0:w1], dtype=np.int64)])
        d = c * width - np.arange(width + 1, dtype=np.int64) * s.samples
        worst = int(d.max() - d.min()) / width
        if not worst < p.bound:
            _fail(f"{mix}: source {s.name}: a window of the mix deviates by {worst:.4f} samples from fraction "
                  f"{s.samples / width:.6g} (must be < {p.bound:.4g})")
        dev = window_deviation(is_s[w0:w1], s.samples / width, sizes)
        if p is exp.placed[0] and s is exp.domain:
            windows = dev
        else:
            per_source[s.name] = {str(k): round(v, 4) for k, v in dev.items()}
    return windows, per_source


# -- eval sets and stages ---------------------------------------------------------------


def _check_eval(mix: Path, m: dict, exp: Expected) -> None:
    L = exp.seq_len
    wanted = []
    for s, split in exp.eval_sets():
        tokens = np.asarray(s.store.tokens(split)) if s.store.n_tokens(split) else np.zeros(0, exp.dtype)
        n = max(0, (len(tokens) - 1) // L)
        rows = np.lib.stride_tricks.as_strided(tokens, shape=(n, L + 1), strides=(L * tokens.itemsize, tokens.itemsize))
        wanted.append({"file": f"eval/{s.name}-{split}.bin", "source": s.name, "role": s.role, "split": split,
                       "samples": n, "documents": s.store.n_docs(split),
                       "tokens_dropped": len(tokens) - (n * L + 1 if n else 0),
                       CHECKSUM: checksum_bytes(np.ascontiguousarray(rows).data)})
    claimed = m.get("eval", [])
    _compare(mix / "manifest.json", {"eval": claimed}, {"eval": wanted})
    for rec in wanted:
        f = mix / rec["file"]
        if not f.is_file() or checksum_file(f) != rec[CHECKSUM]:
            _fail(f"{f}: eval set missing or its bytes are not the store's held-out split")


def _check_stage(mix: Path, m: dict, exp: Expected) -> None:
    """A recipe stage: its name is its folder's, and its exposure sums its stages' passes."""
    if "stage" not in m and "exposure" not in m:
        return
    file = mix / "manifest.json"
    stage = m.get("stage")
    if not isinstance(stage, dict) or stage.get("name") != mix.name:
        _fail(f"{file}: stage {stage!r} is not the stage built into {mix.name}")
    if "exposure" not in m:
        return
    e = m["exposure"]
    if not isinstance(e, dict) or not isinstance(e.get("stages"), list) or not e["stages"] or e["stages"][-1] != mix.name \
            or not all(isinstance(x, str) for x in e["stages"]) or not isinstance(e.get("source"), str):
        _fail(f"{file}: exposure {e!r} does not end with this stage")
    total = None
    for name in e["stages"]:
        other = exp if name == mix.name else expected_mix(load_manifest(mix.parent / name), mix.parent / name)
        passes = document_passes(other, e["source"])
        if passes is not None:
            total = passes if total is None else total + passes
    if total is None:
        _fail(f"{file}: exposure names source {e['source']!r}, a domain source of none of its stages")
    hist = {str(k): int(v) for k, v in enumerate(np.bincount(total)) if v}
    _compare(file, {"exposure": e}, {"exposure": {"source": e["source"], "stages": e["stages"],
                                                   "documents_total_full_passes": hist}})


# -- the whole mix --------------------------------------------------------------------


def _inherited_check(k: int) -> tuple[np.ndarray, np.ndarray, int]:
    mix, m, exp, quick = inherited()
    return _check_shard(mix, m, exp, k, quick)


class _Shards:
    """Checks every shard, `workers` at a time, in shard order.

    Processes where the platform forks them (Linux): a forked worker inherits the laid-out
    streams and the mapped stores for free, where a spawned one would re-derive them
    (~0.25 s and their memory each). Threads did not scale: joining a chunk's store runs and
    the per-run Python around it hold the GIL (measured: 2 threads ran no faster than 1).
    The pool forks when it is made, before verify starts its own threads (the store hashing,
    the progress bar), so no lock can be held at the fork; a caller that already runs
    threads, or a platform without fork, gets threads instead: correct, only not faster."""

    def __init__(self, mix: Path, m: dict, exp: Expected, quick: bool, workers: int) -> None:
        self.args, self.n = (mix, m, exp, quick), exp.shards
        self.workers = max(1, min(workers, self.n))
        self.stack = ExitStack()
        self.pool = self.threads = None
        if self.workers > 1 and fork_safe():
            self.pool = self.stack.enter_context(forked_pool(self.workers, self.args))
        elif self.workers > 1:
            self.threads = self.stack.enter_context(ThreadPoolExecutor(self.workers))
            self.stack.callback(self.threads.shutdown, cancel_futures=True)  # after a fault: shards not started are not read

    def __enter__(self) -> "_Shards":
        return self

    def __exit__(self, *exc) -> bool:
        return self.stack.__exit__(*exc)  # the pool sees the fault (close() would tell it all went well)

    def results(self):
        """(source ids, stream samples, bytes) of each shard in order; raises the first fault."""
        mix, m, exp, quick = self.args
        if self.pool is not None:
            yield from self.pool.map(_inherited_check, range(self.n))
        elif self.threads is not None:
            futures = [self.threads.submit(_check_shard, mix, m, exp, k, quick) for k in range(self.n)]
            for f in futures:
                yield f.result()
        else:
            for k in range(self.n):
                yield _check_shard(mix, m, exp, k, quick)


class _VerifiedSourceKeys(TypedDict):
    name: str
    role: str
    samples: int
    epochs: float
    passes: dict[str, int]  # full passes -> documents, as the manifest claims and verify recounted
    partial_documents: int


class VerifiedSource(_VerifiedSourceKeys, total=False):  # total=False: see mixing/build.py's BuildStatus
    max_window_deviation: dict[str, float]  # a placed source of an N-source mix


class VerifyReport(TypedDict):
    """What `mixer verify MIX --json` prints and api.verify returns for a mix
    (tests/test_result_types.py holds it to real output)."""
    mix: str
    ok: bool
    quick: bool
    shards: int
    samples: int
    tokens: int
    fraction: dict  # the manifest's, every figure recounted from provenance
    sources: list[VerifiedSource]
    max_window_deviation: dict[str, float]  # window size W -> the largest |count - W f| seen
    bytes: int
    seconds: float
    mb_per_s: float
    stores_checked: list[str] | None  # the stores proved unchanged (None: a mix too old to record them)


def _check_mix(mix: Path, m: dict, quick: bool, progress: bool, workers: int) -> tuple[dict, list[str] | None]:
    """The mix's report and the stores proved unchanged.

    With one worker the stores are checked first, so a corrupted store is named, not
    blamed on a shard; with more they are hashed beside the shards (xxhash releases the
    GIL), and a store fault still wins over the shard fault it explains."""
    def stores() -> list[str] | None:
        return verify_mix_stores(mix, m, quick)

    checked = stores() if workers == 1 else None
    try:
        exp = expected_mix(m, mix)
        _check_fields(mix, m, exp)
    except MixerError:
        if workers > 1:
            stores()
        raise
    if not quick:
        for s in exp.sources:
            s.stream.prepare(s.samples)
    with _Shards(mix, m, exp, quick, workers) as shards, ThreadPoolExecutor(1) as side:
        hashed: Future | None = side.submit(stores) if workers > 1 else None
        bar = tqdm(total=exp.shards, desc=f"verify {mix.name}", unit="shard", disable=not progress)
        try:
            results = []
            for r in shards.results():
                results.append(r)
                bar.update()
        except BaseException:
            if hashed is not None and hashed.exception() is not None:  # waits for the stores
                raise hashed.exception() from None
            raise
        finally:
            bar.close()
        if hashed is not None:
            checked = hashed.result()
    src_all, ks_all, sizes = zip(*results)
    n_bytes = sum(sizes)
    windows, per_source = _check_provenance(mix, exp, np.concatenate(src_all), np.concatenate(ks_all))
    _check_eval(mix, m, exp)
    check_sample_sets(mix, m, exp)
    _check_stage(mix, m, exp)
    sources = []
    for s, claim in zip(exp.sources, m["sources"]):
        row = {"name": s.name, "role": s.role, "samples": s.samples, "epochs": round(claim["epochs"], 4),
               "passes": claim["documents_full_passes"], "partial_documents": claim["partial_documents"]}
        if s.name in per_source:
            row["max_window_deviation"] = per_source[s.name]
        sources.append(row)
    return {"mix": str(mix), "ok": True, "quick": quick, "shards": exp.shards, "samples": exp.samples,
            "tokens": m["tokens"], "fraction": m["fraction"], "sources": sources,
            "max_window_deviation": {str(k): round(v, 4) for k, v in windows.items()}, "bytes": n_bytes}, checked


def verify(mix_dir: Path | str, quick: bool = False, progress: bool = True, workers: int | None = None) -> VerifyReport:
    """Check a mix against its recipe and stores; raises MixerError naming the first difference.

    workers: shards checked at once (default: one per core, at most 8)."""
    if workers is None:
        workers = min(cores(), 8)
    if not isinstance(workers, int) or workers < 1:
        raise UsageError(f"--workers {workers}: must be at least 1")
    mix = Path(mix_dir)
    t0 = time.perf_counter()
    m = load_manifest(mix)
    report, stores_checked = _check_mix(mix, m, quick, progress, workers)
    seconds = time.perf_counter() - t0
    return {**report, "seconds": round(seconds, 3), "mb_per_s": round(report["bytes"] / 1e6 / max(seconds, 1e-9), 1),
            "stores_checked": stores_checked}
