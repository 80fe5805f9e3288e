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
    part-r.backend.json which library tokenized, how many documents the run check compared, or the mismatch

Why our own step rather than datatrove's `DocumentTokenizer` (measured at 0.63x raw
`encode_batch` here, see docs/benchmarks/tokenize.md): it asks for offsets
(`encode_batch`, not `encode_batch_fast`), packs every document with
`struct.pack(*tokens)` and issues one write per document, and appends EOS through a
TemplateProcessing post-processor. This step encodes without offsets, turns a whole
batch into one numpy array (EOS inserted by index arithmetic) and writes it at once.

Backends: HF `tokenizers`, or `tiktoken` where it reproduces the tokenizer.json exactly
(`mixer.ingest.tiktoken_backend`; ~2.5-3x faster). With tiktoken, a seeded sample of the
documents (CHECK_FIRST of each task, then one in CHECK_EVERY by text hash) is encoded by
HF too; one differing id stops the task, and the parent stops the run with one line.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import queue
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

import numpy as np
from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.utils.logging import logger

from mixer.errors import MixerError
from mixer.formats.atomic import atomic_open, write_json

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from mixer.ingest.tiktoken_backend import TiktokenEncoder

DOC_DTYPE = np.dtype([("file", "<u4"), ("length", "<u8"), ("hash", "<u8")])
BATCH_CHARS = 1 << 22  # characters per call to the tokenizer (~0.6 GB of its working memory)
REPORT_EVERY = 50_000_000  # tokens between progress lines in the task log
# the run check of the tiktoken backend: the first CHECK_FIRST documents of each task
# (a systematic difference shows at once), then those whose text hash picks them, one
# in CHECK_EVERY (~1% more HF work; independent of task count and batch size)
CHECK_FIRST = 64
CHECK_EVERY = 128
CHECK_SEED = 0x6D69786572636B31  # fixed: which documents are checked never depends on the split seed
# every character str.splitlines() breaks at: an id holding one would shift all later ids
_LINE_BREAKS = str.maketrans({c: " " for c in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"})


def clean_id(doc_id: object) -> str:
    return str(doc_id).translate(_LINE_BREAKS)


def part_name(rank: int) -> str:
    return f"part-{rank:05d}"


def join_with_eos(ids: Sequence[Sequence[int]], eos_id: int, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """Per-document ids (lists, or numpy arrays) -> (flat tokens with EOS after each document, lengths incl. EOS)."""
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids)) + 1
    total = int(lengths.sum())
    out = np.empty(total, dtype=dtype)
    eos_at = np.cumsum(lengths) - 1
    body = np.ones(total, dtype=bool)
    body[eos_at] = False
    if any(isinstance(x, np.ndarray) for x in ids):
        out[body] = np.concatenate([np.asarray(x, dtype=dtype) for x in ids]) if ids else np.zeros(0, dtype=dtype)
    else:
        out[body] = np.fromiter(itertools.chain.from_iterable(ids), dtype=dtype, count=total - len(ids))
    out[eos_at] = eos_id
    return out, lengths


def encode_ids(encode: "Callable[[list[str]], Sequence[Sequence[int]]]", texts: list[str], cuttable: bool
               ) -> list[Sequence[int]]:
    """Per-document ids, each call to `encode` given at most BATCH_CHARS characters: a
    tokenizer holds ~150 bytes per character while it encodes. A longer document is cut
    into pieces that encode to its exact ids when the pipeline allows it (`cuttable`, see
    mixer.ingest.safe_cuts; the tiktoken backend splits with the same regex), else it is
    encoded whole, in a call of its own."""
    out: list[list[Sequence[int]]] = [[] for _ in texts]
    for group in _groups(texts, cuttable):
        for (i, _), ids in zip(group, encode([t for _, t in group])):
            # a long document's pieces become arrays at once: a list of Python ints costs
            # ~36 bytes per token, ~1 GB for a 50 MB document
            out[i].append(np.asarray(ids, dtype=np.uint32) if len(texts[i]) > BATCH_CHARS else ids)
    return [p[0] if len(p) == 1 else np.concatenate(p) for p in out]


def encode_with_eos(tokenizer: "Tokenizer", texts: list[str], eos_id: int, dtype: np.dtype, cuttable: bool = False
                    ) -> tuple[np.ndarray, np.ndarray]:
    """HF ids of a batch, joined with EOS after each document (lengths include the EOS)."""
    return join_with_eos(encode_ids(lambda ts: hf_ids(tokenizer, ts), texts, cuttable), eos_id, dtype)


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


def checked_pieces(text: str, cuttable: bool) -> list[str]:
    """What the run check re-encodes with HF, piece by piece as the document was encoded:
    the text, or of a document longer than BATCH_CHARS its first pieces up to BATCH_CHARS
    characters, whose ids are the first of the document's. HF re-encoding all of a 100 MB
    document took longer than tiktoken did, and ~0.6 GB per BATCH_CHARS at once."""
    if not cuttable or len(text) <= BATCH_CHARS:
        return [text]
    from mixer.ingest.safe_cuts import pieces

    out, chars = [], 0
    for piece in pieces(text):
        if out and chars + len(piece) > BATCH_CHARS:
            break
        out.append(piece)
        chars += len(piece)
    return out


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


def hf_ids(tokenizer: "Tokenizer", texts: list[str]) -> list[list[int]]:
    return [e.ids for e in tokenizer.encode_batch_fast(texts, add_special_tokens=False)]


def check_mask(hashes: np.ndarray, first: int) -> np.ndarray:
    """Which documents of a batch the run check re-encodes with HF (`first`: how many of
    the task's first CHECK_FIRST documents are in this batch)."""
    with np.errstate(over="ignore"):
        mixed = (hashes.astype(np.uint64) ^ np.uint64(CHECK_SEED)) * np.uint64(0x9E3779B97F4A7C15)
    pick = (mixed >> np.uint64(32)) % np.uint64(CHECK_EVERY) == 0
    pick[:first] = True
    return pick


class BackendMismatch(MixerError):
    """tiktoken and HF gave different ids for a document: the run must not go on with tiktoken."""


def compare(fast: list[np.ndarray], reference: list[list[int]], doc_ids: list[str], path: str) -> None:
    for got, want, doc_id in zip(fast, reference, doc_ids):
        if len(got) != len(want) or not np.array_equal(got, want):
            n = min(len(got), len(want))
            differ = np.flatnonzero(np.asarray(got[:n], dtype=np.int64) != np.asarray(want[:n], dtype=np.int64))
            at = int(differ[0]) if len(differ) else n
            raise BackendMismatch(
                f"--tokenizer {path}: tiktoken and HF tokenizers give different ids for document {doc_id!r} "
                f"({len(got)} vs {len(want)} tokens, first difference at token {at}); re-run with "
                "--tokenizer-backend hf"
            )


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
        backend: str = "hf",
    ) -> None:
        super().__init__()
        self.tokenizer_path = tokenizer_path
        self.eos_id = eos_id
        self.dtype = dtype
        self.parts_dir = parts_dir
        self.with_minhash = with_minhash
        self.batch_size = batch_size
        self.rayon_threads = rayon_threads
        self.backend = backend

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

    def _load_fast(self) -> "TiktokenEncoder | None":
        """The tiktoken encoder when that backend was chosen (same thread budget as rayon's)."""
        if self.backend != "tiktoken":
            return None
        from mixer.ingest.tiktoken_backend import TiktokenEncoder, load_spec

        return TiktokenEncoder(load_spec(self.tokenizer_path), self.rayon_threads or len(os.sched_getaffinity(0)),
                               self.eos_id)

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        from mixer.ingest.safe_cuts import cuttable

        tokenizer = self._load_tokenizer()
        self._can_cut = cuttable(json.loads(tokenizer.to_str()))
        fast = self._load_fast()
        report = {"rank": rank, "backend": self.backend, "checked_documents": 0, "checked_tokens": 0, "error": None}
        try:
            self._write_parts(data, rank, tokenizer, fast, report)
        except BackendMismatch as e:
            # the parts were discarded (never renamed into place); the parent raises the line
            report["error"] = str(e)
        write_json(Path(self.parts_dir) / f"{part_name(rank)}.backend.json", report)
        yield from ()  # a generator, as datatrove's steps are; this last step passes nothing on

    def _report_forced_cuts(self, batch: list, report: dict) -> None:
        """Log each document encoded with forced cuts (mixer.ingest.safe_cuts.pieces): its ids
        differ from a whole encoding near them."""
        from mixer.ingest.safe_cuts import forced_cuts

        for d in batch:
            if len(d.text) > BATCH_CHARS and (n := forced_cuts(d.text)):
                report["forced_cuts"] = report.get("forced_cuts", 0) + n
                logger.warning(f"document {clean_id(d.id)!r}: {len(d.text):,} characters with runs that cannot be "
                               f"cut exactly; encoded in pieces with {n} forced cuts (ids may differ from a whole "
                               "encoding by a token or two at each)")

    def _write_parts(
        self, data: DocumentsPipeline, rank: int, tokenizer: "Tokenizer", fast: "TiktokenEncoder | None", report: dict
    ) -> None:
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
                    texts = [d.text for d in batch]
                    table = np.empty(len(batch), dtype=DOC_DTYPE)
                    table["file"] = [d.metadata["file"] for d in batch]
                    table["hash"] = [d.metadata["hash"] for d in batch]
                    hf = lambda ts: hf_ids(tokenizer, ts)  # noqa: E731
                    joined = None
                    longest = max(map(len, texts))
                    if fast is not None and longest <= BATCH_CHARS:
                        joined = fast.encode_with_eos(texts, dtype)
                    if longest > BATCH_CHARS and self._can_cut:
                        self._report_forced_cuts(batch, report)
                    if joined is not None:  # the whole batch in a few Rust calls, EOS in place
                        tokens, lengths = joined
                        ends = np.cumsum(lengths) - 1
                        ids_of = lambda i: tokens[ends[i] - lengths[i] + 1 : ends[i]]  # noqa: E731
                    else:
                        ids = encode_ids(hf if fast is None else fast.encode, texts, self._can_cut)
                        tokens, lengths = join_with_eos(ids, self.eos_id, dtype)
                        ids_of = ids.__getitem__
                    if fast is not None:
                        pick = np.flatnonzero(check_mask(table["hash"], max(0, CHECK_FIRST - documents)))
                        if len(pick):
                            sample = [checked_pieces(texts[i], self._can_cut) for i in pick]
                            flat = encode_ids(hf, [p for ps in sample for p in ps], False)
                            upto = np.cumsum([len(ps) for ps in sample]).tolist()
                            want = [flat[e - 1] if len(ps) == 1 else np.concatenate(flat[e - len(ps) : e])
                                    for e, ps in zip(upto, sample)]
                            compare([ids_of(i)[: len(w)] for i, w in zip(pick, want)], want,
                                    [batch[i].id for i in pick], self.tokenizer_path)
                            report["checked_documents"] += len(pick)
                            report["checked_tokens"] += sum(map(len, want))
                    table["length"] = lengths
                    tokens_out.write(memoryview(tokens))
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
