"""A source's stream, written again from docs/formats.md ("Streams") for verify.

verify must not decide what is right with the code that built the mix (mixer/mixing/), or
a logic error there would be checked against itself. This module re-implements the
documented definition and nothing else:

  * the stream's documents: the store's train documents in store order, or the subset
    a recipe selects (`subset_documents`, and documents left out because earlier mixes
    touched them);
  * epoch e orders them by `numpy.random.default_rng([seed, crc32(name), e]).permutation(n)`;
  * the stream is the epochs end to end; sample k is stream[k L : k L + L + 1].

Tokens are compared in bulk: a sample range becomes a list of contiguous store runs
(`Stream.runs`), copied with one np.concatenate (long documents) or one np.take over a
per-token index (short ones), never a Python step per token.
"""

from __future__ import annotations

import zlib

import numpy as np

from mixer.formats.store import Store, lengths_u32


def source_key(name: str) -> int:
    """A source's key in every seed tuple: crc32 of its UTF-8 name."""
    return zlib.crc32(name.encode())


def epoch_order(seed: int, name: str, epoch: int, n_docs: int) -> np.ndarray:
    """Stream documents in the order epoch `epoch` reads them."""
    # Generator.permutation(n) is arange(n) shuffled in place; shuffling an int32 arange
    # draws the same numbers (they depend on n alone) in half the memory.
    order = np.arange(n_docs, dtype=np.int32 if n_docs < 2**31 else np.int64)
    np.random.default_rng([seed, source_key(name), epoch]).shuffle(order)
    return order


def subset_documents(lengths: np.ndarray, subset_seed: int, name: str, tokens: int) -> np.ndarray:
    """Store indices of the seeded domain subset of about `tokens` tokens, ascending: the
    shortest prefix of a seeded order whose length reaches `tokens` (at least one document)."""
    order = np.random.default_rng([subset_seed, source_key(name), 0x5B5E7]).permutation(len(lengths))
    reach = np.cumsum(np.asarray(lengths, dtype=np.int64)[order])
    m = int(np.searchsorted(reach, tokens, side="left")) + 1
    return np.sort(order[:m])


class Stream:
    """The stream of one source of a mix: its documents, their lengths and starts in the
    store, each epoch's order and where each document lands in the stream."""

    def __init__(self, store: Store, seed: int, seq_len: int, documents: np.ndarray | None = None) -> None:
        self.name, self.seed, self.seq_len = store.name, seed, seq_len
        ends = np.asarray(store.doc_ends("train"))  # a view of the memmap: the index stays on disk
        self.documents = None if documents is None else np.asarray(documents, dtype=np.int64)
        if self.documents is not None:
            ends = np.asarray(ends[self.documents]).astype(np.int64)
            starts = np.where(self.documents > 0, store.doc_ends("train")[np.maximum(self.documents - 1, 0)], 0)
            self.lengths = (ends - starts.astype(np.int64)).astype(np.uint32)
        else:
            self.lengths = lengths_u32(ends)
        self._ends = ends
        self.n_docs = len(self.lengths)
        self.epoch_tokens = int(self.lengths.sum(dtype=np.int64))
        self.tokens = np.asarray(store.tokens("train")) if store.n_tokens("train") else np.zeros(0, store.dtype)
        self._epochs = 0
        self._seg_doc = np.zeros(0, np.int32)
        self._seg_start = np.zeros(0, np.int64)
        self._seg_of = np.zeros(0, np.int64)

    def store_starts(self, docs: np.ndarray) -> np.ndarray:
        """Store offsets of stream documents `docs`."""
        return np.asarray(self._ends[docs]).astype(np.int64) - self.lengths[docs]

    # -- where every document lands ---------------------------------------------------

    def prepare(self, n_samples: int) -> None:
        """Lay out every epoch that samples 0..n_samples-1 touch, and the document where each
        sample starts (once, before worker threads read them)."""
        stream_tokens = n_samples * self.seq_len + 1 if n_samples else 0
        need = -(-stream_tokens // self.epoch_tokens) if self.epoch_tokens else 0
        if need > self._epochs:
            docs, starts = [self._seg_doc], [self._seg_start]
            for e in range(self._epochs, need):
                order = epoch_order(self.seed, self.name, e, self.n_docs)
                lens = self.lengths[order].astype(np.int64)
                docs.append(order)
                starts.append(np.cumsum(lens) - lens + e * self.epoch_tokens)
            self._seg_doc, self._seg_start, self._epochs = np.concatenate(docs), np.concatenate(starts), need
        # One search for all sample starts in order (sequential, cache-friendly), not one per
        # sample later: samples of a shard are scattered over the stream.
        self._seg_of = np.empty(n_samples + 1, dtype=np.int32 if len(self._seg_start) < 2**31 else np.int64)
        for a in range(0, n_samples + 1, 1 << 24):  # chunks: a 200B mix has ~100M samples
            starts = np.arange(a, min(n_samples + 1, a + (1 << 24)), dtype=np.int64) * self.seq_len
            self._seg_of[a : a + len(starts)] = np.searchsorted(self._seg_start, starts, side="right") - 1

    def runs(self, samples: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Contiguous store runs spelling each sample k, stream[k L : k L + L + 1], in order:
        (store offset, length, index of the sample, column within its row)."""
        k = np.asarray(samples, dtype=np.int64)
        s, width = k * self.seq_len, self.seq_len + 1
        first = self._seg_of[k].astype(np.int64)
        count = self._seg_of[k + 1] - first + 1  # the last token of sample k is the first of sample k + 1
        row = np.repeat(np.arange(len(k)), count)
        seg = np.arange(int(count.sum())) + np.repeat(first - (np.cumsum(count) - count), count)
        seg_lo, doc = self._seg_start[seg], self._seg_doc[seg]
        lo = np.maximum(seg_lo, s[row])
        hi = np.minimum(seg_lo + self.lengths[doc], s[row] + width)
        return self.store_starts(doc) + (lo - seg_lo), hi - lo, row, lo - s[row]

    # -- what a prefix of the stream holds --------------------------------------------

    def _prefix(self, stream_tokens: int) -> tuple[int, np.ndarray, int]:
        """(full epochs, stream documents whole in the partial epoch, 1 if one is cut by the end)."""
        full, rem = divmod(stream_tokens, self.epoch_tokens)
        if rem == 0:
            return full, np.zeros(0, np.int64), 0
        order = epoch_order(self.seed, self.name, full, self.n_docs)
        ends = np.cumsum(self.lengths[order], dtype=np.int64)
        whole = int(np.searchsorted(ends, rem, side="right"))
        return full, order[:whole].astype(np.int64), int(whole < self.n_docs and rem > (ends[whole - 1] if whole else 0))

    def passes(self, stream_tokens: int) -> np.ndarray:
        """Full passes over each stream document in stream[0 : stream_tokens]."""
        if stream_tokens <= 0 or self.epoch_tokens == 0:
            return np.zeros(self.n_docs, np.int64)
        full, whole, _ = self._prefix(stream_tokens)
        out = np.full(self.n_docs, full, np.int64)
        out[whole] += 1
        return out

    def histogram(self, stream_tokens: int) -> tuple[dict[str, int], int]:
        """({full passes: documents}, documents cut by the end of the stream)."""
        if stream_tokens <= 0 or self.epoch_tokens == 0:
            return ({"0": self.n_docs} if self.n_docs else {}), 0
        full, whole, cut = self._prefix(stream_tokens)
        hist = {str(full): self.n_docs - len(whole), str(full + 1): len(whole)}
        return {k: v for k, v in hist.items() if v}, cut

    def touched(self, stream_tokens: int) -> np.ndarray:
        """Store indices of the documents with any token in stream[0 : stream_tokens], ascending."""
        if stream_tokens <= 0 or self.epoch_tokens == 0:
            idx = np.zeros(0, np.int64)
        elif stream_tokens >= self.epoch_tokens:
            idx = np.arange(self.n_docs)
        else:
            _, whole, cut = self._prefix(stream_tokens)
            order = epoch_order(self.seed, self.name, 0, self.n_docs)
            idx = np.sort(order[: len(whole) + cut]).astype(np.int64)
        return self.documents[idx] if self.documents is not None else idx

    def epoch_starts(self, n_samples: int) -> list[int]:
        """Per epoch the stream's targets reach, the index of the first sample starting at or after it."""
        if self.epoch_tokens <= 0 or n_samples <= 0:
            return [0]
        epochs = -(-(n_samples * self.seq_len) // self.epoch_tokens)
        return [-(-(e * self.epoch_tokens) // self.seq_len) for e in range(epochs)]
