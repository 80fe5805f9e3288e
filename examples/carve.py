"""General data that shares something with the domain, as web data does: a slice of every
domain corpus carved out *before* tokenizing and given to the general source, so NPT sees a
little of every domain while no carved document (nor a near copy of one) is ever in a
domain's train, validation or test split.

    carve(samples, out, {"music": 0.05, "proofs": 0.05}, seed=0)

For each domain corpus: documents are grouped (connected components of near-duplicate pairs,
mixer's MinHash clustering `mixer.ingest.neardup`, joined with exact copies of the
normalized text), and a whole group is carved iff the seeded hash of its smallest text hash
falls under `share` (mixer.ingest.split's hashing, with its own seed). Writes:

    OUT/<domain>.jsonl.zst     the documents left to the domain store (all its splits)
    OUT/slices.jsonl.zst       the carved documents of every domain, ids prefixed <domain>/
    OUT/carve.json             per domain: documents and characters kept and carved, the rule,
                               and the proof: carved and kept documents share no normalized
                               text hash and no near-duplicate group (recomputed over the union)

Whole groups move, so a near copy of a carved document cannot stay behind in the domain's
test split; `mixer audit` of the study's mixes checks the result again from the tokens.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

METHOD = ("near-duplicate groups (MinHash clusters joined with exact copies of the normalized text) carved whole "
          "iff splitmix64(min blake2b-8 of the group's normalized texts ^ splitmix64(CARVE_SEED + seed)) < share * 2^64")
# The carve's hash must be independent of the split's (mixer tokenize --split-seed, 0 by default):
# with the same seed, the documents under the carve's threshold would be exactly those under the
# test and validation thresholds, and the carve would empty both splits.
CARVE_SEED = 0x6361727665  # "carve"


def _read(path: Path) -> list[dict]:
    import zstandard

    with zstandard.open(path, "rt") as f:
        return [json.loads(line) for line in f]


def _write(path: Path, docs: list[dict]) -> None:
    import zstandard

    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with zstandard.open(tmp, "wt") as f:
        for d in docs:
            f.write(json.dumps(d, ensure_ascii=False) + "\n")
    tmp.rename(path)


def groups(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(group label, normalized text hash) per document: near-duplicate clusters joined with
    exact copies (texts too short for a MinHash signature still group by their hash)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    from mixer.ingest.neardup import clusters, signatures
    from mixer.ingest.split import normalize, text_hash

    norm = [normalize(t) for t in texts]
    hashes = np.array([text_hash(t) for t in norm], dtype=np.uint64)
    near = clusters(signatures(norm))
    n = len(texts)
    _, first_of_hash = np.unique(hashes, return_inverse=True)
    # one graph: document -> its near-duplicate cluster node, document -> its exact-hash node
    src = np.r_[np.arange(n), np.arange(n)]
    dst = np.r_[n + near, n + n + first_of_hash]
    graph = coo_matrix((np.ones(2 * n, dtype=np.int8), (src, dst)), shape=(3 * n, 3 * n))
    labels = connected_components(graph, directed=False)[1][:n]
    return labels, hashes


def carve(samples: Path, out: Path, shares: dict[str, float], seed: int = 0) -> dict:
    """Carve each domain's slice into OUT (see the module doc); a finished carve with the
    same settings is read back, not redone."""
    from mixer.ingest.split import seeded_hash, threshold_for_fraction

    out.mkdir(parents=True, exist_ok=True)
    report_file = out / "carve.json"
    settings = {"shares": shares, "seed": seed, "carve_seed": CARVE_SEED + seed, "method": METHOD}
    if report_file.exists():
        done = json.loads(report_file.read_text())
        if done.get("settings") == settings:
            return done
    slices, report = [], {"settings": settings, "domains": {}}
    for domain, share in shares.items():
        docs = _read(samples / f"{domain}.jsonl.zst")
        labels, hashes = groups([d["text"] for d in docs])
        # each group's key: its smallest text hash (order-free), seeded like the split's hash
        key = np.full(labels.max() + 1, np.iinfo(np.uint64).max, dtype=np.uint64)
        np.minimum.at(key, labels, hashes)
        carved_group = seeded_hash(key, CARVE_SEED + seed) < np.uint64(threshold_for_fraction(share))
        carved = carved_group[labels]
        kept_docs = [d for d, c in zip(docs, carved) if not c]
        slices += [{"id": f"{domain}/{d['id']}", "text": d["text"]} for d, c in zip(docs, carved) if c]
        _write(out / f"{domain}.jsonl.zst", kept_docs)
        # the proof, recomputed over the union: no text hash and no group on both sides
        shared_hashes = len(set(hashes[carved].tolist()) & set(hashes[~carved].tolist()))
        shared_groups = len(set(labels[carved].tolist()) & set(labels[~carved].tolist()))
        report["domains"][domain] = {
            "share": share, "documents": len(docs), "carved_documents": int(carved.sum()),
            "characters": int(sum(len(d["text"]) for d in docs)),
            "carved_characters": int(sum(len(d["text"]) for d, c in zip(docs, carved) if c)),
            "groups": int(labels.max() + 1), "carved_groups": int(carved_group.sum()),
            # under the split's own test threshold (split seed 0) before the carve and after it: the
            # carve must not empty or skew the domain's held-out splits
            "test_band_share": [float(np.mean(seeded_hash(hashes, 0) < threshold_for_fraction(0.02))),
                                float(np.mean(seeded_hash(hashes[~carved], 0) < threshold_for_fraction(0.02)))],
            "shared_text_hashes": shared_hashes, "shared_groups": shared_groups,
            "carved_ids": sorted(str(d["id"]) for d, c in zip(docs, carved) if c)}
        if shared_hashes or shared_groups:
            raise SystemExit(f"carve: {domain}: carved and kept documents share {shared_hashes} text hash(es) and "
                             f"{shared_groups} group(s); the carve is not clean")
    _write(out / "slices.jsonl.zst", slices)
    tmp = report_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    tmp.rename(report_file)
    return report
