"""The audit's verdict per held-out document, from what the scan found (the rule is in
mixer.checks.audit's docstring): boilerplate, exact copies, near copies, quotes, and the
report that shows them with their evidence."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mixer.checks.train_streams import MAX_SOURCES, Locator, Reader, Stream, TrainFile
from mixer.errors import UsageError

NO_LOC = np.int64(np.iinfo(np.int64).max)
HIST = [("0", 0.0), ("<=1%", 0.01), ("<=10%", 0.1), ("<=50%", 0.5), (">50%", 1.0)]
WORST = 10
EXAMPLES = 5
TEXT_CANDIDATES = 3  # training documents the text check reads per held-out document, at most
# ... each holding at least this share of its tokens in matched n-grams: copies the text check
# flags (>= 0.8 of the text) held >= 0.17 of a real tune's, Coq file's or page's tokens with
# 10% of the characters substituted, >= 0.47 with 5% (bench/audit_recall.py); natural
# overlap below this costs a read and a comparison each and could not reach 0.8
TEXT_FLOOR = 0.1


@dataclass
class Rule:
    near_copy: float
    min_quote: int
    boilerplate: bool
    boilerplate_train_docs: int
    boilerplate_heldout_docs: int
    strict: bool
    near_text: float = 0.8
    quote_edge: int = 1

    def check(self) -> None:
        if not 0.0 < self.near_copy <= 1.0:
            raise UsageError(f"--near-copy {self.near_copy:g}: a share of a document's tokens, in (0, 1]")
        if self.min_quote < 1:
            raise UsageError(f"--min-quote {self.min_quote}: a passage length in tokens, at least 1")
        if not 0.0 < self.near_text <= 1.0:
            raise UsageError(f"--near-text {self.near_text:g}: a share of a document's text, in (0, 1]")
        if self.quote_edge < 0:
            raise UsageError(f"--quote-edge {self.quote_edge}: tokens at each end of a passage, at least 0")
        if self.boilerplate_train_docs < 2 or self.boilerplate_heldout_docs < 2:
            raise UsageError("--boilerplate-train-docs/--boilerplate-heldout-docs: at least 2 (an n-gram of one "
                             "document is never boilerplate)")

    def describe(self) -> dict:
        return {"exact": "the whole document occurs contiguously in one training document",
                "near_copy": f"one training document holds >= {self.near_copy:g} of its non-boilerplate tokens, "
                             f"or >= {self.near_text:g} of its text in order (the text check)",
                "quote": f"a passage of >= {self.min_quote} non-boilerplate tokens (up to {self.quote_edge} at each end "
                         "need not match: a quote's edges tokenize differently in its new context) is in training "
                         "data of " + ("any source" if self.strict else "another source (or of unknown source)"),
                "severity": "a domain source's held-out documents are leaks (exit 1); a general source's are "
                            + ("leaks too (--strict)" if self.strict else "warnings (exit 0 unless --strict)"),
                "boilerplate": (f"n-grams in >= {self.boilerplate_train_docs} training and >= "
                                f"{self.boilerplate_heldout_docs} held-out documents are discounted")
                if self.boilerplate else "off (--no-boilerplate)",
                "thresholds": {"near_copy": self.near_copy, "near_text": self.near_text, "min_quote": self.min_quote,
                               "quote_edge": self.quote_edge, "strict": self.strict,
                               "boilerplate": self.boilerplate, "boilerplate_train_docs": self.boilerplate_train_docs,
                               "boilerplate_heldout_docs": self.boilerplate_heldout_docs}}


SATURATED = 266  # train_docs of a full signature: at least this many


def train_docs(sig: np.ndarray) -> np.ndarray:
    """Distinct training documents per key, estimated from its 64-bucket signature (linear
    counting: exact for 0 and 1, a few percent off up to ~100; a full signature reads as
    SATURATED, meaning at least that many)."""
    c = np.bitwise_count(sig).astype(np.float64)
    est = -64.0 * np.log1p(-np.minimum(c, 63.0) / 64.0)
    return np.where(c <= 1, c, np.round(est)).astype(np.int64)


def _cover(starts: np.ndarray, width: int, size: int) -> np.ndarray:
    """Boolean mask over `size` tokens: covered by some window [s, s + width), `starts` sorted.

    Marks where each run of overlapping windows begins and ends, then one int8 cumsum: two
    bincounts of every window into int64 arrays of the held-out size took 1.5 s at 10M
    tokens, this 0.05 s."""
    out = np.zeros(size + 1, dtype=np.int8)
    if len(starts):
        ends = np.minimum(starts + width, size)  # sorted too: one width
        brk = np.flatnonzero(starts[1:] > ends[:-1])  # a window past the previous one's end starts a run
        out[starts[np.concatenate([[0], brk + 1])]] = 1
        out[ends[np.concatenate([brk, [len(starts) - 1]])]] -= 1
        np.cumsum(out, out=out)
    return out[:size].view(bool)


def set_bits(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(index, bit) of every set bit of the uint64s `x`, lowest bits first. One pass per bit
    of the element with the most, over the elements that still have one: a signature holds
    a few bits, and 64 passes over all of them (one per bit) cost 0.5 s at 5M matches."""
    idx = np.flatnonzero(x)
    v = x[idx]
    out_i, out_b = [], []
    while len(v):
        low = v & (~v + np.uint64(1))  # the lowest set bit
        out_i.append(idx)
        out_b.append(np.frexp(low.astype(np.float64))[1].astype(np.int64) - 1)  # exact: powers of two
        v ^= low
        keep = np.flatnonzero(v)
        idx, v = idx[keep], v[keep]
    if not out_i:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.concatenate(out_i), np.concatenate(out_b)


def _runs(pos: np.ndarray, doc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Maximal runs of consecutive positions (same document): (first index, last index)."""
    if not len(pos):
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    brk = np.concatenate([[True], (pos[1:] != pos[:-1] + 1) | (doc[1:] != doc[:-1])])
    first = np.flatnonzero(brk)
    return first, np.concatenate([first[1:], [len(pos)]]) - 1


def evidence(held, m: dict, n: int, rule: Rule, own_bits: np.ndarray) -> dict:
    """Per held-out document: exact, near-copy share, longest quote, and what was discounted."""
    nd, size = len(held.ids), len(held.tokens)
    k = held.key
    mi = np.flatnonzero((m["sig"] != 0)[k])  # matched occurrences (a byte per key to gather, not 8)
    sig = m["sig"][k[mi]]
    tdocs = train_docs(sig)
    boiler = (tdocs >= rule.boilerplate_train_docs) & (held.df[k[mi]] >= rule.boilerplate_heldout_docs)
    if not rule.boilerplate:
        boiler[:] = False
    bi, ri = mi[boiler], mi[~boiler]
    # the tokens that count: audited (inside some audited n-gram) and not covered by matched
    # boilerplate; as a prefix count over the held-out tokens
    counted = _cover(held.pos, n, size)
    if len(bi):
        counted &= ~_cover(held.pos[bi], n, size)
    pc = np.concatenate([[0], np.cumsum(counted, dtype=np.int64)])
    del counted
    den = pc[held.ends] - pc[held.starts]

    # near copy: a training document's share of the document's tokens. A key's training
    # documents are the buckets of its signature, so a copy's bucket collects every n-gram
    # of the copy, including those it shares with other training documents.
    near, near_key = np.zeros(nd), np.full(nd, -1, dtype=np.int64)
    candidates = {"doc": np.zeros(0, dtype=np.int64), "key": np.zeros(0, dtype=np.int64),
                  "pos": np.zeros(0, dtype=np.int64), "share": np.zeros(0)}
    if len(ri):
        which, g = set_bits(sig[~boiler])
        rr = ri[which]
        d, p = held.doc[rr], held.pos[rr]
        o = np.lexsort((p, g, d))
        d, p, g, rr = d[o], p[o], g[o], rr[o]
        group = np.concatenate([[True], (d[1:] != d[:-1]) | (g[1:] != g[:-1])])
        # an edited token breaks the n n-grams over it, so tokens between two edits fewer
        # than n apart are in no matched n-gram: gaps (and a document's head and tail)
        # shorter than n between stretches held by one document count as held
        interval = group | np.concatenate([[True], p[1:] > p[:-1] + 2 * n - 1])
        first = np.flatnonzero(interval)
        last = np.concatenate([first[1:], [len(p)]]) - 1
        a, b = p[first], p[last] + n  # the group's windows, joined over short gaps, as disjoint intervals
        ds, de = held.starts[d[first]], held.ends[d[first]]
        a = np.where(a - ds < n, ds, a)
        b = np.where(de - b < n, de, b)
        tokens = pc[b] - pc[a]
        gid = np.cumsum(group)[first] - 1
        per_group = np.bincount(gid, weights=tokens)
        gfirst = np.flatnonzero(group)
        gdoc = d[gfirst]
        share = per_group / np.maximum(den[gdoc], 1)
        # each group's representative n-gram: the one the fewest training documents hold, so
        # that its first location lies in the group's training document
        held_by = np.bitwise_count(m["sig"][k[rr]]).astype(np.int64)
        rep = rr[np.minimum.reduceat(held_by * len(rr) + np.arange(len(rr)), gfirst) % len(rr)]
        best = np.lexsort((-share, gdoc))
        head = np.concatenate([[True], gdoc[best][1:] != gdoc[best][:-1]])
        top = best[head]
        near[gdoc[top]] = np.minimum(share[top], 1.0)
        near_key[gdoc[top]] = k[rep[top]]
        # the text check reads each document's TEXT_CANDIDATES fullest groups' documents
        rank = np.arange(len(best)) - np.maximum.accumulate(np.where(head, np.arange(len(best)), 0))
        c = best[(rank < TEXT_CANDIDATES) & (share[best] >= TEXT_FLOOR)]
        candidates = {"doc": gdoc[c], "key": k[rep[c]], "pos": held.pos[rep[c]], "share": share[c]}
    near_loc = np.where(near_key >= 0, m["loc"][np.maximum(near_key, 0)], NO_LOC)

    def longest(q: np.ndarray, edge: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Per document: longest run of consecutive occurrences among `q` (sorted indices), as
        tokens not covered by boilerplate plus up to `edge` tokens of the document at each
        end, with the run's token span [at, end) and first key."""
        best, at = np.zeros(nd, dtype=np.int64), np.full(nd, -1, dtype=np.int64)
        end, key = np.full(nd, -1, dtype=np.int64), np.full(nd, -1, dtype=np.int64)
        f, last = _runs(held.pos[q], held.doc[q])
        if len(f):
            a, b = held.pos[q[f]], held.pos[q[last]] + n
            dd = held.doc[q[f]]
            t = pc[b] - pc[a] + np.minimum(edge, a - held.starts[dd]) + np.minimum(edge, held.ends[dd] - b)
            o = np.lexsort((-t, dd))
            top = o[np.concatenate([[True], dd[o][1:] != dd[o][:-1]])]
            best[dd[top]], at[dd[top]], end[dd[top]], key[dd[top]] = t[top], a[top], b[top], k[q[f[top]]]
        return best, at, end, key

    foreign = (m["src"][k[ri]] & ~own_bits[held.doc[ri]]) != 0
    # a quote's first and last words tokenize differently in the text around it: up to
    # quote_edge tokens at each end count as part of the passage without matching
    quote, quote_at, quote_end, quote_key = longest(ri[foreign | rule.strict], rule.quote_edge)
    span, span_at, span_end, span_key = longest(ri)
    ngrams = np.bincount(held.doc, minlength=nd)
    hits = np.bincount(held.doc[mi], minlength=nd)
    exact = m["exact"] != NO_LOC
    flags = {"exact": exact, "near_copy": near >= rule.near_copy, "quote": quote >= rule.min_quote}
    return {"flags": flags, "flagged": flags["exact"] | flags["near_copy"] | flags["quote"], "exact": exact,
            "near": near, "near_loc": near_loc, "quote": quote, "quote_at": quote_at, "quote_end": quote_end,
            "quote_key": quote_key, "span": span, "span_at": span_at, "span_end": span_end, "span_key": span_key,
            "ngrams": ngrams, "hits": hits,
            "share": np.divide(hits, ngrams, out=np.zeros(nd), where=ngrams > 0),
            "discounted": np.bincount(held.doc[bi], minlength=nd), "boiler_keys": np.unique(k[bi]), "boiler_at": bi,
            "candidates": candidates}


def own_source_bits(held, source_ids: dict[str, int]) -> np.ndarray:
    """Per held-out document, the provenance bit of its own source (0 when its store is not
    a source of the audited training data)."""
    bits = np.zeros(len(held.ids), dtype=np.uint64)
    for s in held.sources:
        sid = source_ids.get(s["source"])
        if sid is not None and 0 <= sid < MAX_SOURCES:
            bits[s["first"] : s["first"] + s["documents"]] = np.uint64(1) << np.uint64(sid)
    return bits


def report(held, m: dict, files: list[TrainFile], streams: list[Stream], folder: Path, *, n: int, rule: Rule,
           source_ids: dict[str, int], eos_id: int) -> dict:
    from mixer.checks import textmatch

    ev = evidence(held, m, n, rule, own_source_bits(held, source_ids))
    t0 = time.perf_counter()
    reader = Reader(files, streams, folder)
    try:
        tc = textmatch.check(held, ev, m["loc"], reader, streams, eos_id)
    finally:
        reader.close()
    by_text = tc["text"] >= rule.near_text
    ev["flags"]["near_copy"] = ev["flags"]["near_copy"] | by_text
    ev["flagged"] = ev["flagged"] | by_text
    ev["text"], ev["near_loc"] = tc["text"], np.where(by_text & (ev["near"] < rule.near_copy), tc["text_loc"],
                                                      ev["near_loc"])
    text_check = {"pairs": tc["pairs"], "flagged": int(np.count_nonzero(by_text)), "skipped": tc["skipped"],
                  "seconds": round(time.perf_counter() - t0, 3)}
    text = _Decoder(held, tc["tokenizer"])
    locate = Locator(files, streams, folder)
    where = lambda loc: locate(int(loc)) if loc != NO_LOC else None  # noqa: E731
    sources = []
    for s in held.sources:
        d = np.arange(s["first"], s["first"] + s["documents"])
        share = ev["share"][d]
        bins = np.digitize(share, [0.0, 0.01, 0.1, 0.5], right=True)
        strength = np.maximum(np.maximum(ev["quote"][d] / rule.min_quote, ev["near"][d] / rule.near_copy),
                              ev["text"][d] / rule.near_text)
        order = d[np.lexsort((-ev["hits"][d], -strength, -ev["flagged"][d].astype(np.int64),
                              -ev["exact"][d].astype(np.int64)))]
        # every flagged document, then the strongest evidence short of the rule
        nflag = int(np.count_nonzero(ev["flagged"][d]))
        worst = [i for i in order[: nflag + WORST] if ev["flagged"][i] or ev["span"][i] > 0 or ev["near"][i] > 0]
        f = ev["flags"]
        sources.append({
            "source": s["source"], "role": s["role"], "split": s["split"], "store": s["store"],
            "severity": severity(s["role"], rule), "documents": len(d),
            "checked": int(np.count_nonzero(ev["ngrams"][d])), "without_ngrams": int(np.count_nonzero(ev["ngrams"][d] == 0)),
            "with_overlap": int(np.count_nonzero((ev["hits"][d] > 0) | ev["exact"][d])),
            "exact": int(np.count_nonzero(f["exact"][d])), "near_copies": int(np.count_nonzero(f["near_copy"][d])),
            "quotes": int(np.count_nonzero(f["quote"][d])), "flagged": int(np.count_nonzero(ev["flagged"][d])),
            "max_share": float(share.max(initial=0.0)), "max_near_copy": round(float(ev["near"][d].max(initial=0.0)), 6),
            "max_near_text": round(float(ev["text"][d].max(initial=0.0)), 6),
            "longest_quote": int(ev["quote"][d].max(initial=0)), "longest_span": int(ev["span"][d].max(initial=0)),
            "histogram": {label: int(np.count_nonzero(bins == j)) for j, (label, _) in enumerate(HIST)},
            "worst": [_offender(held, ev, m, text, where, int(i), n) for i in worst],
        })
    examples = _examples(held, ev, m, text, n)
    flagged = int(np.count_nonzero(ev["flagged"]))
    leaks = sum(s["flagged"] for s in sources if s["severity"] == "leak")
    return {
        "format": "mixer-audit/3", "ngram": n, "rule": rule.describe(),
        "heldout": {"documents": len(held.ids), "ngrams": int(len(held.pos)), "distinct_ngrams": int(len(held.keys))},
        "training": {**m["stats"], "files": len(files), "streams": len(streams),
                     "stitched_sources": sorted(s.source for s in streams if s.kind == "stitched"),
                     "files_list": [f.path for f in files]},
        "boilerplate": {"enabled": rule.boilerplate, "ngrams": int(len(ev["boiler_keys"])),
                        "occurrences": int(ev["discounted"].sum()), "rule": rule.describe()["boilerplate"],
                        "examples": examples},
        "text_check": text_check,
        "sources": sources, "flagged": flagged, "leaks": leaks, "warnings": flagged - leaks, "clean": flagged == 0,
    }


def severity(role: str, rule: Rule) -> str:
    """What a flagged held-out document of a source with this role is: a domain's test split
    measures the domain, so anything of it in training is a leak (exit 1); a general
    source's val split measures forgetting on web-like text, where near copies of a
    document are the corpus's own duplication (sources like Dolma are split without
    near-duplicate clustering): warnings (exit 0), leaks with --strict."""
    return "leak" if role == "domain" or rule.strict else "warning"


def _examples(held, ev: dict, m: dict, text: "_Decoder", n: int) -> list[dict]:
    """The boilerplate n-grams most held-out documents share, one per stretch of text."""
    keys = ev["boiler_keys"]
    if not len(keys):
        return []
    top = keys[np.argsort(-held.df[keys], kind="stable")[:200]]
    at = ev["boiler_at"]  # the matched boilerplate occurrences, in position order
    o = np.argsort(held.key[at], kind="stable")
    first = at[o][np.searchsorted(held.key[at][o], top)]  # each top key's first occurrence, for its text
    shown: list[int] = []
    out = []
    for kk, i in zip(top.tolist(), first.tolist()):
        p = int(held.pos[i])
        if any(abs(p - o) < n for o in shown):  # an overlapping window of an example already shown
            continue
        shown.append(p)
        out.append({"text": text(int(held.doc[i]), p, p + n), "heldout_docs": int(held.df[kk]),
                    "train_docs": int(train_docs(m["sig"][kk : kk + 1])[0])})
        if len(out) == EXAMPLES:
            break
    return out


def _offender(held, ev: dict, m: dict, text: "_Decoder", where, d: int, n: int) -> dict:
    """One document's evidence: why it is flagged, its strongest passage, where that is."""
    reasons = [name for name, f in ev["flags"].items() if f[d]]
    if ev["exact"][d]:
        start, end, loc = int(held.starts[d]), int(held.ends[d]), m["exact"][d]
    elif ev["quote"][d] and (ev["flags"]["quote"][d] or not ev["flags"]["near_copy"][d]):
        start, end, loc = int(ev["quote_at"][d]), int(ev["quote_end"][d]), m["loc"][ev["quote_key"][d]]
    elif ev["flags"]["near_copy"][d]:
        start, end, loc = int(held.starts[d]), int(held.ends[d]), ev["near_loc"][d]
    else:
        start, end = int(ev["span_at"][d]), int(ev["span_end"][d])
        loc = m["loc"][ev["span_key"][d]] if ev["span_key"][d] >= 0 else NO_LOC
    return {"id": held.ids[d], "flagged": reasons, "exact": bool(ev["exact"][d]),
            "near_copy": round(float(ev["near"][d]), 6), "near_text": round(float(ev["text"][d]), 6),
            "quote_tokens": int(ev["quote"][d]),
            "span_tokens": int(ev["span"][d]), "share": round(float(ev["share"][d]), 6),
            "matched_ngrams": int(ev["hits"][d]), "ngrams": int(ev["ngrams"][d]),
            "discounted_ngrams": int(ev["discounted"][d]),
            "snippet": text(d, start, end) if start >= 0 else "", "found_in": where(loc)}


class _Decoder:
    """Token spans as text with the store's tokenizer when its file exists, else as ids."""

    LIMIT = 48  # tokens shown per snippet

    def __init__(self, held, loaded: tuple | None = None) -> None:
        self.held, self.cache = held, dict([loaded]) if loaded else {}  # (path, tokenizer) the text check loaded

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
