"""Samples a mix holds besides its shards and eval sets: everything training and evaluation
read beyond the training samples, fixed by `mixer build` so that a run needs the mix alone,
wherever it was copied (a cluster's scratch) and whatever happened to the token stores since.

For the mix's domain source, in `MIX/eval/` and listed in `manifest["sample_sets"]`:

* `<domain>-val.bin` (`purpose: "selection"`): the domain store's validation split, laid out
  as the eval sets are. Finetunes are early-stopped and chosen on it; the test split is only
  reported.
* `<domain>-train-sample.bin` (`purpose: "train_loss"`): a seeded random sample of whole
  documents of the domain train documents the mix draws from (a --domain-subset study's
  subset, else the whole split), about TRAIN_SAMPLE_TOKENS tokens. The domain train loss,
  whose difference from the test loss is the law's train-test gap, is scored on it. Every mix
  of a study drawn from one store and subset holds the same documents (NPT mixes included),
  and for SPT runs they are documents the run trained on.

Both are the documents as one stream, each ending in EOS, cut into (n, seq_len + 1) samples
with a one-token overlap (`stream_samples`), in the mix's dtype. The reader checks each
file's size and checksum against its record before any run reads it. Numpy only: trainer
adapters import this inside their training process.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mixer.formats.atomic import atomic_open
from mixer.formats.checksum import CHECKSUM, checksum_bytes, checksum_file
from mixer.formats.mix import MixFileError, MixFiles
from mixer.formats.store import Store

SELECTION, TRAIN_LOSS = "selection", "train_loss"
VAL_SPLIT = "val"
TRAIN_SAMPLE_TOKENS = 64_000  # the gap is a difference of two losses; 8K tokens of a few documents was noise
TRAIN_SAMPLE_SEED = 0
TRAIN_SAMPLE_SALT = 0x7A1_5A3  # keeps the sample's draws apart from any other seeded choice


def stream_samples(tokens: np.ndarray, seq_len: int) -> np.ndarray:
    """Tokens cut into (n, seq_len + 1) samples with a one-token overlap, in order (a copy)."""
    n = max(0, (len(tokens) - 1) // seq_len)
    idx = np.arange(n)[:, None] * seq_len + np.arange(seq_len + 1)[None, :]
    return np.asarray(tokens)[idx] if n else np.zeros((0, seq_len + 1), dtype=np.asarray(tokens).dtype)


def train_sample_documents(lengths: np.ndarray, documents: np.ndarray, tokens: int, seed: int) -> np.ndarray:
    """Store indices, ascending, of the sample's documents: `documents` (the store indices the
    mix draws from, `lengths` theirs) in the order of a permutation seeded with (seed, salt,
    len(documents)), the fewest whose lengths reach `tokens` (all of them if they do not)."""
    order = np.random.default_rng([seed, TRAIN_SAMPLE_SALT, len(documents)]).permutation(len(documents))
    k = min(len(documents), int(np.searchsorted(np.cumsum(lengths[order]), tokens, side="left")) + 1)
    return np.sort(documents[order[:k]])


def sample_digest(chosen: np.ndarray, store_name: str) -> str:
    """Names the sample's documents: equal digests, equal samples (12 hex digits of blake2b)."""
    return hashlib.blake2b(np.asarray(chosen, dtype="<i8").tobytes() + store_name.encode(), digest_size=6).hexdigest()


def _documents_text(store: Store, chosen: np.ndarray) -> np.ndarray:
    """The chosen train documents (ascending store indices), concatenated. Vectorized: one
    index array over the runs, no per-document copy."""
    ends = store.doc_ends("train").astype(np.int64)
    starts = np.concatenate([[0], ends[:-1]])
    lo, hi = starts[chosen], ends[chosen]
    lengths = hi - lo
    if not lengths.sum():
        return np.zeros(0, dtype=store.dtype)
    offsets = np.repeat(lo - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
    return np.asarray(store.tokens("train"))[np.arange(int(lengths.sum())) + offsets]


def _record(out: Path, name: str, purpose: str, source: str, split: str, samples: np.ndarray, **extra) -> dict:
    rel = f"eval/{name}.bin"
    data = np.ascontiguousarray(samples)
    with atomic_open(out / rel) as f:
        f.write(data.data)
    return {"name": name, "purpose": purpose, "file": rel, "source": source, "split": split,
            "samples": int(len(data)), **extra, CHECKSUM: checksum_bytes(data.data)}


def write_sample_sets(out: Path, store: Store | None, documents: np.ndarray | None, seq_len: int,
                      dtype: np.dtype) -> list[dict]:
    """Write the domain's sample sets into OUT/eval/ (atomically); their manifest records.

    `store` is the mix's domain store (None: no domain, no sets), `documents` the store
    indices of the train documents the mix draws from (None: all of them)."""
    if store is None:
        return []
    records = []
    if VAL_SPLIT in store.splits:
        tokens = np.asarray(store.tokens(VAL_SPLIT))
        val = stream_samples(tokens, seq_len).astype(dtype)
        records.append(_record(out, f"{store.name}-{VAL_SPLIT}", SELECTION, store.name, VAL_SPLIT, val,
                               documents=store.n_docs(VAL_SPLIT), tokens=int(len(tokens)),
                               tokens_dropped=int(len(tokens) - (len(val) * seq_len + 1 if len(val) else 0))))
    drawn = "subset" if documents is not None else "all"
    docs = np.arange(store.n_docs("train"), dtype=np.int64) if documents is None else np.asarray(documents, np.int64)
    if len(docs):
        chosen = train_sample_documents(store.doc_lengths("train")[docs], docs, TRAIN_SAMPLE_TOKENS, TRAIN_SAMPLE_SEED)
        text = _documents_text(store, chosen)
        sample = stream_samples(text, seq_len).astype(dtype)
        records.append(_record(out, f"{store.name}-train-sample", TRAIN_LOSS, store.name, "train", sample,
                               documents=int(len(chosen)), tokens=int(len(text)),
                               target_tokens=TRAIN_SAMPLE_TOKENS, seed=TRAIN_SAMPLE_SEED, drawn_from=drawn,
                               drawn_from_documents=int(len(docs)), digest=sample_digest(chosen, store.name)))
    return records


@dataclass(frozen=True)
class SampleSet:
    """One sample set of a mix, its samples checked against the manifest's record."""

    mix: MixFiles
    record: dict
    samples: np.ndarray  # (n, seq_len + 1), read-only memmap

    @property
    def name(self) -> str:
        return str(self.record["name"])

    @property
    def path(self) -> Path:
        return self.mix.path / self.record["file"]

    def describe(self) -> str:
        """What evals.jsonl's domain_train_sample records: `<documents> docs/<tokens> tokens/<digest>`."""
        r = self.record
        return f"{r['documents']} docs/{r['tokens']} tokens/{r['digest']}"


def sample_set(mix: MixFiles, purpose: str) -> SampleSet | None:
    """The mix's sample set for `purpose` (None when the mix has none: no domain, a domain
    store without a validation split, or a mix built before mixes held them), its file
    checked against the manifest's size and checksum."""
    records = mix.manifest.get("sample_sets") or []
    rec = next((r for r in records if isinstance(r, dict) and r.get("purpose") == purpose), None)
    if rec is None:
        return None
    try:
        f, n = mix.path / str(rec["file"]), int(rec["samples"])
        claimed = str(rec[CHECKSUM])
    except (KeyError, TypeError, ValueError):
        raise MixFileError(f"{mix.path / 'manifest.json'}: sample_sets record {rec!r} is incomplete") from None
    samples = mix._memmap(f, n)  # size checked there
    if checksum_file(f) != claimed:
        raise MixFileError(f"{f}: its bytes are not those the mix was built with (checksum differs from "
                           "manifest.json); rebuild the mix")
    return SampleSet(mix, rec, samples)


def has_sample_sets(mix: MixFiles) -> bool:
    """Whether the mix was built by a mixer that writes sample sets (older mixes lack the key)."""
    return "sample_sets" in mix.manifest
