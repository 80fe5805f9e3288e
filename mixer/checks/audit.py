"""Leakage audit: which held-out documents have token n-grams that occur in training data.

Held-out side (domain `test`, general `val`): every n-gram of every document is hashed
(mixer.ngrams) and kept in memory as a sorted key set, with each key's held-out document
frequency and each document's whole-content hash. Training side: token files (mix shards
`(n, seq_len+1)` or flat token files) streamed in chunks of `CHUNK_TOKENS`, so memory does
not grow with the training data; n-grams never cross an EOS or a sample (row) edge. Files
are spread over datatrove tasks (`ScanFiles`); each task writes its partial result
atomically and `merge` combines them. A rerun with the same `work` folder skips finished
tasks (datatrove completion files).

Boilerplate allowlist: an n-gram is allowlisted when it occurs in at least `min_docs`
(default 5) held-out documents AND at least `min_docs` training documents (EOS- or
sample-delimited pieces). Both sides, because repetition is normal on the training side
(a domain seen for 50 epochs puts a leaked document there 50 times), while a leaked
document is one document on the held-out side, so its own n-grams never qualify; licence
headers and ABC `O:`/`M:`/`L:` header lines, found across many documents on both sides, do.
Allowlisted n-grams count neither as matches nor in a document's n-gram total.

Degenerate n-grams (fewer than MIN_DISTINCT distinct token ids: whitespace runs, table
borders, repeated bar lines) are not audited: they carry no document, and they were every
13-gram match between 80 Python doc pages and 1,500 ABC tunes (docs/benchmarks/audit.md).

Exact match: a held-out document whose whole token content equals a whole EOS- or
sample-delimited piece of a training row (independent of the allowlist).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from datatrove.pipeline.base import PipelineStep

from mixer.formats.atomic import atomic_open, write_json
from mixer.errors import MixerError, UsageError
from mixer.checks.ngrams import KeySet, NgramHasher, segments, sorted_unique, valid_windows
from mixer.formats.store import Store, check_same_tokenizer

CHUNK_TOKENS = 1 << 21  # ~100 MB of temporaries per task, whatever the training size
LOC_BITS = 40  # location code: file index << 40 | token offset in the file
NO_LOC = np.int64(np.iinfo(np.int64).max)
MIN_DISTINCT = 4  # all 16,993 matches of 80 Python doc pages in 1,500 tunes had <= 3


@dataclass
class TrainFile:
    path: str
    dtype: str
    row_len: int | None  # seq_len + 1 for sample files, None for flat token files

    def open(self) -> int:
        """Checks the file and returns its length in tokens."""
        path, dtype = Path(self.path), np.dtype(self.dtype)
        if not path.is_file():
            raise MixerError(f"{path}: training file not found")
        size = path.stat().st_size
        unit = dtype.itemsize * (self.row_len or 1)
        if size % unit:
            shape = f"rows of {self.row_len} {dtype.name}" if self.row_len else f"{dtype.name} tokens"
            raise MixerError(f"{path}: size {size} bytes is not a whole number of {shape}; wrong --dtype or --seq-len?")
        return size // dtype.itemsize

    def read(self, start: int, count: int) -> np.ndarray:
        """Tokens [start, start+count): read, not memory-mapped, so resident memory stays one
        chunk whatever the file size."""
        dtype = np.dtype(self.dtype)
        return np.fromfile(self.path, dtype=dtype, count=count, offset=start * dtype.itemsize)


@dataclass
class Heldout:
    """All held-out documents of the audited stores, concatenated, with their n-grams."""

    sources: list[dict]  # name, split, store, tokenizer_path, first (doc index), docs
    tokens: np.ndarray
    starts: np.ndarray  # per document: content [start, end) in `tokens` (EOS excluded)
    ends: np.ndarray
    ids: list[str]
    pos: np.ndarray  # per held-out n-gram occurrence: start in `tokens`
    doc: np.ndarray  # ... its document
    key: np.ndarray  # ... its index in `keys`
    keys: np.ndarray  # sorted unique n-gram hashes
    df: np.ndarray  # per key: number of held-out documents holding it
    doc_hash: np.ndarray  # per document: hash of its whole content


def load_heldout(stores: list[Store], hasher: NgramHasher, eos_id: int) -> Heldout:
    sources, parts, starts, ends, ids, base, first = [], [], [], [], [], 0, 0
    for s in stores:
        split = s.heldout
        toks, doc_ends = np.asarray(s.tokens(split)), s.doc_ends(split).astype(np.int64)
        doc_starts = np.concatenate([[0], doc_ends[:-1]]).astype(np.int64)
        content_end = doc_ends - (toks[np.maximum(doc_ends - 1, 0)] == eos_id) * (doc_ends > doc_starts)
        names = s.doc_ids(split)
        if len(names) != len(doc_ends):
            raise MixerError(f"{s.path / (split + '.ids')}: {len(names)} ids for {len(doc_ends)} documents; "
                             "re-run mixer tokenize")
        parts.append(toks)
        starts.append(doc_starts + base)
        ends.append(content_end + base)
        ids += names
        path = s.tokenizer.get("path")
        sources.append({"source": s.name, "split": split, "store": str(s.path), "first": first, "documents": len(doc_ends),
                        "tokenizer_path": path if path and Path(path).is_file() else None})
        base += len(toks)
        first += len(doc_ends)
    tokens = np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint16)
    starts_a, ends_a = np.concatenate(starts), np.concatenate(ends)
    prefix = hasher.prefix(tokens)
    doc_hash = hasher.spans(prefix, starts_a, ends_a)
    n = hasher.n
    pos = np.flatnonzero(valid_windows(len(tokens), n, np.flatnonzero(tokens == eos_id)))
    doc = (np.searchsorted(starts_a, pos, side="right") - 1).astype(np.int32)
    keep = pos + n <= ends_a[doc]  # stores end every document with EOS; this holds without it too
    keep &= distinct_tokens(tokens, pos, n) >= min(MIN_DISTINCT, n)
    pos, doc = pos[keep], doc[keep]
    del keep
    h = hasher.spans(prefix, pos, pos + n)
    del prefix
    # np.unique(h, return_inverse=True), written out so each temporary is freed early
    order = np.argsort(h)
    h = h[order]
    first = np.empty(len(h), dtype=bool)
    first[:1] = True
    np.not_equal(h[1:], h[:-1], out=first[1:])
    keys = h[first]
    del h
    key = np.empty(len(order), dtype=np.int64)
    key[order] = np.cumsum(first) - 1
    del order, first
    pairs = sorted_unique(key * max(len(ids), 1) + doc)
    df = np.bincount(pairs // max(len(ids), 1), minlength=len(keys))
    return Heldout(sources, tokens, starts_a, ends_a, ids, pos, doc, key, keys, df, doc_hash)


DEFAULT_MIN_DOCS = 5


def distinct_tokens(tokens: np.ndarray, pos: np.ndarray, n: int, batch: int = 1 << 20) -> np.ndarray:
    """Number of distinct token ids in each window tokens[p:p+n] (sorted rows, in batches)."""
    out = np.empty(len(pos), dtype=np.int16)
    view = np.lib.stride_tricks.sliding_window_view(tokens, n) if len(tokens) >= n else np.zeros((0, n), tokens.dtype)
    for b in range(0, len(pos), batch):
        w = np.sort(view[pos[b : b + batch]], axis=1)
        out[b : b + batch] = 1 + np.count_nonzero(np.diff(w, axis=1), axis=1)
    return out


def prepare(work: Path, held: Heldout, files: list[TrainFile], n: int, vocab_size: int, eos_id: int,
            min_docs: int) -> Path:
    """Write what every task needs into work/<fingerprint>/ (the fingerprint covers the
    held-out keys, the files and the settings, so a stale folder is never reused)."""
    candidates = np.flatnonzero(held.df >= min_docs)
    nonempty = held.ends > held.starts
    order = np.argsort(held.doc_hash[nonempty], kind="stable")
    plan = {"n": n, "vocab_size": vocab_size, "eos_id": eos_id, "chunk": CHUNK_TOKENS,
            "files": [f.__dict__ for f in files],
            "stat": [[Path(f.path).stat().st_size, Path(f.path).stat().st_mtime_ns] for f in files],  # rewritten -> new folder
            "keys_sha256": hashlib.sha256(held.keys.tobytes()).hexdigest(),
            "docs_sha256": hashlib.sha256(held.doc_hash.tobytes()).hexdigest(), "min_docs": min_docs}
    fp = hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()[:16]
    folder = work / fp
    if not (folder / "plan.json").exists():
        ks = KeySet.build(held.keys)
        cand_of_key = np.full(len(held.keys), -1, dtype=np.int64)
        cand_of_key[candidates] = np.arange(len(candidates))
        arrays = {"keys": held.keys, "bits": ks.bits, "directory": ks.directory, "cand_of_key": cand_of_key,
                  "doc_hash": held.doc_hash[nonempty][order], "doc_index": np.flatnonzero(nonempty)[order]}
        for name, a in arrays.items():
            with atomic_open(folder / f"{name}.npy") as f:
                np.save(f, a)
        write_json(folder / "plan.json", {**plan, "candidates": int(len(candidates))})
    return folder


class Scanner:
    """Streams training files and accumulates what they hold of the held-out n-grams."""

    def __init__(self, folder: Path) -> None:
        self.plan = json.loads((folder / "plan.json").read_text())
        load = lambda name: np.load(folder / f"{name}.npy", mmap_mode="r")  # noqa: E731 - shared page cache
        self.keys = KeySet(load("keys"), load("bits"), load("directory"))
        self.cand_of_key = load("cand_of_key")
        self.doc_hash, self.doc_index = load("doc_hash"), load("doc_index")
        self.hasher = NgramHasher(self.plan["n"], self.plan["vocab_size"])
        self.seen = np.zeros(len(self.keys.keys), dtype=bool)
        self.loc = np.full(len(self.keys.keys), NO_LOC, dtype=np.int64)
        self.df = np.zeros(self.plan["candidates"], dtype=np.int64)
        self.exact: dict[int, int] = {}
        self.stats = {"files": 0, "tokens": 0, "ngrams": 0, "hits": 0}

    def scan(self, index: int, f: TrainFile) -> None:
        size = f.open()
        chunk, start = max(self.plan["chunk"], 2 * self.hasher.n), 0
        if f.row_len:  # whole samples per chunk: no n-gram crosses a sample anyway
            step = max(1, chunk // f.row_len) * f.row_len
            for start in range(0, size, step):
                self._chunk(index, f, f.read(start, step), start)
        while not f.row_len and start < size:
            piece = f.read(start, chunk)
            if start + len(piece) >= size:
                self._chunk(index, f, piece, start)
                break
            last = np.flatnonzero(piece == self.plan["eos_id"])
            if len(last) and last[-1] >= self.hasher.n:  # end the chunk after its last EOS: documents stay whole
                end, step = int(last[-1]) + 1, int(last[-1]) + 1
            else:  # one document longer than a chunk: overlap by n-1 so no n-gram is lost
                end, step = len(piece), len(piece) - self.hasher.n + 1
            self._chunk(index, f, piece[:end], start)
            start += step
        self.stats["files"] += 1

    def _chunk(self, index: int, f: TrainFile, tokens: np.ndarray, offset: int) -> None:
        if len(tokens) and int(tokens.max()) >= self.hasher.vocab_size:
            raise MixerError(f"{f.path}: token id {int(tokens.max())} near token {offset} is outside the vocabulary "
                             f"({self.hasher.vocab_size}); wrong --dtype, or another tokenizer?")
        eos = np.flatnonzero(tokens == self.plan["eos_id"])
        prefix = self.hasher.prefix(tokens)
        ok = valid_windows(len(tokens), self.hasher.n, eos, f.row_len)
        pos, key = self.keys.lookup(self.hasher.windows(tokens, prefix))
        keep = ok[pos]
        pos, key = pos[keep], key[keep]
        self.stats["tokens"] += len(tokens)
        self.stats["ngrams"] += int(np.count_nonzero(ok))
        self.stats["hits"] += len(pos)
        code = (np.int64(index) << LOC_BITS) + offset + pos
        first = self.loc[key] == NO_LOC
        self.loc[key[first]] = code[first]
        self.seen[key] = True
        seg_starts, seg_ends = segments(len(tokens), eos, f.row_len)
        cand = self.cand_of_key[key]
        sel = cand >= 0
        if sel.any():  # training document frequency, only for keys the allowlist may take
            seg = np.searchsorted(seg_starts, pos[sel], side="right")
            pairs = sorted_unique(cand[sel] * (len(seg_starts) + 1) + seg)
            self.df += np.bincount(pairs // (len(seg_starts) + 1), minlength=len(self.df))
        if len(self.doc_hash) and len(seg_starts):
            h = self.hasher.spans(prefix, seg_starts, seg_ends)
            j = np.minimum(np.searchsorted(self.doc_hash, h), len(self.doc_hash) - 1)
            for m in np.flatnonzero(self.doc_hash[j] == h):
                self.exact.setdefault(int(self.doc_index[j[m]]), int((index << LOC_BITS) + offset + seg_starts[m]))

    def save(self, path: Path) -> None:
        seen = np.flatnonzero(self.seen)
        with atomic_open(path) as fh:
            np.savez(fh, seen=seen, loc=self.loc[seen], df=self.df,
                     exact_doc=np.array(list(self.exact), dtype=np.int64),
                     exact_loc=np.array(list(self.exact.values()), dtype=np.int64),
                     stats=np.array([self.stats[k] for k in ("files", "tokens", "ngrams", "hits")], dtype=np.int64))


class ScanFiles(PipelineStep):
    """datatrove step: task `rank` scans files rank, rank+world_size, ... and writes
    <out>/partials/<rank>.npz atomically. A data error is written to <out>/errors/<rank>.txt
    instead of raised, so the user sees one line from the parent rather than a task traceback."""

    name = "held-out n-gram scan"
    type = "AUDIT"

    def __init__(self, folder: str, out: str) -> None:
        super().__init__()
        self.folder, self.out = folder, out

    def run(self, data: Any = None, rank: int = 0, world_size: int = 1) -> Any:
        scanner = Scanner(Path(self.folder))
        out = Path(self.out)
        try:
            for i, f in enumerate(scanner.plan["files"]):
                if i % world_size == rank:
                    with self.track_time():
                        scanner.scan(i, TrainFile(**f))
        except MixerError as e:
            with atomic_open(out / "errors" / f"{rank:05d}.txt", "w") as fh:
                fh.write(str(e))
        else:
            for k, v in scanner.stats.items():
                self.stat_update(k, value=v)
            scanner.save(out / "partials" / f"{rank:05d}.npz")
        yield from data or ()


def merge(folder: Path, out: Path, tasks: int, n_docs: int) -> dict:
    """Combine the tasks' partials: union of seen keys, earliest location, summed counts."""
    n_keys = len(np.load(folder / "keys.npy", mmap_mode="r"))
    cand_of_key = np.load(folder / "cand_of_key.npy", mmap_mode="r")
    seen, loc = np.zeros(n_keys, dtype=bool), np.full(n_keys, NO_LOC, dtype=np.int64)
    df, exact = np.zeros(int((cand_of_key >= 0).sum()), dtype=np.int64), np.full(n_docs, NO_LOC, dtype=np.int64)
    stats = np.zeros(4, dtype=np.int64)
    for rank in range(tasks):
        err, part = out / "errors" / f"{rank:05d}.txt", out / "partials" / f"{rank:05d}.npz"
        if err.exists():
            raise MixerError(err.read_text())
        if not part.exists():
            raise MixerError(f"{out}: audit task {rank} of {tasks} has not finished; re-run the same command to resume")
        with np.load(part) as p:
            seen[p["seen"]] = True
            np.minimum.at(loc, p["seen"], p["loc"])
            df += p["df"]
            np.minimum.at(exact, p["exact_doc"], p["exact_loc"])
            stats += p["stats"]
    return {"seen": seen, "loc": loc, "df": df, "exact": exact, "candidates": np.flatnonzero(cand_of_key >= 0),
            "stats": dict(zip(("files", "tokens", "ngrams", "hits"), stats.tolist()))}


def run_scan(folder: Path, tasks: int, executor: str, workers: int) -> Path:
    """Run ScanFiles over `tasks` datatrove tasks; returns the folder holding the partials.
    One folder per task count: datatrove's completion files are per rank."""
    out = folder / f"tasks-{tasks:05d}"
    for err in sorted((out / "errors").glob("*.txt")):  # a failed task is retried, not skipped as completed
        (out / "logs" / "completions" / err.stem).unlink(missing_ok=True)
        err.unlink()
    step = ScanFiles(str(folder.resolve()), str(out.resolve()))
    logs = str((out / "logs").resolve())
    if executor == "local" and tasks == 1:  # in-process, as `mixer build` does: no executor logs for one task
        for _ in step.run(None, 0, 1):
            pass
    elif executor == "local":
        from datatrove.executor import LocalPipelineExecutor

        LocalPipelineExecutor([step], tasks=tasks, workers=workers, logging_dir=logs).run()
    elif executor == "slurm":
        from datatrove.executor import SlurmPipelineExecutor

        SlurmPipelineExecutor([step], tasks=tasks, workers=workers, logging_dir=logs, job_name="mixer-audit",
                              time=os.environ.get("MIXER_SLURM_TIME", "24:00:00"),
                              partition=os.environ.get("MIXER_SLURM_PARTITION"),
                              env_command=f"source {sys.prefix}/bin/activate").run()
    elif executor == "ray":
        try:
            import ray  # noqa: F401
            from datatrove.executor import RayPipelineExecutor
        except ImportError:
            raise MixerError("--executor ray: ray is not installed (pip install 'mixer[ray]')") from None
        RayPipelineExecutor([step], tasks=tasks, workers=workers, logging_dir=logs).run()
    else:
        raise UsageError(f"--executor: unknown executor {executor!r} (local, slurm, ray)")
    return out


def audit(stores: list[Store], files: list[TrainFile], work: Path, *, n: int = 13, max_overlap: float = 0.0,
          allowlist: bool = True, min_docs: int | None = None, executor: str = "local", tasks: int = 1,
          workers: int = -1) -> dict:
    """Audit `files` against the held-out splits of `stores`; returns the report (see `report`)."""
    if n < 1:
        raise UsageError(f"--ngram {n}: must be at least 1")
    if not 0.0 <= max_overlap <= 1.0:
        raise UsageError(f"--max-overlap {max_overlap:g}: a share, between 0 and 1")
    if not files:
        raise UsageError("no training files to audit")
    for f in files:
        f.open()  # size and layout errors now, in the parent, naming the file
    tok = check_same_tokenizer(stores)
    t0 = time.perf_counter()
    hasher = NgramHasher(n, int(tok["vocab_size"]))
    held = load_heldout(stores, hasher, int(tok["eos_id"]))
    min_docs = min_docs or DEFAULT_MIN_DOCS
    folder = prepare(work, held, files, n, hasher.vocab_size, int(tok["eos_id"]), min_docs)
    t1 = time.perf_counter()
    tasks = max(1, min(tasks, len(files)))
    out = run_scan(folder, tasks, executor, workers if workers > 0 else min(tasks, os.cpu_count() or 1))
    merged = merge(folder, out, tasks, len(held.ids))
    rep = report(held, merged, files, n=n, max_overlap=max_overlap, allowlist=allowlist, min_docs=min_docs)
    rep["training"].update(executor=executor, tasks=tasks, seconds=round(time.perf_counter() - t1, 3))
    rep["heldout"]["seconds"] = round(t1 - t0, 3)
    return rep


HIST = [("0", 0.0), ("<=1%", 0.01), ("<=10%", 0.1), ("<=50%", 0.5), (">50%", 1.0)]
WORST = 10


def report(held: Heldout, m: dict, files: list[TrainFile], *, n: int, max_overlap: float, allowlist: bool,
           min_docs: int) -> dict:
    allow = np.zeros(len(held.keys), dtype=bool)
    if allowlist:
        allow[m["candidates"][m["df"] >= min_docs]] = True
    counted = ~allow[held.key]
    matched = m["seen"][held.key] & counted
    nd = len(held.ids)
    total = np.bincount(held.doc[counted], minlength=nd)
    hits = np.bincount(held.doc[matched], minlength=nd)
    share = np.divide(hits, total, out=np.zeros(nd), where=total > 0)
    exact = m["exact"] != NO_LOC
    over = (share > max_overlap) | exact
    text = _Decoder(held)
    sources = []
    for s in held.sources:
        d = np.arange(s["first"], s["first"] + s["documents"])
        bins = np.digitize(share[d], [0.0, 0.01, 0.1, 0.5], right=True)
        order = d[np.lexsort((-hits[d], -share[d], -exact[d].astype(np.int64)))]
        worst = [i for i in order[:WORST] if hits[i] or exact[i]]
        sources.append({
            "source": s["source"], "split": s["split"], "store": s["store"], "documents": len(d),
            "checked": int(np.count_nonzero(total[d])), "without_ngrams": int(np.count_nonzero(total[d] == 0)),
            "with_overlap": int(np.count_nonzero((hits[d] > 0) | exact[d])), "exact": int(np.count_nonzero(exact[d])),
            "exceeding": int(np.count_nonzero(over[d])), "max_share": float(share[d].max(initial=0.0)),
            "histogram": {label: int(np.count_nonzero(bins == k)) for k, (label, _) in enumerate(HIST)},
            "worst": [_offender(held, m, files, text, matched, int(i), float(share[i]), int(hits[i]), int(total[i]),
                                bool(exact[i]), n) for i in worst],
        })
    examples = []
    if allow.any():
        q = np.flatnonzero(allow[held.key])
        keys, first = np.unique(held.key[q], return_index=True)
        top = np.argsort(-held.df[keys], kind="stable")[:200]
        train_df = dict(zip(m["candidates"].tolist(), m["df"].tolist()))
        shown: list[int] = []
        for k, i in zip(keys[top], first[top]):
            p = int(held.pos[q[i]])
            if any(abs(p - o) < n for o in shown):  # an overlapping window of an example already shown
                continue
            shown.append(p)
            examples.append({"text": text(held.doc[q[i]], p, p + n), "heldout_docs": int(held.df[k]),
                             "train_docs": int(train_df[int(k)])})
            if len(examples) == 5:
                break
    return {
        "format": "mixer-audit/1", "ngram": n, "max_overlap": max_overlap,
        "heldout": {"documents": nd, "ngrams": int(len(held.pos)), "distinct_ngrams": int(len(held.keys))},
        "training": {**m["stats"], "files_list": [f.path for f in files]},
        "allowlist": {"enabled": allowlist, "min_docs": min_docs, "ngrams": int(allow.sum()),
                      "occurrences": int(np.count_nonzero(~counted)),
                      "rule": f"in >= {min_docs} held-out and >= {min_docs} training documents", "examples": examples},
        "sources": sources, "exceeding": int(np.count_nonzero(over)), "clean": not bool(over.any()),
    }


def _offender(held: Heldout, m: dict, files: list[TrainFile], text: "_Decoder", matched: np.ndarray, d: int,
              share: float, hits: int, total: int, exact: bool, n: int) -> dict:
    """One worst offender: its longest run of matching n-grams, decoded, and where it is in training."""
    lo, hi = np.searchsorted(held.doc, d), np.searchsorted(held.doc, d, side="right")
    q = np.flatnonzero(matched[lo:hi]) + lo
    if len(q):
        p = held.pos[q]
        cuts = np.flatnonzero(np.diff(p) != 1)
        run_start, run_end = np.concatenate([[0], cuts + 1]), np.concatenate([cuts, [len(p) - 1]])
        r = int(np.argmax(run_end - run_start))
        start, end = int(p[run_start[r]]), min(int(p[run_end[r]]) + n, int(held.ends[d]))
        loc = int(m["loc"][held.key[q[run_start[r]]]])
    else:
        start, end, loc = int(held.starts[d]), int(held.ends[d]), int(m["exact"][d])
    return {"id": held.ids[d], "share": round(share, 6), "matched_ngrams": hits, "ngrams": total, "exact": exact,
            "span_tokens": end - start, "snippet": text(d, start, end), "found_in": _where(files, loc)}


def _where(files: list[TrainFile], loc: int) -> str:
    f = files[loc >> LOC_BITS]
    off = loc & ((1 << LOC_BITS) - 1)
    name = Path(f.path).name
    return f"{name} sample {off // f.row_len} token {off % f.row_len}" if f.row_len else f"{name} token {off}"


class _Decoder:
    """Token spans as text with the store's tokenizer when its file exists, else as ids."""

    LIMIT = 48  # tokens shown per snippet

    def __init__(self, held: Heldout) -> None:
        self.held, self.cache = held, {}

    def __call__(self, d: int, start: int, end: int) -> str:
        src = next(s for s in reversed(self.held.sources) if s["first"] <= d)
        ids = self.held.tokens[start : min(end, start + self.LIMIT)].tolist()
        more = " ..." if end - start > self.LIMIT else ""
        path = src["tokenizer_path"]
        if path is None:
            return "ids: " + " ".join(map(str, ids)) + more
        if path not in self.cache:
            from tokenizers import Tokenizer

            self.cache[path] = Tokenizer.from_file(path)
        return self.cache[path].decode(ids) + more
