"""The merge: the tasks' parts -> one token store, in canonical order, split, atomically.

Runs in one process after every task finished, and streams: for a source without
near-duplicate clustering (the general sources, where corpora reach billions of
documents) its memory does not grow with the number of documents (docs/benchmarks.md).

Canonical order is input files sorted by path, then position in the file. Task r read
files r, r + tasks, ... in that order, so every part is already in canonical order and
holds whole files: the canonical order is the parts' per-file runs sorted by file index
(`plan_parts`). No document is sorted; every pass reads the parts' per-document tables
DOC_CHUNK records at a time.

The split is decided on the whole corpus, so it cannot depend on the task count: a
held-out fraction is a fixed hash threshold; a held-out size in tokens is the threshold
where the running length in hash order reaches it, found in a few histogram passes
(`mixer.ingest.split.threshold_for_tokens_streamed`). Then one pass writes both splits:
tokens are copied from part to store by the kernel (`copy_file_range`, no buffer here),
ids as byte ranges of the parts' `.ids` files, the index as a running sum.

Near-duplicate clustering (on by default for domain sources only) needs every
signature at once: see `_cluster_keys` for what it keeps per document.

The store is assembled in a staging folder, `store.json` last, and renamed into place:
`STORES/<source>` is either absent, the old store, or the complete new one.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

import numpy as np

from mixer import __version__
from mixer.errors import MixerError
from mixer.ingest.tokenizer_step import DOC_DTYPE, part_name
from mixer.ingest.sources import SourceSpec
from mixer.ingest.split import (
    METHOD,
    heldout_mask,
    seeded_hash,
    threshold_for_fraction,
    threshold_for_tokens_streamed,
    val_mask,
)
from mixer.formats.store import HELDOUT_SPLIT, STORE_FORMAT, seal, write_store_meta
from mixer.ingest.vocab import TokenizerInfo

DOC_CHUNK = 1 << 16  # documents per step of every pass (~10 MB of working arrays with uuid-style ids)
COPY_CHUNK = 1 << 24  # bytes per read when the kernel cannot copy file to file itself


@dataclass
class Corpus:
    """A whole corpus in memory, for `decide_split` on small inputs; the merge streams instead."""

    length: np.ndarray  # tokens incl. EOS
    hash: np.ndarray  # unseeded text hash
    minhash: np.ndarray | None


@dataclass(frozen=True)
class Part:
    base: Path  # WORK/parts/part-r; the files are base + .ds, .docs, .ids, .minhash
    documents: int
    tokens: int


@dataclass
class Plan:
    """The canonical order as segments: runs of consecutive documents of one part."""

    parts: list[Part]
    part: np.ndarray  # segment -> part
    first: np.ndarray  # segment -> its first document, counted within the part
    count: np.ndarray  # segment -> documents
    documents: int
    tokens: int

    def segments(self) -> Iterator[tuple[int, int, int]]:
        return zip(self.part.tolist(), self.first.tolist(), self.count.tolist())

    def chunks(self) -> Iterator[tuple[int, int, int, np.ndarray]]:
        """(canonical index of the first document, part, part-local first document, table rows), in order."""
        g = 0
        for p, first, count in self.segments():
            with open(self.parts[p].base.with_suffix(".docs"), "rb") as fh:
                fh.seek(first * DOC_DTYPE.itemsize)
                for a in range(first, first + count, DOC_CHUNK):
                    table = np.fromfile(fh, dtype=DOC_DTYPE, count=min(DOC_CHUNK, first + count - a))
                    yield g, p, a, table
                    g += len(table)


def _broken(path: Path, problem: str) -> MixerError:
    return MixerError(f"{path}: {problem}; delete {path.parent.parent} and re-run")


def plan_parts(parts_dir: Path, tasks: int, dtype: np.dtype, with_minhash: bool) -> Plan:
    """Check the parts against each other and find the canonical order (one run per input file)."""
    from mixer.ingest.neardup import NUM_PERM

    parts, run_file, run_part, run_first, run_count = [], [], [], [], []
    for r in range(tasks):
        base = parts_dir / part_name(r)
        docs_path = base.with_suffix(".docs")
        size = docs_path.stat().st_size
        if size % DOC_DTYPE.itemsize:
            raise _broken(docs_path, "not a whole number of document records")
        n, tokens, prev = size // DOC_DTYPE.itemsize, 0, -1
        starts, files = [], []
        with open(docs_path, "rb") as fh:
            for a in range(0, n, DOC_CHUNK):
                table = np.fromfile(fh, dtype=DOC_DTYPE, count=min(DOC_CHUNK, n - a))
                f = table["file"].astype(np.int64)
                if f[0] < prev or (f[1:] < f[:-1]).any():
                    raise _broken(docs_path, "documents out of input-file order")
                new = np.flatnonzero(np.r_[f[0] != prev, f[1:] != f[:-1]])
                starts.append(new + a)
                files.append(f[new])
                prev = int(f[-1])
                tokens += int(table["length"].sum())
        ds = base.with_suffix(".ds")
        if ds.stat().st_size != tokens * dtype.itemsize:
            raise _broken(ds, f"{ds.stat().st_size // dtype.itemsize} tokens where its documents have {tokens}")
        sig = base.with_suffix(".minhash")
        if with_minhash and sig.stat().st_size != n * NUM_PERM * 4:
            raise _broken(sig, f"{sig.stat().st_size // (NUM_PERM * 4)} signatures for {n} documents")
        parts.append(Part(base, n, tokens))
        first = np.concatenate(starts) if starts else np.zeros(0, dtype=np.int64)
        run_file.append(np.concatenate(files) if files else first)
        run_first.append(first)
        run_count.append(np.diff(np.r_[first, n]))
        run_part.append(np.full(len(first), r, dtype=np.int64))
    file, part, first, count = (np.concatenate(x) for x in (run_file, run_part, run_first, run_count))
    order = np.argsort(file, kind="stable")
    file, part, first, count = file[order], part[order], first[order], count[order]
    if (file[1:] == file[:-1]).any():
        raise _broken(parts_dir / part_name(0), "two parts hold documents of one input file")
    # consecutive runs of one part are consecutive in it too: one segment
    head = np.flatnonzero(np.r_[True, part[1:] != part[:-1]]) if len(part) else np.zeros(0, dtype=np.int64)
    return Plan(parts, part[head], first[head], np.add.reduceat(count, head) if len(head) else count,
                sum(p.documents for p in parts), sum(p.tokens for p in parts))


def cluster_record(hashes: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, dict]:
    """Split keys of clustered documents, and what store.json says about the clusters.

    Every member takes the smallest unseeded hash of its cluster (seed-independent, so a
    cluster is held out with the same probability as a single document).
    """
    from mixer.ingest.neardup import CONFIG

    rep = np.full(int(labels.max()) + 1 if len(labels) else 0, np.iinfo(np.uint64).max, dtype=np.uint64)
    np.minimum.at(rep, labels, hashes)
    key_hash = rep[labels]
    sizes = np.bincount(labels)
    return key_hash, {
        "near_duplicate_clusters": int((sizes > 1).sum()),
        "near_duplicate_documents": int((sizes[labels] > 1).sum()),
        "near_duplicate_moved": int((key_hash != hashes).sum()),
        "minhash": CONFIG,
    }


def split_threshold(spec: SourceSpec, chunks: Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]]) -> int:
    """The held-out threshold; `chunks()` yields (unseeded split keys, token lengths) of every document."""
    if spec.test_tokens is None:
        return threshold_for_fraction(spec.heldout_fraction)
    seeded = lambda: ((seeded_hash(k, spec.seed), n) for k, n in chunks())  # noqa: E731
    return threshold_for_tokens_streamed(seeded, spec.test_tokens, spec.where("test_tokens"))


def split_record(spec: SourceSpec, threshold: int, heldout_tokens: int, total: int, near: dict,
                 val_tokens: int = 0) -> dict:
    return {
        "method": METHOD,
        "test_fraction": spec.heldout_fraction,
        "test_tokens": spec.test_tokens,
        "seed": spec.seed,
        "threshold": f"0x{threshold:016x}",
        "achieved_fraction": (heldout_tokens / total) if total else 0.0,
        **({"val_achieved_fraction": (val_tokens / total) if total else 0.0} if spec.role == "domain" else {}),
    } | near


TRAIN, HELDOUT, VAL = 0, 1, 2  # the side of each document


def sides(spec: SourceSpec, seeded: np.ndarray, threshold: int) -> np.ndarray:
    """Each document's side from its seeded split key: held out below the threshold; for a
    domain store the band just above it, as wide, is the validation split (split.val_mask)."""
    side = np.where(heldout_mask(seeded, threshold), HELDOUT, TRAIN).astype(np.int8)
    if spec.role == "domain":
        side[val_mask(seeded, threshold)] = VAL
    return side


def decide_split(spec: SourceSpec, corpus: Corpus) -> tuple[np.ndarray, dict, np.ndarray | None, np.ndarray]:
    """Held-out mask, the split record for store.json, near-duplicate cluster labels (in
    memory), and the validation mask (domain stores; empty otherwise)."""
    key_hash, labels, near = corpus.hash, None, {"near_duplicates": spec.use_near_duplicates}
    if spec.use_near_duplicates:
        from mixer.ingest.neardup import clusters

        labels = clusters(corpus.minhash)
        key_hash, more = cluster_record(corpus.hash, labels)
        near |= more
    threshold = split_threshold(spec, lambda: iter([(key_hash, corpus.length)]))
    side = sides(spec, seeded_hash(key_hash, spec.seed), threshold)
    mask, val = side == HELDOUT, side == VAL
    total = int(corpus.length.sum())
    record = split_record(spec, threshold, int(corpus.length[mask].sum()), total, near, int(corpus.length[val].sum()))
    return mask, record, labels, val


def _copy(src: int, offset: int, count: int, dst: int) -> None:
    """Append bytes [offset, offset + count) of file `src` to `dst` (both raw descriptors)."""
    while count > 0:
        try:
            done = os.copy_file_range(src, dst, count, offset)
        except (AttributeError, OSError) as e:  # not Linux, or a file system that cannot
            if isinstance(e, OSError) and e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                raise
            data = os.pread(src, min(count, COPY_CHUNK), offset)
            view, done = memoryview(data), len(data)
            while view:
                view = view[os.write(dst, view) :]
        if done == 0:
            raise MixerError(f"part file ended early (wanted {count} more bytes at offset {offset})")
        offset += done
        count -= done


class _Lines:
    """The next lines of a part's .ids file: one bytes object and the line ends."""

    def __init__(self, path: Path, offset: int = 0, line_bytes: float = 16.0) -> None:
        self.path, self.offset = path, offset  # offset: bytes handed out so far
        self.line_bytes = line_bytes  # mean line length so far (a low first guess: reads double)

    def take(self, fh: BinaryIO, n: int) -> tuple[bytes, np.ndarray]:
        # read about what n lines need (reading far more would cost memory for the line
        # ends of lines that are then given back); then more, doubling, if that fell short
        buf = b""
        ends = np.zeros(0, dtype=np.int64)
        want = int(n * self.line_bytes * 1.05) + 4096
        while len(ends) < n:
            more = fh.read(want)
            if not more:
                raise _broken(self.path, "fewer ids than documents")
            start = len(buf)
            buf += more
            ends = np.r_[ends, np.flatnonzero(np.frombuffer(more, dtype=np.uint8) == 10) + start + 1]
            want *= 2
        cut = int(ends[n - 1])
        fh.seek(self.offset + cut)  # give back what was read past this chunk
        self.offset += cut
        self.line_bytes = cut / n
        return buf[:cut], ends[:n]


class _SplitOut:
    """One split's files in the staging folder, appended chunk by chunk."""

    def __init__(self, staging: Path, name: str) -> None:
        self.name = name
        self.ds = os.open(staging / f"{name}.ds", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self.index = open(staging / f"{name}.ds.index", "wb")
        self.ids = open(staging / f"{name}.ids", "wb")
        self.documents = self.tokens = 0

    def add_index(self, length: np.ndarray) -> None:
        ends = np.uint64(self.tokens) + np.cumsum(length, dtype=np.uint64)
        self.index.write(memoryview(ends.astype("<u8")))
        self.documents += len(length)
        self.tokens += int(length.sum())

    def close(self, ok: bool) -> None:
        for f in (self.index, self.ids):
            if ok:
                f.flush()
                os.fsync(f.fileno())
            f.close()
        if ok:
            os.fsync(self.ds)
        os.close(self.ds)


def _write_splits(plan: Plan, outs: tuple[_SplitOut, ...], side_of: Callable[[int, np.ndarray], np.ndarray],
                  members: np.ndarray | None, itemsize: int) -> dict[int, str]:
    """One pass in canonical order: every document's tokens, index entry and id to its split.

    Runs of consecutive documents bound for one split are one copy of tokens and one write
    of ids. Returns the ids of `members` (canonical indices, near-duplicate clusters only).
    """
    tok_at = [0] * len(plan.parts)  # where each part's next document starts
    lines = [_Lines(p.base.with_suffix(".ids")) for p in plan.parts]
    member_ids: dict[int, str] = {}
    g = 0
    for p, first, count in plan.segments():
        part = plan.parts[p]
        src = os.open(part.base.with_suffix(".ds"), os.O_RDONLY)
        try:
            with open(part.base.with_suffix(".docs"), "rb") as docs, open(lines[p].path, "rb") as ids:
                docs.seek(first * DOC_DTYPE.itemsize)
                ids.seek(lines[p].offset)
                for a in range(first, first + count, DOC_CHUNK):
                    table = np.fromfile(docs, dtype=DOC_DTYPE, count=min(DOC_CHUNK, first + count - a))
                    n = len(table)
                    length = table["length"].astype(np.int64)
                    side = side_of(g, table)
                    block, line_end = lines[p].take(ids, n)
                    line_start = np.r_[0, line_end[:-1]]
                    tok_end = np.cumsum(length)
                    tok_start = tok_end - length
                    bounds = np.r_[0, np.flatnonzero(side[1:] != side[:-1]) + 1, n].tolist()
                    view = memoryview(block)
                    for lo, hi in zip(bounds[:-1], bounds[1:]):
                        out = outs[int(side[lo])]
                        _copy(src, (tok_at[p] + int(tok_start[lo])) * itemsize,
                              int(tok_end[hi - 1] - tok_start[lo]) * itemsize, out.ds)
                        out.ids.write(view[int(line_start[lo]) : int(line_end[hi - 1])])
                    for k, out in enumerate(outs):
                        out.add_index(length[side == k])
                    if members is not None:
                        for i in np.flatnonzero(members[g : g + n]).tolist():
                            member_ids[g + i] = block[line_start[i] : line_end[i] - 1].decode("utf-8")
                    tok_at[p] += int(tok_end[-1])
                    g += n
        finally:
            os.close(src)
    for part_lines in lines:
        if part_lines.offset != part_lines.path.stat().st_size:
            raise _broken(part_lines.path, "more ids than documents")
    return member_ids


def _cluster_keys(plan: Plan, work: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """Near-duplicate clusters of the whole corpus: (split keys, labels, record), canonical order.

    What stays in memory per document: the unseeded hash, the labels, the split keys
    (8 bytes each) and, one band at a time, the clustering's sort (~60 bytes; see
    `neardup.clusters`). The signatures (256 bytes per document) are gathered into one
    file in canonical order and memory-mapped, and every band's keys into another, read
    back one band at a time: neither is held whole.
    """
    from mixer.ingest.neardup import BANDS, NUM_PERM, band_key, clusters

    n, row = plan.documents, NUM_PERM * 4
    sig_path, keys_path = work / "merge-minhash.bin", work / "merge-bandkeys.bin"
    hashes = np.empty(n, dtype=np.uint64)
    try:
        with open(sig_path, "wb") as sig_out, open(keys_path, "wb") as keys_out:
            keys_out.truncate(n * BANDS * 8)
            for g, p, a, table in plan.chunks():
                hashes[g : g + len(table)] = table["hash"]
                with open(plan.parts[p].base.with_suffix(".minhash"), "rb") as fh:
                    fh.seek(a * row)
                    sig = np.fromfile(fh, dtype=np.uint32, count=len(table) * NUM_PERM).reshape(-1, NUM_PERM)
                sig_out.write(memoryview(sig))
                for b in range(BANDS):  # band-major, so that a band reads back as one array
                    keys_out.seek((b * n + g) * 8)
                    keys_out.write(memoryview(band_key(sig, b)))
        sig = np.memmap(sig_path, dtype=np.uint32, mode="r", shape=(n, NUM_PERM))
        labels = clusters(sig, lambda b: np.fromfile(keys_path, dtype=np.uint64, count=n, offset=b * n * 8))
        del sig
    finally:
        sig_path.unlink(missing_ok=True)
        keys_path.unlink(missing_ok=True)
    key_hash, record = cluster_record(hashes, labels)
    return key_hash, labels, record


def write_store(
    spec: SourceSpec,
    tok: TokenizerInfo,
    dtype: np.dtype,
    tasks: int,
    work: Path,
    stores: Path,
    reports: list[dict],
    extra: dict,
) -> dict:
    """Merge the parts under WORK into STORES/<source>; returns the store.json content."""
    plan = plan_parts(work / "parts", tasks, dtype, spec.use_near_duplicates)
    if not plan.documents:
        raise MixerError(f"{spec.where('inputs')}: no documents with text (every record was empty or skipped)")
    near: dict = {"near_duplicates": spec.use_near_duplicates}
    labels = members = None
    if spec.use_near_duplicates:
        key_hash, labels, more = _cluster_keys(plan, work)
        near |= more
        members = np.bincount(labels)[labels] > 1

        def keys_of(g: int, table: np.ndarray) -> np.ndarray:
            return key_hash[g : g + len(table)]
    else:

        def keys_of(g: int, table: np.ndarray) -> np.ndarray:
            return table["hash"]

    threshold = split_threshold(spec, lambda: ((keys_of(g, t), t["length"]) for g, _, _, t in plan.chunks()))

    def side_of(g: int, table: np.ndarray) -> np.ndarray:
        return sides(spec, seeded_hash(keys_of(g, table), spec.seed), threshold)

    heldout = HELDOUT_SPLIT[spec.role]

    staging = work / "store"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        names = ["train", heldout] + (["val"] if spec.role == "domain" else [])  # indexed by TRAIN, HELDOUT, VAL
        outs = tuple(_SplitOut(staging, name) for name in names)
        ok = False
        try:
            member_ids = _write_splits(plan, outs, side_of, members, dtype.itemsize)
            ok = True
        finally:
            for out in outs:
                out.close(ok)
        if not outs[0].documents:
            raise MixerError(f"{spec.where('test_fraction')}: every document fell in {heldout}; the corpus is too small")
        splits = {out.name: {"documents": out.documents, "tokens": out.tokens} for out in outs}
        split_rec = split_record(spec, threshold, outs[HELDOUT].tokens, plan.tokens, near,
                                 outs[VAL].tokens if len(outs) > VAL else 0)
        if labels is not None:
            side_names = np.array(names)[sides(spec, seeded_hash(key_hash, spec.seed), threshold)]
            _write_clusters(staging / "near_duplicates.jsonl", labels, member_ids, side_names)

        meta = {
            "format": STORE_FORMAT,
            "source": spec.name,
            "role": spec.role,
            "tokenizer": {k: v for k, v in tok.to_dict().items() if k != "eos"},
            "dtype": dtype.str,
            "splits": splits,
            "split": split_rec,
            "inputs": list(spec.inputs),
            "input_files": extra["input_files"],
            "text_key": spec.text_key,
            "id_key": spec.id_key,
            "dropped": {"empty": sum(r["empty"] for r in reports), "bad_records": sum(r["bad_records"] for r in reports)},
            "skipped_records": [s for r in reports for s in r["skipped"]][:20],
            "fingerprint": extra["fingerprint"],
            **({"recipe": extra["recipe"]} if extra.get("recipe") else {}),  # a recipe and its command-line overrides
            "tokenizer_backend": extra.get("tokenizer_backend"),  # the only key that may differ between backends
            "mixer_version": __version__,
        }
        meta["checksums"] = seal(staging, meta)  # every file is final: build and verify check against these
        write_store_meta(staging, meta)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _install(staging, stores / spec.name, work)
    return meta


def _write_clusters(path: Path, labels: np.ndarray, ids: dict[int, str], side_names: np.ndarray) -> None:
    """One JSON line per near-duplicate cluster (2+ documents): its ids and its side."""
    sizes = np.bincount(labels)
    members = np.flatnonzero(sizes[labels] > 1)
    members = members[np.argsort(labels[members], kind="stable")]
    groups = np.split(members, np.flatnonzero(np.diff(labels[members])) + 1) if len(members) else []
    groups.sort(key=lambda g: int(g[0]))  # clusters in canonical order of their first document
    with open(path, "w", encoding="utf-8") as f:
        for k, g in enumerate(groups):
            f.write(json.dumps({"cluster": k, "split": str(side_names[g[0]]), "documents": [ids[i] for i in g.tolist()]}) + "\n")


def _install(staging: Path, target: Path, work: Path) -> None:
    """Swap the staged store into place (a rename; the old one, if any, goes last)."""
    old = None
    if target.exists():
        old = work / "replaced"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    os.replace(staging, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
