"""The audit's text check: how much of a held-out document's text a training document
holds in the same order, measured on characters, for the few training documents the
n-gram scan points at.

Why characters: a near copy made by editing characters (typos, OCR noise, an edited bar
of a tune, a renamed identifier) changes every token n-gram over each edit. With 10% of
its characters substituted an ABC tune keeps ~3% of its 13-gram tokens' windows and a
prose page ~0.5%: too few for the token rule (one training document holds >= 0.9 of its
tokens), though enough to say *which* training document to look at. The text check then
reads that document and measures the held-out text it holds:

    aligned share = the share of the held-out document's (normalized, UTF-8) bytes that
    lie inside a SHINGLE-byte substring also found in the training document at the
    dominant offset of its window of WINDOW bytes.

"Dominant offset": for every shared substring, the offset between where it is in the two
texts; in each window of the held-out text, the band of BAND offsets holding the most
shared substrings (two staggered grids of bands, so a band edge splits no copy). A copy
keeps one offset that drifts only where text was inserted or deleted, so nearly all its
unedited text counts: a copy with 5% (10%, 20%) of its characters substituted scores
0.73-0.97 (0.67-0.93, 0.51-0.82) on the sample corpora. Text that merely shares words and
phrases with another document shares them at scattered offsets, and the best band of
each window holds a fraction of them: the nearest *other* tune, Coq file or documentation
page of a sample corpus scores 0.17-0.39 (median) and 0.36-0.64 (90th percentile).
Substrings found more than CAP times in the training text (runs of one character,
separator lines) are left out; they say nothing about where a copy lies.

Texts are normalized as the split normalizes them (NFC, casefolded, whitespace folded),
so a copy in other case or spacing is a copy here too.
"""

from __future__ import annotations

import numpy as np

SHINGLE = 5  # bytes per shared substring
WINDOW = 256  # held-out bytes per window that picks its own dominant offset
BAND = 8  # offsets within a band count as one offset (insertions and deletions drift it)
CAP = 64  # substrings found more often than this in the training text are left out
DENSE = 1 << 23  # (windows x bands) counted in one array up to this size, by sorting beyond
_TABLES = np.random.default_rng(0x74657874).integers(0, 2**64, size=(SHINGLE, 256), dtype=np.uint64, endpoint=False)


def _substrings(b: np.ndarray) -> np.ndarray:
    """A 64-bit hash of every SHINGLE-byte substring of `b` (tabulation hashing)."""
    m = len(b) - SHINGLE + 1
    if m <= 0:
        return np.zeros(0, dtype=np.uint64)
    h = _TABLES[0][b[:m]]
    for j in range(1, SHINGLE):
        h ^= _TABLES[j][b[j : j + m]]
    return h


def aligned_share(a: bytes, b: bytes) -> float:
    """The share of `a`'s bytes that `b` holds in the same order (module docstring)."""
    x, y = np.frombuffer(a, dtype=np.uint8), np.frombuffer(b, dtype=np.uint8)
    ha, hb = _substrings(x), _substrings(y)
    if not len(ha) or not len(hb):
        return float(len(x) > 0 and a == b)
    ob = np.argsort(hb, kind="stable")
    sb = hb[ob]
    lo, hi = np.searchsorted(sb, ha, "left"), np.searchsorted(sb, ha, "right")
    i = np.flatnonzero((hi > lo) & (hi - lo <= CAP))
    count = (hi - lo)[i]
    if not len(i):
        return 0.0
    # every (position in a, position in b) of a shared substring
    at = np.repeat(i, count)
    j = ob[np.repeat(lo[i] - np.cumsum(count) + count, count) + np.arange(int(count.sum()))]
    offset = j - at + len(x)  # >= 0
    window = at // WINDOW
    windows, bands = int(window[-1]) + 1, (len(x) + len(y)) // BAND + 2
    covered = np.zeros(len(x) + 1, dtype=np.int64)
    for shift in (0, BAND // 2):  # two staggered grids: a copy's drift never straddles both edges
        key = window * bands + (offset + shift) // BAND
        if windows * bands <= DENSE:  # a count per (window, band): linear, no sort
            n = np.bincount(key, minlength=windows * bands).reshape(windows, bands)
            fullest = np.argmax(n, axis=1)  # each window's fullest band (the first of equals)
            best = (key - window * bands) == fullest[window]
        else:
            u, inv, n = np.unique(key, return_inverse=True, return_counts=True)
            w = u // bands
            o = np.lexsort((u, -n, w))
            top = np.zeros(len(u), dtype=bool)
            top[o[np.concatenate([[True], w[o][1:] != w[o][:-1]])]] = True  # the same pick as argmax's
            best = top[inv]
        starts = at[best]
        np.add.at(covered, starts, 1)
        np.add.at(covered, starts + SHINGLE, -1)
    return float(np.count_nonzero(np.cumsum(covered[:-1]) > 0)) / len(x)


def check(held, ev: dict, loc: np.ndarray, reader, streams: list, eos_id: int) -> dict:
    """The text check of the documents the scan points at (`ev["candidates"]`: held-out
    document, representative n-gram, its position, the group's token share). Returns per
    held-out document the best aligned share and the location of the n-gram that led to
    it, and what was checked. Documents already flagged are not checked again."""
    from mixer.checks.train_streams import LOC_BITS
    from mixer.ingest.split import normalize

    nd = len(held.ids)
    out = {"text": np.zeros(nd), "text_loc": np.full(nd, np.iinfo(np.int64).max, dtype=np.int64), "pairs": 0,
           "skipped": None, "tokenizer": None}
    c = ev["candidates"]
    todo = np.flatnonzero(~ev["flagged"][c["doc"]] & (loc[c["key"]] != np.iinfo(np.int64).max))
    if not len(todo):
        return out
    path = next((s["tokenizer_path"] for s in held.sources if s["tokenizer_path"]), None)
    if path is None:
        out["skipped"] = "no tokenizer file to decode with (store.json tokenizer.path)"
        return out
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(path)
    out["tokenizer"] = (path, tok)  # for the report's snippets: loading it takes ~0.2 s
    texts: dict[int, bytes] = {}
    mask = (1 << LOC_BITS) - 1
    for d, at, where in zip(c["doc"][todo].tolist(), c["pos"][todo].tolist(), loc[c["key"][todo]].tolist()):
        start, end = int(held.starts[d]), int(held.ends[d])
        if d not in texts:
            texts[d] = normalize(tok.decode(held.tokens[start:end].tolist())).encode("utf-8")
        train = _document_around(reader, streams[where >> LOC_BITS], where >> LOC_BITS, where & mask,
                                 before=at - start + (end - start), after=2 * (end - start) - (at - start), eos_id=eos_id)
        share = aligned_share(texts[d], normalize(tok.decode(train.tolist())).encode("utf-8"))
        out["pairs"] += 1
        if share > out["text"][d]:
            out["text"][d], out["text_loc"][d] = share, where
    return out


def _document_around(reader, stream, index: int, pos: int, before: int, after: int, eos_id: int) -> np.ndarray:
    """The training document holding stream position `pos`, cut to [pos - before, pos + after):
    from the EOS before it to the EOS after it, inside its row or gap-free stretch."""
    if stream.kind == "rows":
        lo = pos // stream.row_len * stream.row_len
        hi = lo + stream.row_len
    else:
        lo, hi = next((a, b) for a, b in stream.stretches if a <= pos < b)
    a, b = max(lo, pos - before), min(hi, pos + after)
    tokens = reader.read(index, a, b)
    eos = np.flatnonzero(tokens == eos_id)
    left = eos[eos < pos - a]
    right = eos[eos >= pos - a]
    return tokens[(int(left[-1]) + 1 if len(left) else 0) : (int(right[0]) if len(right) else len(tokens))]
