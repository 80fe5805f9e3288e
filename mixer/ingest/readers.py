"""Input corpora -> datatrove Documents, strictly.

Inputs are globs, files or folders: `.jsonl`, `.jsonl.gz`, `.jsonl.zst` (one JSON object
per line), `.parquet`, and any other file is one plain-text document (so a folder of
`.v` or `.rst.txt` files is a corpus). Files are sorted by path: that is the canonical
order every store is written in.

Why not datatrove's stock `JsonlReader`/`ParquetReader`: they log and skip a malformed
line, stop a file silently at the first invalid UTF-8 byte, and drop records without the
text key as "empty". A token store is the record of a study, so each of those must be
either an error naming file:line or a counted skip (`--on-bad-record`). `SourceReader`
is still a datatrove `PipelineStep` (stats, executors, task sharding by file).
"""

from __future__ import annotations

import glob
import gzip
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.utils.logging import logger

from mixer.formats.atomic import write_json
from mixer.errors import MixerError, UsageError

try:  # orjson is ~5x faster on big corpora; the stdlib parser gives the same answers
    import orjson

    _loads = orjson.loads
    _JSONError: tuple[type[Exception], ...] = (orjson.JSONDecodeError,)
except ImportError:  # pragma: no cover - orjson ships with datatrove's io extra
    _loads = json.loads
    _JSONError = (json.JSONDecodeError, UnicodeDecodeError)

JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".jsonl.zstd", ".ndjson")
MAX_REPORTED_SKIPS = 20


class BadRecord:
    """One unusable record; the reader turns it into an error or a counted skip."""

    def __init__(self, message: str) -> None:
        self.message = message

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class InputFile:
    path: str  # absolute
    kind: str  # jsonl | parquet | text
    label: str  # path relative to the inputs' common folder: used in default doc ids


def _kind(path: str) -> str:
    low = path.lower()
    if low.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if low.endswith(".parquet"):
        return "parquet"
    return "text"


def _files_under(folder: str) -> list[str]:
    out = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        out.extend(os.path.join(root, f) for f in files if not f.startswith("."))
    return out


def list_inputs(patterns: list[str], flag: str = "--input") -> list[InputFile]:
    """Expand globs/folders into the sorted, de-duplicated list of input files.

    A pattern that matches nothing is an error (a typo must not give an empty store).
    """
    found: set[str] = set()
    for pattern in patterns:
        expanded = os.path.expanduser(pattern)
        if glob.has_magic(expanded):
            matches = glob.glob(expanded, recursive=True)
            if not matches:
                raise UsageError(f"{flag} {pattern}: matches no files")
        elif os.path.exists(expanded):
            matches = [expanded]
        else:
            raise UsageError(f"{flag} {pattern}: no such file or folder")
        for m in matches:
            if os.path.isdir(m):
                inside = _files_under(m)
                if not inside and not glob.has_magic(expanded):
                    raise UsageError(f"{flag} {pattern}: folder holds no files")
                found.update(os.path.abspath(f) for f in inside)
            elif os.path.isfile(m):
                found.add(os.path.abspath(m))
    if not found:
        raise UsageError(f"{flag} {' '.join(patterns)}: matches no files")
    paths = sorted(found)
    root = os.path.commonpath([os.path.dirname(p) for p in paths])
    return [InputFile(p, _kind(p), os.path.relpath(p, root)) for p in paths]


def _open_binary(path: str) -> io.BufferedIOBase:
    low = path.lower()
    if low.endswith(".gz"):
        return gzip.open(path, "rb")
    if low.endswith((".zst", ".zstd")):
        import zstandard

        raw = open(path, "rb")
        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw, closefd=True), 1 << 20)
    return open(path, "rb", buffering=1 << 20)


def _bad_utf8(data: bytes, where: str) -> BadRecord | None:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        return BadRecord(f"{where}: not valid UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start})")
    return None


class SourceReader(PipelineStep):
    """Read this rank's share of the input files (every world_size-th, in sorted order).

    Yields Documents with `metadata["file"]` = the file's index in the sorted input list.
    Empty documents (nothing but whitespace) are dropped and counted. A bad record is
    an error (`on_bad_record="fail"`: the task stops and reports file:line) or a counted
    skip. The outcome goes to `reader-<rank>.json` in `report_dir` so the parent process
    can raise one clean error line rather than a worker traceback.
    """

    name = "mixer source reader"
    type = "📖 - READER"

    def __init__(
        self, files: list[InputFile], text_key: str, id_key: str, on_bad_record: str, report_dir: str
    ) -> None:
        super().__init__()
        self.files = files
        self.text_key = text_key
        self.id_key = id_key
        self.on_bad_record = on_bad_record
        self.report_dir = report_dir

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        report = {"rank": rank, "files": 0, "documents": 0, "empty": 0, "bad_records": 0, "skipped": [], "error": None}
        try:
            for index in range(rank, len(self.files), world_size):
                f = self.files[index]
                logger.info(f"reading {f.path} ({index + 1}/{len(self.files)})")
                self.stat_update("input_files")
                for text, doc_id in self._records(f, report):
                    if not text.strip():
                        report["empty"] += 1
                        self.stat_update("dropped_empty")
                        continue
                    report["documents"] += 1
                    self.stat_update("documents")
                    yield Document(text=text, id=doc_id, metadata={"file": index})
                report["files"] += 1
        except MixerError as e:
            # stop this task cleanly; the parent raises the message (see class doc)
            report["error"] = str(e)
        finally:
            write_json(Path(self.report_dir) / f"reader-{rank:05d}.json", report)

    def _records(self, f: InputFile, report: dict) -> Iterator[tuple[str, str]]:
        # the format readers yield a BadRecord instead of raising it: a generator that
        # raises is finished, and a skipped record must not end its file
        for item in {"jsonl": self._jsonl, "parquet": self._parquet, "text": self._text}[f.kind](f):
            if not isinstance(item, BadRecord):
                yield item
                continue
            if self.on_bad_record == "fail":
                raise MixerError(f"{item} (use --on-bad-record skip to drop such records)")
            report["bad_records"] += 1
            self.stat_update("bad_records")
            if len(report["skipped"]) < MAX_REPORTED_SKIPS:
                report["skipped"].append(str(item))

    def _record(self, obj: object, where: str, default_id: str) -> tuple[str, str] | BadRecord:
        if not isinstance(obj, dict):
            return BadRecord(f"{where}: not a JSON object")
        if self.text_key not in obj:
            keys = ", ".join(list(map(str, obj))[:8]) or "none"
            return BadRecord(f"{where}: no key {self.text_key!r} (keys: {keys}; set --text-key)")
        text = obj[self.text_key]
        if text is None:
            text = ""
        if not isinstance(text, str):
            return BadRecord(f"{where}: {self.text_key!r} is a {type(text).__name__}, not a string")
        doc_id = obj.get(self.id_key)
        return text, default_id if doc_id is None else str(doc_id)

    def _jsonl(self, f: InputFile) -> Iterator[tuple[str, str] | BadRecord]:
        try:
            with _open_binary(f.path) as fh:
                for lineno, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    where = f"{f.path}:{lineno}"
                    try:
                        obj = _loads(line)  # orjson rejects invalid UTF-8 too
                    except _JSONError as e:
                        # name bad bytes precisely; check only on failure, the hot path parses once
                        yield _bad_utf8(line, where) or BadRecord(f"{where}: malformed JSON ({str(e).splitlines()[0]})")
                        continue
                    yield self._record(obj, where, f"{f.label}:{lineno}")
        except MixerError:
            raise
        except (OSError, EOFError, ValueError) as e:
            raise MixerError(f"{f.path}: cannot read ({type(e).__name__}: {e}); is the file truncated?") from None
        except Exception as e:  # zstandard.ZstdError has no common base with OSError
            if type(e).__name__ == "ZstdError":
                raise MixerError(f"{f.path}: corrupt zstd data ({e})") from None
            raise

    def _parquet(self, f: InputFile) -> Iterator[tuple[str, str] | BadRecord]:
        import pyarrow.parquet as pq

        try:
            pf = pq.ParquetFile(f.path)
        except Exception as e:  # pyarrow raises ArrowInvalid/OSError with a readable message
            raise MixerError(f"{f.path}: not a readable parquet file ({e})") from None
        names = pf.schema_arrow.names
        if self.text_key not in names:
            raise MixerError(f"{f.path}: no column {self.text_key!r} (columns: {', '.join(names)}; set --text-key)")
        columns = [self.text_key] + ([self.id_key] if self.id_key in names else [])
        row = 0
        for batch in pf.iter_batches(batch_size=4096, columns=columns):
            texts = batch.column(0).to_pylist()
            ids = batch.column(1).to_pylist() if len(columns) > 1 else [None] * len(texts)
            for text, doc_id in zip(texts, ids):
                where = f"{f.path}:row {row}"
                if text is not None and not isinstance(text, str):
                    yield BadRecord(f"{where}: {self.text_key!r} is a {type(text).__name__}, not a string")
                else:
                    yield text or "", f"{f.label}:{row}" if doc_id is None else str(doc_id)
                row += 1

    def _text(self, f: InputFile) -> Iterator[tuple[str, str] | BadRecord]:
        with open(f.path, "rb") as fh:
            data = fh.read()
        yield _bad_utf8(data, f.path) or (data.decode("utf-8"), f.label)
