"""The tokenizing task: documents -> one part (tokens + per-document table) per rank.

Parts hold *all* documents of the rank's files in file order, not yet split: the split
needs a global view (the held-out size in tokens, near-duplicate clusters across files),
so it is decided in the single-process merge (`mixer.ingest.merge`), which also puts
documents in canonical order. Changing the seed or the held-out size therefore never
re-tokenizes.

Files of part `r` (in WORK/parts/):
    part-r.ds           tokens, store dtype, every document followed by EOS
    part-r.docs         one DOC_DTYPE record per document: input file index, length in tokens (with EOS), text hash
    part-r.ids          document ids, one per line (line breaks inside ids become spaces)
    part-r.minhash      (documents, NUM_PERM) uint32 MinHash signatures, when near-duplicates are on

Why our own step rather than datatrove's `DocumentTokenizer` (measured at 0.63x raw
`encode_batch` here, see docs/benchmarks/tokenize.md): it asks for offsets
(`encode_batch`, not `encode_batch_fast`), packs every document with
`struct.pack(*tokens)` and issues one write per document, and appends EOS through a
TemplateProcessing post-processor. This step encodes without offsets, turns a whole
batch into one numpy array (EOS inserted by index arithmetic) and writes it at once.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import queue
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np
from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.utils.logging import logger

from mixer.formats.atomic import atomic_open

if TYPE_CHECKING:
    from tokenizers import Tokenizer

DOC_DTYPE = np.dtype([("file", "<u4"), ("length", "<u8"), ("hash", "<u8")])
BATCH_CHARS = 1 << 22  # characters per call to the tokenizer (~0.6 GB of its working memory)
REPORT_EVERY = 50_000_000  # tokens between progress lines in the task log
# every character str.splitlines() breaks at: an id holding one would shift all later ids
_LINE_BREAKS = str.maketrans({c: " " for c in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"})


def clean_id(doc_id: object) -> str:
    return str(doc_id).translate(_LINE_BREAKS)


def part_name(rank: int) -> str:
    return f"part-{rank:05d}"


def encode_with_eos(
    tokenizer: "Tokenizer", texts: list[str], eos_id: int, dtype: np.dtype, cuttable: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Encode a batch; return (flat tokens with EOS after each document, lengths incl. EOS).

    Each call to the tokenizer gets at most BATCH_CHARS characters: it holds ~150 bytes per
    character while it encodes. A longer document is cut into pieces that encode to its
    exact tokens when the tokenizer allows it (`cuttable`, see mixer.ingest.safe_cuts),
    else it is encoded whole, in a call of its own.
    """
    lengths = np.ones(len(texts), dtype=np.int64)
    bodies = []
    for group in _groups(texts, cuttable):
        ids = [e.ids for e in tokenizer.encode_batch_fast([t for _, t in group], add_special_tokens=False)]
        counts = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        np.add.at(lengths, [i for i, _ in group], counts)
        bodies.append(np.fromiter(itertools.chain.from_iterable(ids), dtype=dtype, count=int(counts.sum())))
    total = int(lengths.sum())
    out = np.empty(total, dtype=dtype)
    eos_at = np.cumsum(lengths) - 1
    body = np.ones(total, dtype=bool)
    body[eos_at] = False
    out[body] = np.concatenate(bodies) if bodies else np.zeros(0, dtype=dtype)
    out[eos_at] = eos_id
    return out, lengths


def _groups(texts: list[str], cuttable: bool) -> Iterator[list[tuple[int, str]]]:
    """(document index, text or piece) in order, in groups of at most BATCH_CHARS characters."""
    from mixer.ingest.safe_cuts import pieces

    group: list[tuple[int, str]] = []
    chars = 0
    for i, text in enumerate(texts):
        for piece in pieces(text) if cuttable and len(text) > BATCH_CHARS else (text,):
            if group and chars + len(piece) > BATCH_CHARS:
                yield group
                group, chars = [], 0
            group.append((i, piece))
            chars += len(piece)
    if group:
        yield group


def char_batches(docs: Iterator, size: int) -> Iterator[list]:
    """Documents in batches of `size`, or fewer once they hold BATCH_CHARS characters."""
    batch: list = []
    chars = 0
    for doc in docs:
        batch.append(doc)
        chars += len(doc.text)
        if len(batch) >= size or chars >= BATCH_CHARS:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def prefetched(batches: Iterator[list], depth: int = 2) -> Iterator[list]:
    """Pull batches from the upstream steps in a background thread.

    Reading, JSON parsing, split hashing and MinHash are Python (GIL held); encoding is
    Rust with the GIL released. Run one after the other, one core idles while Python
    works and rayon's threads idle at the ragged end of every batch; with the upstream
    steps in their own thread the two overlap. Errors upstream are re-raised here.
    """
    box: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                box.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for batch in batches:
                if not put(batch):
                    return
            put(done)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer thread, raised there
            put(_Failure(e))

    worker = threading.Thread(target=produce, name="mixer-prefetch", daemon=True)
    worker.start()
    try:
        while (item := box.get()) is not done:
            if isinstance(item, _Failure):
                raise item.error
            yield item
    finally:
        stop.set()
        worker.join()


class TokenizeParts(PipelineStep):
    """Tokenize this rank's documents and write its part files (see module doc)."""

    name = "mixer tokenizer"
    type = "🔢 - TOKENIZER"

    def __init__(
        self,
        tokenizer_path: str,
        eos_id: int,
        dtype: str,
        parts_dir: str,
        with_minhash: bool,
        batch_size: int = 1024,
        rayon_threads: int | None = None,
    ) -> None:
        super().__init__()
        self.tokenizer_path = tokenizer_path
        self.eos_id = eos_id
        self.dtype = dtype
        self.parts_dir = parts_dir
        self.with_minhash = with_minhash
        self.batch_size = batch_size
        self.rayon_threads = rayon_threads

    def _load_tokenizer(self) -> "Tokenizer":
        # Loaded here, inside the task, never in the parent: a tokenizer whose thread pool
        # was used before a fork() turns parallelism off in the child (or deadlocks when
        # forced on). datatrove's local executor starts workers with "forkserver" (fresh
        # processes), and with several workers per machine we cap each worker's rayon pool
        # so workers x threads = cores instead of oversubscribing.
        if self.rayon_threads:
            os.environ["RAYON_NUM_THREADS"] = str(self.rayon_threads)
        from tokenizers import Tokenizer

        return Tokenizer.from_file(self.tokenizer_path)

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        from mixer.ingest.safe_cuts import cuttable

        tokenizer = self._load_tokenizer()
        can_cut = cuttable(json.loads(tokenizer.to_str()))
        dtype = np.dtype(self.dtype)
        base = Path(self.parts_dir) / part_name(rank)
        documents = tokens_written = 0
        next_report = REPORT_EVERY
        # every output streams to disk (a part may hold millions of documents) under a
        # temporary name; all four appear together when the task ends
        with contextlib.ExitStack() as stack:
            tokens_out = stack.enter_context(atomic_open(base.with_suffix(".ds"), "wb"))
            docs_out = stack.enter_context(atomic_open(base.with_suffix(".docs"), "wb"))
            ids_out = stack.enter_context(atomic_open(base.with_suffix(".ids"), "wb"))
            sig_out = stack.enter_context(atomic_open(base.with_suffix(".minhash"), "wb")) if self.with_minhash else None
            for batch in prefetched(char_batches(data or [], self.batch_size)):
                with self.track_time(unit="batch"):
                    tokens, lengths = encode_with_eos(tokenizer, [d.text for d in batch], self.eos_id, dtype, can_cut)
                    tokens_out.write(memoryview(tokens))
                    table = np.empty(len(batch), dtype=DOC_DTYPE)
                    table["file"] = [d.metadata["file"] for d in batch]
                    table["hash"] = [d.metadata["hash"] for d in batch]
                    table["length"] = lengths
                    docs_out.write(memoryview(table).cast("B"))
                    ids_out.write("".join(clean_id(d.id) + "\n" for d in batch).encode("utf-8"))
                    if sig_out is not None:
                        sig_out.write(memoryview(np.ascontiguousarray(np.stack([d.metadata["minhash"] for d in batch]))))
                documents += len(batch)
                tokens_written += len(tokens)
                self.stat_update("documents", value=len(batch))
                self.stat_update("tokens", value=len(tokens))
                if tokens_written >= next_report:
                    logger.info(f"rank {rank}: {documents:,} documents, {tokens_written:,} tokens")
                    next_report += REPORT_EVERY
        yield from ()  # a generator, as datatrove's steps are; this last step passes nothing on
