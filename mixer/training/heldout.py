"""Samples mixer scores runs on that a mix does not hold: the domain validation split, on
which finetunes are early-stopped and their configuration chosen (the test split is only
reported), and a seeded random sample of the domain train split for the train-test gap.

Both are read from the domain's token store (the mix's manifest names it) and laid out as
a mix's held-out sets are: the documents as one stream, each ending in EOS, cut into
(n, seq_len + 1) samples with a one-token overlap, so every run of a study with one
seq_len is scored on identical tokens.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mixer.errors import MixerError
from mixer.formats.atomic import atomic_open
from mixer.formats.mix import MixFiles
from mixer.formats.store import Store, open_store

VAL_SPLIT = "val"
TRAIN_SAMPLE_SALT = 0x7A1_5A3  # keeps the train sample's draws apart from any other seeded choice
DEFAULT_TRAIN_TOKENS = 64_000  # 64K: the gap is a difference of two losses; 8K tokens of a few documents was noise


def stream_samples(tokens: np.ndarray, seq_len: int) -> np.ndarray:
    """Tokens cut into (n, seq_len + 1) samples with a one-token overlap, in order (a copy)."""
    n = max(0, (len(tokens) - 1) // seq_len)
    idx = np.arange(n)[:, None] * seq_len + np.arange(seq_len + 1)[None, :]
    return np.asarray(tokens)[idx] if n else np.zeros((0, seq_len + 1), dtype=np.asarray(tokens).dtype)


def domain_store(mix: MixFiles) -> Store | None:
    """The token store of the mix's domain source (None: no domain, or the store is gone)."""
    src = mix.source("domain")
    if src is None or not src.get("store"):
        return None
    path = Path(src["store"])
    try:
        return open_store(path.parent, path.name)
    except MixerError:
        return None


def domain_val(mix: MixFiles) -> tuple[str, np.ndarray] | None:
    """("<domain>-val", samples) of the domain store's validation split; None without one."""
    store = domain_store(mix)
    if store is None or VAL_SPLIT not in store.splits:
        return None
    samples = stream_samples(np.asarray(store.tokens(VAL_SPLIT)), mix.seq_len).astype(mix.dtype)
    return (f"{store.name}-{VAL_SPLIT}", samples) if len(samples) else None


def require_domain_val(mix: MixFiles) -> tuple[str, np.ndarray]:
    """The domain validation samples, or a one-line error saying how to get them."""
    got = domain_val(mix)
    if got is not None:
        return got
    store = domain_store(mix)
    where = store.path if store is not None else f"{mix.path}: its domain store"
    raise MixerError(f"{where}: no domain validation split to select the finetune on (stores made before "
                     "train/val/test splits hold train/test only); re-tokenize the domain, or pass --select-on test "
                     "(the paper's protocol: select and report on the test split)")


def write_samples(path: Path, samples: np.ndarray) -> Path:
    """(n, seq_len + 1) samples as a raw C-order file, as a mix's eval/*.bin (atomically)."""
    with atomic_open(path) as f:
        f.write(np.ascontiguousarray(samples).data)
    return path


@dataclass(frozen=True)
class TrainSample:
    samples: np.ndarray
    documents: int
    tokens: int
    digest: str  # identifies the documents: equal digests, equal samples

    def describe(self) -> str:
        return f"{self.documents} docs/{self.tokens} tokens/{self.digest}"


def domain_train_sample(mix_chain: list[MixFiles], tokens: int = DEFAULT_TRAIN_TOKENS,
                        seed: int = 0) -> TrainSample | None:
    """A seeded random sample of whole documents from the domain train split, about `tokens`
    tokens, drawn from the documents the chain's domain data comes from (a --domain-subset
    study's subset, else the whole split): every run of a study that shares that subset is
    scored on the same documents, NPT runs included, and for SPT runs they are documents the
    run trained on. The documents keep their store order. None without a domain store."""
    for mix in mix_chain:
        store = domain_store(mix)
        if store is not None:
            break
    else:
        return None
    docs = _domain_documents(mix_chain, store)
    lengths = store.doc_lengths("train")[docs]
    if not len(docs):
        return None
    order = np.random.default_rng([seed, TRAIN_SAMPLE_SALT, len(docs)]).permutation(len(docs))
    k = min(len(docs), int(np.searchsorted(np.cumsum(lengths[order]), tokens, side="left")) + 1)
    chosen = np.sort(docs[order[:k]])
    ends = store.doc_ends("train").astype(np.int64)
    starts = np.concatenate([[0], ends[:-1]])
    flat = np.asarray(store.tokens("train"))
    text = np.concatenate([flat[starts[i] : ends[i]] for i in chosen])
    seq = mix_chain[0].seq_len
    samples = stream_samples(text, seq).astype(mix_chain[0].dtype)
    digest = hashlib.blake2b(chosen.astype("<i8").tobytes() + store.name.encode(), digest_size=6).hexdigest()
    return TrainSample(samples, int(k), int(len(text)), digest)


def _domain_documents(mix_chain: list[MixFiles], store: Store) -> np.ndarray:
    """Store indices of the documents the chain's domain stream draws from."""
    from mixer.mixing.spec import plan_from_manifest

    for mix in mix_chain:
        src = mix.source("domain")
        if src is None or src.get("documents") != "subset" or src.get("name") != store.name:
            continue  # a chain can change domain (a new task after post-training)
        try:
            plan = plan_from_manifest(mix.manifest)
        except MixerError:
            continue
        stream = plan.domain.stream if plan.domain is not None else None
        if stream is not None and stream.documents is not None:
            return np.asarray(stream.documents, dtype=np.int64)
    return np.arange(store.n_docs("train"), dtype=np.int64)
