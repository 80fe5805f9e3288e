"""The merge: the tasks' parts -> one token store, in canonical order, split, atomically.

Runs in one process after every task finished. Documents are put in canonical order
(input files sorted by path, then position in the file: `np.lexsort`, no per-document
Python), the split is decided on the whole corpus (so it cannot depend on the task
count), and every split is written by copying runs of consecutive documents from the
parts. The store is assembled in a staging folder, `store.json` last, and renamed into
place: `STORES/<source>` is either absent, the old store, or the complete new one.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mixer import __version__
from mixer.formats.atomic import write_json
from mixer.errors import MixerError
from mixer.ingest.tokenizer_step import DOC_DTYPE, part_name
from mixer.ingest.sources import SourceSpec
from mixer.ingest.split import METHOD, heldout_mask, seeded_hash, threshold_for_fraction, threshold_for_tokens, val_mask
from mixer.formats.store import HELDOUT_SPLIT, STORE_FORMAT
from mixer.ingest.vocab import TokenizerInfo

COPY_CHUNK = 1 << 26  # tokens per write when copying one long run


@dataclass
class Corpus:
    """Every document of the source, in canonical order."""

    length: np.ndarray  # tokens incl. EOS
    hash: np.ndarray  # unseeded text hash
    part: np.ndarray  # which part holds its tokens
    start: np.ndarray  # token offset inside that part
    ids: list[str]
    minhash: np.ndarray | None


def load_parts(parts_dir: Path, tasks: int, with_minhash: bool) -> Corpus:
    tables, ids, sigs = [], [], []
    from mixer.ingest.neardup import NUM_PERM

    for r in range(tasks):
        base = parts_dir / part_name(r)
        tables.append(np.fromfile(base.with_suffix(".docs"), dtype=DOC_DTYPE))
        ids.extend(base.with_suffix(".ids").read_text(encoding="utf-8").splitlines())
        if with_minhash:
            sigs.append(np.fromfile(base.with_suffix(".minhash"), dtype=np.uint32).reshape(-1, NUM_PERM))
        if len(ids) != sum(len(t) for t in tables):
            raise MixerError(f"{base}.ids: {len(ids)} ids for {sum(len(t) for t in tables)} documents; delete "
                             f"{parts_dir.parent} and re-run")
    docs = np.concatenate(tables)
    part = np.repeat(np.arange(tasks), [len(t) for t in tables])
    local = np.concatenate([np.arange(len(t)) for t in tables])
    start = np.concatenate([np.cumsum(t["length"]) - t["length"] for t in tables]).astype(np.int64)
    order = np.lexsort((local, docs["file"]))  # file index is already the sorted-path rank
    return Corpus(
        length=docs["length"][order].astype(np.int64),
        hash=docs["hash"][order],
        part=part[order],
        start=start[order],
        ids=[ids[i] for i in order],
        minhash=np.concatenate(sigs)[order] if with_minhash else None,
    )


def decide_split(spec: SourceSpec, corpus: Corpus) -> tuple[np.ndarray, dict, np.ndarray | None, np.ndarray]:
    """Held-out mask, the split record for store.json, near-duplicate cluster labels, and (domain
    stores) the validation mask."""
    key_hash = corpus.hash
    labels = None
    record: dict = {"near_duplicates": spec.use_near_duplicates}
    if spec.use_near_duplicates:
        from mixer.ingest.neardup import CONFIG, clusters

        labels = clusters(corpus.minhash)
        # representative = the member with the smallest unseeded hash (seed-independent, so a
        # cluster is held out with the same probability as a single document)
        rep = np.full(int(labels.max()) + 1 if len(labels) else 0, np.iinfo(np.uint64).max, dtype=np.uint64)
        np.minimum.at(rep, labels, corpus.hash)
        key_hash = rep[labels]
        sizes = np.bincount(labels)
        record |= {
            "near_duplicate_clusters": int((sizes > 1).sum()),
            "near_duplicate_documents": int((sizes[labels] > 1).sum()),
            "near_duplicate_moved": int((key_hash != corpus.hash).sum()),
            "minhash": CONFIG,
        }
    h = seeded_hash(key_hash, spec.seed)
    if spec.test_tokens is not None:
        threshold = threshold_for_tokens(h, corpus.length, spec.test_tokens, spec.where("test_tokens"))
    else:
        threshold = threshold_for_fraction(spec.heldout_fraction)
    mask = heldout_mask(h, threshold)
    val = val_mask(h, threshold) if spec.role == "domain" else np.zeros(len(h), dtype=bool)
    total = int(corpus.length.sum())
    record = {
        "method": METHOD,
        "test_fraction": spec.heldout_fraction,
        "test_tokens": spec.test_tokens,
        "seed": spec.seed,
        "threshold": f"0x{threshold:016x}",
        "achieved_fraction": (int(corpus.length[mask].sum()) / total) if total else 0.0,
        **({"val_achieved_fraction": (int(corpus.length[val].sum()) / total) if total else 0.0}
           if spec.role == "domain" else {}),
    } | record
    return mask, record, labels, val


def _copy_split(corpus: Corpus, select: np.ndarray, parts: list[np.ndarray], out: Path, dtype: np.dtype) -> None:
    """Write the selected documents' tokens, merging runs that are contiguous in one part."""
    part, start, length = corpus.part[select], corpus.start[select], corpus.length[select]
    new_run = np.r_[True, (part[1:] != part[:-1]) | (start[1:] != start[:-1] + length[:-1])] if len(part) else part
    heads = np.flatnonzero(new_run)
    run_len = np.add.reduceat(length, heads) if len(heads) else heads
    with open(out, "wb") as f:
        for p, s, n in zip(part[heads], start[heads], run_len):
            for a in range(int(s), int(s + n), COPY_CHUNK):
                f.write(memoryview(np.ascontiguousarray(parts[p][a : min(a + COPY_CHUNK, int(s + n))])))
        f.flush()
        os.fsync(f.fileno())
    np.cumsum(length, dtype=np.uint64).astype("<u8").tofile(out.with_name(out.name + ".index"))


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
    corpus = load_parts(work / "parts", tasks, spec.use_near_duplicates)
    if not len(corpus.length):
        raise MixerError(f"{spec.where('inputs')}: no documents with text (every record was empty or skipped)")
    mask, split_record, labels, val = decide_split(spec, corpus)
    heldout = HELDOUT_SPLIT[spec.role]
    if (mask | val).all():
        raise MixerError(f"{spec.where('test_fraction')}: every document fell in {heldout}; the corpus is too small")
    parts = []
    for r in range(tasks):
        f = work / "parts" / f"{part_name(r)}.ds"
        parts.append(np.memmap(f, dtype=dtype, mode="r") if f.stat().st_size else np.zeros(0, dtype=dtype))

    staging = work / "store"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        splits = {}
        for name, select in (("train", ~mask & ~val), (heldout, mask), *((("val", val),) if spec.role == "domain" else ())):
            _copy_split(corpus, select, parts, staging / f"{name}.ds", dtype)
            (staging / f"{name}.ids").write_text("".join(i + "\n" for i, s in zip(corpus.ids, select) if s), "utf-8")
            splits[name] = {"documents": int(select.sum()), "tokens": int(corpus.length[select].sum())}
        if labels is not None:
            _write_clusters(staging / "near_duplicates.jsonl", labels, corpus.ids, np.where(mask, heldout, np.where(val, "val", "train")))

        meta = {
            "format": STORE_FORMAT,
            "source": spec.name,
            "role": spec.role,
            "tokenizer": {k: v for k, v in tok.to_dict().items() if k != "eos"},
            "dtype": dtype.str,
            "splits": splits,
            "split": split_record,
            "inputs": list(spec.inputs),
            "input_files": extra["input_files"],
            "text_key": spec.text_key,
            "id_key": spec.id_key,
            "dropped": {"empty": sum(r["empty"] for r in reports), "bad_records": sum(r["bad_records"] for r in reports)},
            "skipped_records": [s for r in reports for s in r["skipped"]][:20],
            "fingerprint": extra["fingerprint"],
            "mixer_version": __version__,
        }
        write_json(staging / "store.json", meta)  # last: its presence means the store is complete
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _install(staging, stores / spec.name, work)
    return meta


def _write_clusters(path: Path, labels: np.ndarray, ids: list[str], sides: np.ndarray) -> None:
    """One JSON line per near-duplicate cluster (2+ documents): its ids and its side."""
    sizes = np.bincount(labels)
    members = np.flatnonzero(sizes[labels] > 1)
    members = members[np.argsort(labels[members], kind="stable")]
    groups = np.split(members, np.flatnonzero(np.diff(labels[members])) + 1) if len(members) else []
    groups.sort(key=lambda g: int(g[0]))  # clusters in canonical order of their first document
    with open(path, "w", encoding="utf-8") as f:
        for k, g in enumerate(groups):
            side = str(sides[g[0]])
            f.write(json.dumps({"cluster": k, "split": side, "documents": [ids[i] for i in g]}) + "\n")


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
