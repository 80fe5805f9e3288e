"""`mixer verify`: a mix's sample sets (the domain validation split and the fixed domain train
sample runs are scored on; docs/formats.md, "Sample sets") against the domain store.

Written again from the documented rule, not with the writer (mixer/formats/sample_sets.py):
the domain's stream documents come from verify's own re-derivation of the recipe
(mixer/checks/expect.py), the seeded draw and the layout are re-implemented here, and only
the rule's constants (sample size, seed, salt) are shared. So a store re-split or re-tokenized
after the build, or an edited sample file or record, is named, whichever of them changed.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from mixer.checks.expect import Expected
from mixer.errors import MixerError
from mixer.formats.checksum import CHECKSUM, checksum_bytes, checksum_file
from mixer.formats.sample_sets import (SELECTION, TRAIN_LOSS, TRAIN_SAMPLE_SALT, TRAIN_SAMPLE_SEED,
                                       TRAIN_SAMPLE_TOKENS, VAL_SPLIT)


def _rows(tokens: np.ndarray, seq_len: int) -> np.ndarray:
    """(n, seq_len + 1) rows with a one-token overlap: strided, not gathered (unlike the writer)."""
    tokens = np.ascontiguousarray(tokens)
    n = max(0, (len(tokens) - 1) // seq_len)
    return np.lib.stride_tricks.as_strided(tokens, shape=(n, seq_len + 1),
                                           strides=(seq_len * tokens.itemsize, tokens.itemsize))


def expected_sample_sets(exp: Expected) -> list[tuple[dict, np.ndarray]]:
    """(manifest record, samples) of every sample set the mix must hold, re-derived."""
    d = exp.domain
    if d is None:
        return []
    store, L, dtype, out = d.store, exp.seq_len, exp.dtype, []
    if VAL_SPLIT in store.splits:
        tokens = np.asarray(store.tokens(VAL_SPLIT)).astype(dtype)
        rows = _rows(tokens, L)
        out.append(({"name": f"{store.name}-{VAL_SPLIT}", "purpose": SELECTION, "file": f"eval/{store.name}-{VAL_SPLIT}.bin",
                     "source": store.name, "split": VAL_SPLIT, "samples": len(rows),
                     "documents": store.n_docs(VAL_SPLIT), "tokens": len(tokens),
                     "tokens_dropped": len(tokens) - (len(rows) * L + 1 if len(rows) else 0)}, rows))
    docs = d.stream.documents
    docs = np.arange(store.n_docs("train"), dtype=np.int64) if docs is None else np.asarray(docs, dtype=np.int64)
    if len(docs):
        ends = np.asarray(store.doc_ends("train"), dtype=np.int64)
        lengths = np.diff(ends, prepend=0)[docs]
        order = np.random.default_rng([TRAIN_SAMPLE_SEED, TRAIN_SAMPLE_SALT, len(docs)]).permutation(len(docs))
        k = min(len(docs), int(np.searchsorted(np.cumsum(lengths[order]), TRAIN_SAMPLE_TOKENS, side="left")) + 1)
        chosen = np.sort(docs[order[:k]])
        flat = np.asarray(store.tokens("train"))
        # a few hundred documents of a ~64K-token sample: one slice each is not a hot loop
        text = np.concatenate([flat[(ends[i - 1] if i else 0) : ends[i]] for i in chosen]).astype(dtype)
        digest = hashlib.blake2b(chosen.astype("<i8").tobytes() + store.name.encode(), digest_size=6).hexdigest()
        name = f"{store.name}-train-sample"
        out.append(({"name": name, "purpose": TRAIN_LOSS, "file": f"eval/{name}.bin", "source": store.name,
                     "split": "train", "samples": len(_rows(text, L)), "documents": int(k), "tokens": len(text),
                     "target_tokens": TRAIN_SAMPLE_TOKENS, "seed": TRAIN_SAMPLE_SEED,
                     "drawn_from": "all" if d.stream.documents is None else "subset",
                     "drawn_from_documents": len(docs), "digest": digest}, _rows(text, L)))
    return out


def check_sample_sets(mix: Path, m: dict, exp: Expected) -> None:
    """Every sample set record and file against the re-derived ones; MixerError naming the first
    difference. A mix built before mixes held sample sets (no `sample_sets` key) has none to check."""
    if "sample_sets" not in m:
        return
    file = mix / "manifest.json"
    claimed = m["sample_sets"]
    wanted = expected_sample_sets(exp)
    if not isinstance(claimed, list) or len(claimed) != len(wanted):
        names = [w["name"] for w, _ in wanted]
        raise MixerError(f"{file}: sample_sets lists {len(claimed) if isinstance(claimed, list) else claimed!r}, "
                         f"re-derived {len(wanted)} ({', '.join(names) or 'none'})")
    for got, (want, rows) in zip(claimed, wanted):
        want = {**want, CHECKSUM: checksum_bytes(np.ascontiguousarray(rows).data)}
        if not isinstance(got, dict):
            raise MixerError(f"{file}: sample_sets entry {got!r} is not an object")
        for key in [*want, *sorted(set(got) - set(want))]:
            if got.get(key, "absent") != want.get(key, "absent"):
                raise MixerError(f"{file}: sample set {want['name']}: {key} {got.get(key, 'absent')!r} claimed, "
                                 f"{want.get(key, 'absent')!r} re-derived from the store {exp.domain.store.path}")
        f = mix / want["file"]
        if not f.is_file() or checksum_file(f) != want[CHECKSUM]:
            raise MixerError(f"{f}: sample set missing or its bytes are not the store's (re-derived from "
                             f"{exp.domain.store.path})")
