"""Leakage audit: which held-out documents are in the training data, whole, nearly whole or quoted.

Decision rule (the default; every threshold is a constant here and a flag of `mixer audit`)
--------------------------------------------------------------------------------------------
Every token n-gram (n = `--ngram`, 13) of every held-out document (domain `test`, general
`val`) is looked up in the training data. Not audited: n-grams with fewer than MIN_DISTINCT
distinct token ids (whitespace runs, table borders: they carry no document), and documents
shorter than n (only rule 1 applies to them). For a held-out n-gram found in training:
- its *training documents* are the distinct training documents holding it, told apart by
  their content (a document seen in 50 epochs is one document; estimated from a 64-bucket
  signature of document hashes: exact for 0 and 1, a few percent off up to ~100, and a
  full signature reads as 266, meaning at least that many);
- its *held-out documents* are the held-out documents holding it;
- it is *boilerplate* when it is in at least BOILERPLATE_TRAIN_DOCS (5) training documents
  AND at least BOILERPLATE_HELDOUT_DOCS (2) held-out documents: licence headers, templates,
  metadata lines. Boilerplate is discounted: it is evidence for no rule below, and the
  tokens it covers are left out of both sides of the near-copy share. The report counts it
  and shows examples. An n-gram of one held-out document is never boilerplate.

A held-out document is FLAGGED when any of:
1. exact: its whole token content occurs contiguously in one training document (checked
   by hashing the training span, not inferred from n-grams; any length, across sample rows
   of a mix, since a mix's samples are stitched back into their sources' streams);
2. near copy: a single training document holds at least NEAR_COPY (0.9) of its tokens:
   the tokens inside its matched, non-boilerplate n-grams that occur in that document,
   plus gaps between such stretches (and a head or tail) shorter than n tokens: an edited
   token breaks the n n-grams over it, so the tokens between two edits closer than n are
   in no matched n-gram. The share is over the document's audited tokens (inside some
   audited n-gram) that no matched boilerplate n-gram covers. "That document" is one of
   the 64 buckets of the training-document signature, so two training documents sharing a
   bucket count as one (an over-estimate for 1 pair in 64). A copy with 5% of its words
   changed scores ~0.93-1.0. Or, by the *text check* (mixer.checks.textmatch): one
   training document holds at least NEAR_TEXT (0.8) of its text in order, by characters.
   Copies made by editing characters break far more token n-grams than they change
   characters (10% of the characters substituted leave ~3% of a tune's 13-grams), so the
   token share misses them; the n-grams that remain say which training documents to read:
   each held-out document's TEXT_CANDIDATES (3) fullest bucket groups holding at least
   TEXT_FLOOR (0.1) of its tokens are read back from the training streams, decoded with
   the stores' tokenizer and compared. Copies with 5% (10%) of their characters
   substituted score 0.68-0.97 (0.61-0.93), the nearest other document in a clean mix of
   the real sample corpora at most 0.69 (docs/benchmarks/audit.md);
3. quote: a passage of at least MIN_QUOTE (20) tokens of it is in the training data of a
   source other than its own (or of unknown source: training files without provenance).
   A passage is a run of consecutive n-gram positions i, i+1, ... whose n-grams are
   matched there and not boilerplate; its length is the tokens it spans, less those that
   matched boilerplate covers, plus up to QUOTE_EDGE (1) token of the document at each
   end: a quote cut from a document at whitespace and pasted into other text tokenizes
   differently at its edges (its first token loses or gains a space, its last one may
   merge with what follows), so in token space the matched run is shorter than the quote:
   by 1 token in 65-88% of real 20-token quotes pasted in quotation marks, by 2 in 11-35%,
   by 3 in at most 1% (bench/audit_recall.py). Within its own source a shared passage
   is the corpus's own redundancy: variants of a tune share a title line, release notes
   repeat items of the previous release, parallel developments share proofs; the split
   decides documents, not passages, so there only copies (1, 2) count. `--strict` applies
   rule 3 to the document's own source too: a triage list (in clean real mixes it lists
   44% of the held-out documents). The sources of a mix are its provenance's source ids,
   named by the manifest; training files without provenance are of unknown source.

Severity: a flagged document of a domain source's held-out split is a leak (exit 1); one of
a general source's val split is a warning (exit 0), since web-like general corpora are
split without near-duplicate clustering and duplicate themselves; `--strict` makes those
leaks too (mixer.checks.evidence.severity).

How (engine)
------------
Held-out side: every audited n-gram is hashed (mixer.checks.ngrams) into a sorted key set
with a filter in front, with each key's held-out document frequency, and each document's
whole-content hash and anchor (its n-gram with the fewest held-out documents). Training
side (mixer.checks.train_streams): flat token files, and mix shards stitched back into source
streams through their provenance sidecars, so n-grams run across sample rows but never
across an EOS; sample files without provenance keep n-grams inside rows. Streams are cut
into units of whole documents dealt to datatrove tasks (`ScanFiles`), read in chunks of
CHUNK_TOKENS that end at an EOS (a document longer than a chunk continues in the next with
an overlap as long as the longest held-out document), so memory does not grow with the
training data. Per matched key a task keeps the signature of its training documents, the
set of sources it was found in, and its first location; an exact copy is
confirmed where a document's anchor n-gram is found by hashing the span the document would
fill. Each task writes its partial result atomically and `merge` combines them (OR, min);
a rerun with the same `work` folder skips finished tasks (their partials locally, where
tasks are threads of the audit process; datatrove completion files on Slurm and Ray).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from datatrove.pipeline.base import PipelineStep

from mixer.checks.ngrams import KeySet, NgramHasher, WindowLookup, distinct_at_least, segments
from mixer.checks.train_streams import (LOC_BITS, UNKNOWN_SOURCE_BIT, Reader, Stream, TrainFile, build_streams,
                                  longest_piece, make_units)
from mixer.executors import Executor
from mixer.errors import MixerError, UsageError
from mixer.formats.atomic import atomic_open, load_npy, write_json
from mixer.formats.store import Store, check_same_tokenizer
from mixer.forks import fork_safe, forked_pool, inherited

__all__ = ["TrainFile", "audit", "MIN_DISTINCT", "NEAR_COPY", "NEAR_TEXT", "MIN_QUOTE", "QUOTE_EDGE",
           "BOILERPLATE_TRAIN_DOCS", "BOILERPLATE_HELDOUT_DOCS"]

NEAR_COPY = 0.9
NEAR_TEXT = 0.8
MIN_QUOTE = 20
QUOTE_EDGE = 1
BOILERPLATE_TRAIN_DOCS = 5
BOILERPLATE_HELDOUT_DOCS = 2
MIN_DISTINCT = 4  # all 16,993 matches of 80 Python doc pages in 1,500 tunes had <= 3
CHUNK_TOKENS = 1 << 21  # ~100 MB of temporaries per task, whatever the training size
BLOCK_TOKENS = 1 << 16  # hashing and lookup in blocks whose temporaries stay in the CPU cache
NO_LOC = np.int64(np.iinfo(np.int64).max)
WORK_FORMAT = "mixer-audit-work/2"
STATS = ("tokens", "ngrams", "hits", "cpu_ms")  # per task, summed by merge


@dataclass
class Heldout:
    """All held-out documents of the audited stores, concatenated, with their n-grams."""

    sources: list[dict]  # source, split, store, tokenizer_path, first (doc index), documents
    tokens: np.ndarray
    starts: np.ndarray  # per document: content [start, end) in `tokens` (EOS excluded)
    ends: np.ndarray
    ids: list[str]
    pos: np.ndarray  # per audited n-gram occurrence: start in `tokens` (sorted)
    doc: np.ndarray  # ... its document
    key: np.ndarray  # ... its index in `keys`
    keys: np.ndarray  # sorted unique n-gram hashes
    df: np.ndarray  # per key: number of held-out documents holding it
    doc_hash: np.ndarray  # per document: hash of its whole content
    anchor: np.ndarray  # per document: its occurrence with the fewest held-out documents, or -1
    last: np.ndarray  # per document: its last occurrence, or -1


def load_heldout(stores: list[Store], hasher: NgramHasher, eos_id: int) -> Heldout:
    sources, parts, starts, ends, ids, base, first = [], [], [], [], [], 0, 0
    for s in stores:
        split = s.heldout
        toks, doc_ends = np.asarray(s.tokens(split)), s.doc_ends(split).astype(np.int64)
        doc_starts = np.concatenate([[0], doc_ends[:-1]])[: len(doc_ends)].astype(np.int64)  # none: an empty split
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
        sources.append({"source": s.name, "role": s.role, "split": split, "store": str(s.path), "first": first,
                        "documents": len(doc_ends),
                        "tokenizer_path": path if path and Path(path).is_file() else None})
        base += len(toks)
        first += len(doc_ends)
    tokens = np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint16)
    starts_a, ends_a = np.concatenate(starts), np.concatenate(ends)
    prefix = hasher.prefix(tokens)
    doc_hash = hasher.spans(prefix, starts_a, ends_a)
    n = hasher.n
    # window starts inside a document's content (stores end every document with EOS, so
    # content holds none; a window must not reach past the content's end)
    lengths = np.maximum(ends_a - starts_a - n + 1, 0)
    doc = np.repeat(np.arange(len(ids), dtype=np.int32), lengths)
    pos = np.repeat(starts_a - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths) + np.arange(int(lengths.sum()))
    keep = distinct_at_least(tokens, pos, n, min(MIN_DISTINCT, n)) if len(pos) else np.zeros(0, dtype=bool)
    pos, doc = pos[keep], doc[keep]
    del keep
    h = hasher.spans(prefix, pos, pos + n)
    del prefix
    order = _hash_order(h)
    h = h[order]
    new = np.empty(len(h), dtype=bool)
    new[:1] = True
    np.not_equal(h[1:], h[:-1], out=new[1:])
    keys = h[new]
    del h
    rank = np.cumsum(new) - 1
    key = np.empty(len(order), dtype=np.int64)
    key[order] = rank
    # held-out documents per key: the order is stable, so a key's occurrences follow in
    # position order and so in document order; a document's first occurrence of it is where
    # the key or the document changes (no second sort of (key, document) pairs)
    d = doc[order]
    new[1:] |= d[1:] != d[:-1]
    df = np.bincount(rank[new], minlength=len(keys))
    del order, new, rank, d
    # anchor: the occurrence whose n-gram the fewest held-out documents share (the first such)
    anchor = np.full(len(ids), -1, dtype=np.int64)
    last = np.full(len(ids), -1, dtype=np.int64)
    if len(pos):
        firsts = np.flatnonzero(np.concatenate([[True], doc[1:] != doc[:-1]]))  # occurrences are in document order
        dfp = df[key]
        least = np.minimum.reduceat(dfp, firsts)
        cand = np.flatnonzero(dfp == np.repeat(least, np.diff(np.append(firsts, len(doc)))))
        cand = cand[np.concatenate([[True], doc[cand][1:] != doc[cand][:-1]])]
        anchor[doc[cand]] = cand
        lasts = np.append(firsts[1:], len(doc)) - 1
        last[doc[lasts]] = lasts
    return Heldout(sources, tokens, starts_a, ends_a, ids, pos, doc, key, keys, df, doc_hash, anchor, last)


def _hash_order(h: np.ndarray) -> np.ndarray:
    """argsort(h, kind="stable"), several times faster: one 64-bit sort of the hashes' top
    40 bits packed with the index, then the few runs of equal top bits whose hashes differ
    (~30 among 10M hashes) are put in order one by one."""
    if len(h) < 2 or len(h) >= 1 << 24:
        return np.argsort(h, kind="stable")
    low = np.uint64((1 << 24) - 1)
    packed = (h & ~low) | np.arange(len(h), dtype=np.uint64)
    packed.sort()
    order = (packed & low).astype(np.int64)
    top = packed >> np.uint64(24)
    del packed
    hs = h[order]
    bad = np.flatnonzero(hs[1:] < hs[:-1])
    for t in np.unique(top[bad]):  # numpy scalars: searchsorted then compares without converting `top`
        a, b = np.searchsorted(top, t, side="left"), np.searchsorted(top, t, side="right")
        sub = order[a:b]
        order[a:b] = sub[np.lexsort((sub, h[sub]))]
    return order


def _file_stat(path: str | None) -> list[int] | None:
    if path is None:
        return None
    st = Path(path).stat()
    return [st.st_size, st.st_mtime_ns]


def prepare(work: Path, held: Heldout, files: list[TrainFile], n: int, vocab_size: int, eos_id: int) -> Path:
    """Write what every task needs into work/<fingerprint>/ (the fingerprint covers the
    held-out keys and documents, the files and the settings, so a stale folder is never
    reused)."""
    has_anchor = held.anchor >= 0
    longest = int((held.ends - held.starts)[has_anchor].max(initial=0))
    overlap = max(n, longest) - 1  # a document longer than a chunk continues with this much re-read
    plan = {"format": WORK_FORMAT, "n": n, "vocab_size": vocab_size, "eos_id": eos_id,
            "chunk": max(CHUNK_TOKENS, 4 * overlap), "block": BLOCK_TOKENS, "overlap": overlap,
            "files": [f.__dict__ for f in files],
            "stat": [[_file_stat(f.path), _file_stat(f.prov)] for f in files],  # rewritten -> new folder
            "keys_sha256": hashlib.sha256(held.keys.tobytes()).hexdigest(),
            "docs_sha256": hashlib.sha256(held.doc_hash.tobytes() + held.anchor.tobytes()).hexdigest()}
    fp = hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()[:16]
    folder = work / fp
    if not (folder / "plan.json").exists():
        streams = build_streams(files, folder)  # writes the stitching order of each source
        ks = KeySet.build(held.keys)
        a = held.anchor[has_anchor]
        d = np.flatnonzero(has_anchor)
        o = np.argsort(held.key[a], kind="stable")
        lens = held.ends - held.starts
        short = np.flatnonzero(~has_anchor & (lens > 0))
        so = np.argsort(held.doc_hash[short], kind="stable")
        arrays = {"keys": held.keys, "words": ks.words, "directory": ks.directory,
                  "anchor_key": held.key[a][o], "anchor_doc": d[o], "anchor_off": (held.pos[a] - held.starts[d])[o],
                  "anchor_len": lens[d][o], "anchor_hash": held.doc_hash[d][o],
                  "anchor_last_off": (held.pos[held.last[d]] - held.pos[a])[o],
                  "anchor_last_key": held.key[held.last[d]][o],
                  "short_hash": held.doc_hash[short][so], "short_doc": short[so], "short_len": lens[short][so]}
        for name, arr in arrays.items():
            with atomic_open(folder / f"{name}.npy") as f:
                np.save(f, arr)
        write_json(folder / "plan.json", {**plan, "streams": [s.to_json() for s in streams]})
    return folder


class Scanner:
    """Streams training data and accumulates what it holds of the held-out n-grams."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.plan = json.loads((folder / "plan.json").read_text())
        load = lambda name: load_npy(folder / f"{name}.npy", mmap_mode="r")  # noqa: E731 - shared page cache
        # plain arrays over the mapped files: memmap's per-index wrapping costs more than the lookups
        self.keys = KeySet(*(np.asarray(load(name)) for name in ("keys", "words", "directory")))
        self.a = {name: np.asarray(load(name)) for name in ("anchor_key", "anchor_doc", "anchor_off", "anchor_len",
                                                             "anchor_hash", "anchor_last_off", "anchor_last_key",
                                                             "short_hash", "short_doc", "short_len")}
        self.short_lens = np.unique(self.a["short_len"])
        self.n, self.eos_id = int(self.plan["n"]), int(self.plan["eos_id"])
        self.hasher = NgramHasher(self.n, self.plan["vocab_size"])
        self.window_lookup = WindowLookup(self.hasher, self.keys, self.plan["block"])
        self.files = [TrainFile(**f) for f in self.plan["files"]]
        self.streams = [Stream.from_json(s) for s in self.plan["streams"]]
        nk = len(self.keys.keys)
        self.sig = np.zeros(nk, dtype=np.uint64)  # bit (doc hash >> 58) per training document holding the key
        self.src = np.zeros(nk, dtype=np.uint64)  # bit per source the key was found in
        self.loc = np.full(nk, NO_LOC, dtype=np.int64)  # first location
        self.exact: dict[int, int] = {}
        self.stats = {"tokens": 0, "ngrams": 0, "hits": 0, "cpu_ms": 0}  # cpu_ms: this task's CPU time

    # -- units ------------------------------------------------------------------------

    def scan(self, units: list) -> None:
        reader = Reader(self.files, self.streams, self.folder)
        cpu = time.thread_time()  # this task's own CPU, also when tasks are threads of one process
        try:
            for u in units:
                s = self.streams[u.stream]
                if s.kind == "rows":
                    self._rows(reader, u, s)
                else:
                    self._documents(reader, u, s)
        finally:
            reader.close()
        self.stats["cpu_ms"] += round(1000 * (time.thread_time() - cpu))

    def _rows(self, reader: Reader, u, s: Stream) -> None:
        per = max(1, self.plan["chunk"] // s.row_len)
        for r in range(u.start, u.stop, per):
            r1 = min(u.stop, r + per)
            tokens = reader.read(u.stream, r * s.row_len, r1 * s.row_len)
            self._chunk(u.stream, s, tokens, r * s.row_len, s.row_len, 0, False, False)

    def _documents(self, reader: Reader, u, s: Stream) -> None:
        """Documents starting in [u.start, u.stop): chunks end after an EOS, so documents stay
        whole; one longer than a chunk continues in the next, `overlap` tokens re-read."""
        a, b = next((a, b) for a, b in s.stretches if a <= u.start < b)
        length, overlap = self.plan["chunk"], self.plan["overlap"]
        pos = u.start if u.start == a else self._after_eos(reader, u.stream, u.start - 1, b)
        carry, fresh = False, 0
        while pos < b and (pos < u.stop or carry):
            end = min(pos + length, b)
            tokens = reader.read(u.stream, pos, end)
            eos = np.flatnonzero(tokens == self.eos_id)
            closing = eos[eos >= u.stop - 1 - pos]  # ends the last document that starts before u.stop
            # a stitched stretch after a gap starts inside a document, and one may end inside one
            starts_doc = not carry and not (s.kind == "stitched" and pos == a > 0)
            if len(closing) or end == b:  # the unit's last chunk: later documents are the next unit's
                cut = int(closing[0]) + 1 if len(closing) else len(tokens)
                self._chunk(u.stream, s, tokens[:cut], pos, None, fresh, starts_doc, s.kind == "flat")
                return
            if len(eos):
                cut = int(eos[-1]) + 1
                self._chunk(u.stream, s, tokens[:cut], pos, None, fresh, starts_doc, True)
                pos, carry, fresh = pos + cut, False, 0
            else:
                self._chunk(u.stream, s, tokens, pos, None, fresh, starts_doc, False)
                pos, carry, fresh = pos + length - overlap, True, overlap

    def _after_eos(self, reader: Reader, stream: int, pos: int, stop: int) -> int:
        """The position after the first EOS at or after `pos` (the next document's start)."""
        while pos < stop:
            end = min(pos + self.plan["chunk"], stop)
            eos = np.flatnonzero(reader.read(stream, pos, end) == self.eos_id)
            if len(eos):
                return pos + int(eos[0]) + 1
            pos = end
        return stop

    # -- one chunk ----------------------------------------------------------------------

    def _lookup(self, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(window starts, key indices) of the windows of `tokens` that are held-out keys, in
        blocks small enough that hashing and filtering run in cache."""
        n, block = self.n, self.plan["block"]
        out_p, out_k = [], []
        for b in range(0, max(len(tokens) - n + 1, 0), block):
            p, k = self.window_lookup(tokens[b : b + block + n - 1])
            out_p.append(p + b)
            out_k.append(k)
        if not out_p:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        return np.concatenate(out_p), np.concatenate(out_k)

    def _chunk(self, stream: int, s: Stream, tokens: np.ndarray, offset: int, row_len: int | None, fresh: int,
               starts_doc: bool, ends_doc: bool) -> None:
        """`tokens` are stream positions [offset, offset + len); the first `fresh` of them were
        already scanned (an overlap), which only matters for the counts."""
        n = self.n
        if len(tokens) and int(tokens.max()) >= self.hasher.vocab_size:
            f = self.files[s.file].path if s.file >= 0 else f"source {s.source} of the mix"
            raise MixerError(f"{f}: token id {int(tokens.max())} near token {offset} is outside the vocabulary "
                             f"({self.hasher.vocab_size}); wrong --dtype, or another tokenizer?")
        eos = np.flatnonzero(tokens == self.eos_id)
        seg_starts, seg_ends = segments(len(tokens), eos, row_len)
        self.stats["tokens"] += len(tokens) - fresh
        self.stats["ngrams"] += int(np.maximum(seg_ends - n + 1 - np.maximum(seg_starts, fresh), 0).sum())
        code0 = (np.int64(stream) << LOC_BITS) + offset
        self._whole_short_documents(tokens, seg_starts, seg_ends, row_len, starts_doc, ends_doc, code0)
        pos, key = self._lookup(tokens)
        seg = np.searchsorted(seg_starts, pos, side="right") - 1
        ok = (seg >= 0) & (pos + n <= seg_ends[np.maximum(seg, 0)])  # inside one piece: no EOS, no row edge
        pos, key, seg = pos[ok], key[ok], seg[ok]
        self.stats["hits"] += int(np.count_nonzero(pos >= fresh))
        if not len(pos):
            return
        useg, inv = np.unique(seg, return_inverse=True)
        doc_bit = np.left_shift(np.uint64(1), self.hasher.hash_spans(tokens, seg_starts[useg], seg_ends[useg])
                                >> np.uint64(58))[inv]
        o = np.argsort(key, kind="stable")  # by key, then position: the first of each key is its first location
        ko = key[o]
        first = np.flatnonzero(np.concatenate([[True], ko[1:] != ko[:-1]]))
        k1 = ko[first]
        self.sig[k1] |= np.bitwise_or.reduceat(doc_bit[o], first)
        self.src[k1] |= np.uint64(1) << np.uint64(s.source if s.kind == "stitched" else UNKNOWN_SOURCE_BIT)
        c1 = code0 + pos[o[first]]
        better = c1 < self.loc[k1]
        self.loc[k1[better]] = c1[better]
        self._anchored_copies(tokens, pos, key, seg, seg_starts, seg_ends, code0)

    def _anchored_copies(self, tokens, pos, key, seg, seg_starts, seg_ends, code0) -> None:
        """Exact copies: where a held-out document's anchor n-gram is found, hash the span the
        document would fill (when its last n-gram is found where it should be too)."""
        a = self.a
        lo = np.searchsorted(a["anchor_key"], key, side="left")
        m = np.searchsorted(a["anchor_key"], key, side="right") - lo
        if not m.any():
            return
        hit = np.repeat(np.arange(len(pos)), m)
        entry = np.repeat(lo - np.cumsum(m) + m, m) + np.arange(int(m.sum()))
        c = pos[hit] - a["anchor_off"][entry]
        e = c + a["anchor_len"][entry]
        sg = seg[hit]
        ok = (c >= seg_starts[sg]) & (e <= seg_ends[sg])
        last = pos[hit] + a["anchor_last_off"][entry]  # the offset is from the anchor
        j = np.minimum(np.searchsorted(pos, last), len(pos) - 1)
        ok &= (pos[j] == last) & (key[j] == a["anchor_last_key"][entry])
        if not ok.any():
            return
        c, e, entry = c[ok], e[ok], entry[ok]
        same = self.hasher.hash_spans(tokens, c, e) == a["anchor_hash"][entry]
        for d, at in zip(a["anchor_doc"][entry[same]].tolist(), (code0 + c[same]).tolist()):
            self.exact[d] = min(self.exact.get(d, at), at)

    def _whole_short_documents(self, tokens, seg_starts, seg_ends, row_len, starts_doc, ends_doc, code0) -> None:
        """Exact copies of held-out documents without an audited n-gram (shorter than n): a
        whole training document (EOS or the stream's edge on both sides) with the same hash."""
        a = self.a
        if not len(a["short_hash"]) or not len(seg_starts):
            return
        sel = np.flatnonzero(np.isin(seg_ends - seg_starts, self.short_lens))
        if not len(sel):
            return
        st, en = seg_starts[sel], seg_ends[sel]
        if row_len:  # a row edge cuts documents: only pieces with an EOS on both sides are whole
            left = (st % row_len != 0) & (tokens[np.maximum(st - 1, 0)] == self.eos_id)
            right = (en % row_len != 0) & (tokens[np.minimum(en, len(tokens) - 1)] == self.eos_id)
        else:
            left = np.where(st == 0, starts_doc, tokens[np.maximum(st - 1, 0)] == self.eos_id)
            right = np.where(en == len(tokens), ends_doc, tokens[np.minimum(en, len(tokens) - 1)] == self.eos_id)
        st, en = st[left & right], en[left & right]
        if not len(st):
            return
        h = self.hasher.hash_spans(tokens, st, en)
        j = np.minimum(np.searchsorted(a["short_hash"], h), len(a["short_hash"]) - 1)
        for m in np.flatnonzero(a["short_hash"][j] == h).tolist():
            # equal hashes of different lengths cannot both hold; the length check is cheap
            if int(a["short_len"][j[m]]) == int(en[m] - st[m]):
                d, at = int(a["short_doc"][j[m]]), int(code0 + st[m])
                self.exact[d] = min(self.exact.get(d, at), at)

    def save(self, path: Path) -> None:
        seen = np.flatnonzero(self.sig)
        with atomic_open(path) as fh:
            np.savez(fh, seen=seen, sig=self.sig[seen], src=self.src[seen], loc=self.loc[seen],
                     exact_doc=np.array(list(self.exact), dtype=np.int64),
                     exact_loc=np.array(list(self.exact.values()), dtype=np.int64),
                     stats=np.array([self.stats[k] for k in STATS], dtype=np.int64))


class ScanFiles(PipelineStep):
    """datatrove step: task `rank` scans its units of the training streams and writes
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
            units = make_units(scanner.streams, world_size, scanner.plan["chunk"])[rank]
            with self.track_time():
                scanner.scan(units)
        except MixerError as e:
            with atomic_open(out / "errors" / f"{rank:05d}.txt", "w") as fh:
                fh.write(str(e))
        else:
            for k, v in scanner.stats.items():
                self.stat_update(k, value=v)
            scanner.save(out / "partials" / f"{rank:05d}.npz")
        yield from data or ()


def merge(folder: Path, out: Path, tasks: int, n_docs: int) -> dict:
    """Combine the tasks' partials: OR of signatures and sources, earliest location."""
    n_keys = len(load_npy(folder / "keys.npy", mmap_mode="r"))
    sig, src = np.zeros(n_keys, dtype=np.uint64), np.zeros(n_keys, dtype=np.uint64)
    loc = np.full(n_keys, NO_LOC, dtype=np.int64)
    exact = np.full(n_docs, NO_LOC, dtype=np.int64)
    stats = np.zeros(len(STATS), dtype=np.int64)
    for rank in range(tasks):
        err, part = out / "errors" / f"{rank:05d}.txt", out / "partials" / f"{rank:05d}.npz"
        if err.exists():
            raise MixerError(err.read_text())
        if not part.exists():
            raise MixerError(f"{out}: audit task {rank} of {tasks} has not finished; re-run the same command to resume")
        with np.load(part) as p:
            k = p["seen"]
            sig[k] |= p["sig"]
            src[k] |= p["src"]
            loc[k] = np.minimum(loc[k], p["loc"])
            np.minimum.at(exact, p["exact_doc"], p["exact_loc"])
            stats += p["stats"]
    stats_d = dict(zip(STATS, stats.tolist()))
    return {"sig": sig, "src": src, "loc": loc, "exact": exact, "stats": stats_d}


def _scan_task(rank: int, step: "ScanFiles", tasks: int) -> None:
    for _ in ScanFiles(step.folder, step.out).run(None, rank, tasks):
        pass


def _forked_scan_task(rank: int) -> None:
    step, tasks = inherited()
    _scan_task(rank, step, tasks)


def run_scan(folder: Path, executor: Executor) -> Path:
    """Run ScanFiles over the executor's tasks; returns the folder holding the partials.
    One folder per task count: datatrove's completion files are per rank."""
    out = folder / f"tasks-{executor.tasks:05d}"
    for err in sorted((out / "errors").glob("*.txt")):  # a failed task is retried, not skipped as completed
        (out / "logs" / "completions" / err.stem).unlink(missing_ok=True)
        err.unlink()
    step = ScanFiles(str(folder.resolve()), str(out.resolve()))
    if executor.kind == "local":
        # In this process's own workers: forked processes where a fork is safe (mixer/forks.py;
        # they inherit the mapped key set and start at once), else one thread per task (numpy
        # and pread release the GIL for most of a block, but not the Python around it: 2
        # threads were no faster than 1). datatrove's local workers start through a fork
        # server, and at 200M training tokens their start cost more than the second core
        # saved (issue 25). A finished task's partial is kept on a rerun.
        todo = [r for r in range(executor.tasks) if not (out / "partials" / f"{r:05d}.npz").exists()]
        workers = min(executor.local_workers, len(todo))
        if workers <= 1:
            for r in todo:
                _scan_task(r, step, executor.tasks)
        elif fork_safe():
            with forked_pool(workers, (step, executor.tasks)) as pool:
                list(pool.map(_forked_scan_task, todo))
        else:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=workers) as pool:
                list(pool.map(_scan_task, todo, [step] * len(todo), [executor.tasks] * len(todo)))
    else:
        # the report needs every task's partial: on Slurm, wait for the jobs
        executor.run([step], out / "logs", "mixer-audit", jobs_file=folder / "slurm_jobs.json", wait=True)
    return out


def audit(stores: list[Store], files: list[TrainFile], work: Path, *, n: int = 13, near_copy: float = NEAR_COPY,
          min_quote: int = MIN_QUOTE, boilerplate: bool = True, boilerplate_train_docs: int = BOILERPLATE_TRAIN_DOCS,
          boilerplate_heldout_docs: int = BOILERPLATE_HELDOUT_DOCS, strict: bool = False,
          source_ids: dict[str, int] | None = None, executor: Executor | None = None, near_text: float = NEAR_TEXT,
          quote_edge: int = QUOTE_EDGE) -> dict:
    """Audit `files` against the held-out splits of `stores`; returns the report
    (mixer.checks.evidence.report). `source_ids` maps store names to the source ids of
    the files' provenance (a mix's manifest), which tells a document's own source apart."""
    from mixer.checks.evidence import Rule, report

    rule = Rule(near_copy, min_quote, boilerplate, boilerplate_train_docs, boilerplate_heldout_docs, strict, near_text,
                quote_edge)
    rule.check()
    if n < 1:
        raise UsageError(f"--ngram {n}: must be at least 1")
    if not files:
        raise UsageError("no training files to audit")
    streams = build_streams(files, None)  # size, layout and provenance errors now, in the parent, naming the file
    narrow = [files[s.file] for s in streams if s.kind == "rows" and s.row_len < n]
    if narrow:
        raise UsageError(f"--ngram {n}: {narrow[0].path} holds samples of {narrow[0].row_len} tokens and has no "
                         f"provenance sidecar to stitch them into documents; use --ngram {narrow[0].row_len} or less")
    if n > longest_piece(streams):
        raise UsageError(f"--ngram {n}: longer than any stretch of the training data ({longest_piece(streams)} "
                         "tokens); nothing could match")
    tok = check_same_tokenizer(stores)
    t0 = time.perf_counter()
    hasher = NgramHasher(n, int(tok["vocab_size"]))
    held = load_heldout(stores, hasher, int(tok["eos_id"]))
    if len(held.ids) and not len(held.pos) and not (held.ends > held.starts).any():
        raise MixerError("the held-out splits hold no tokens; nothing to audit")
    if len(held.ids) and n > int((held.ends - held.starts).max()):
        raise UsageError(f"--ngram {n}: longer than every held-out document (the longest has "
                         f"{int((held.ends - held.starts).max())} tokens); nothing to check")
    folder = prepare(work, held, files, n, hasher.vocab_size, int(tok["eos_id"]))
    t1 = time.perf_counter()
    executor = (executor or Executor()).validate()
    tasks = executor.tasks
    out = run_scan(folder, executor)
    merged = merge(folder, out, tasks, len(held.ids))
    t2 = time.perf_counter()
    plan = json.loads((folder / "plan.json").read_text())
    streams = [Stream.from_json(s) for s in plan["streams"]]
    rep = report(held, merged, files, streams, folder, n=n, rule=rule, source_ids=source_ids or {},
                 eos_id=int(tok["eos_id"]))
    rep["training"].update(executor=executor.kind, tasks=tasks, seconds=round(t2 - t1, 3))
    rep["heldout"]["seconds"] = round(t1 - t0, 3)
    rep["report_seconds"] = round(time.perf_counter() - t2, 3)
    return rep
