"""Input corpora -> datatrove Documents, strictly.

Inputs are globs, files or folders. A file is recognised by its first bytes, not only by
its name (Dolma ships JSON lines as `.json.gz`, people save them as `train.json`):

- JSON lines, one object per line: gzip or zstd magic bytes, or none, then `{` as the
  first non-blank character (`.jsonl`, `.json`, `.ndjson`, each also `.gz`, `.zst`);
- parquet (`PAR1`), e.g. a Hugging Face hub snapshot, whose files are symlinks to blobs;
- Arrow IPC, stream or file (`data-00000-of-00002.arrow`); a folder that `datasets`'
  `save_to_disk` wrote is read through its `state.json` (its list of arrow files; it and
  `dataset_info.json` are metadata, not data), and a DatasetDict is refused with its
  splits, since mixing them would put held-out data in training;
- plain text, one document per file: `.txt` (also `.gz`, `.zst`), a file named on its
  own, or, with `--text-files` (recipe: `text_files = true`), every file of a folder or
  glob that is none of the above. Without the flag such files (a README.md, a LICENSE)
  are an error that names them: a snapshot's README silently tokenized as a training
  document is worse. A `{` first still means JSON lines, whatever the name.

A name that promises a format the bytes do not have is an error too. Files are sorted by
path: that is the canonical order every store is written in.

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
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
import contextlib
from typing import Any, Iterator

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

JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
CODECS = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd"}
GZIP_MAGIC, ZSTD_MAGIC = b"\x1f\x8b", b"\x28\xb5\x2f\xfd"
PARQUET_MAGIC, ARROW_FILE_MAGIC, ARROW_STREAM_MAGIC = b"PAR1", b"ARROW1", b"\xff\xff\xff\xff"
BOM = b"\xef\xbb\xbf"
SNIFF_BYTES = 1 << 16
HF_STATE, HF_INFO, HF_DICT = "state.json", "dataset_info.json", "dataset_dict.json"
TABLE_ROWS = 4096  # rows of a parquet/arrow batch turned into Python strings at a time
MAX_REPORTED_SKIPS = 20
MAX_NAMED = 5  # files named in one error line


class BadRecord:
    """One unusable record; the reader turns it into an error or a counted skip."""

    def __init__(self, message: str) -> None:
        self.message = message

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class InputFile:
    path: str  # absolute
    kind: str  # jsonl | parquet | arrow | text
    label: str  # path relative to the inputs' common folder: used in default doc ids
    codec: str | None = None  # gzip | zstd: how a jsonl or text file is compressed


def _name_kind(path: str) -> tuple[str | None, str]:
    """The format a file's name promises (jsonl, parquet, arrow, text or None) and that suffix."""
    low = os.path.basename(path).lower()
    for suffix in CODECS:
        if low.endswith(suffix):
            low = low[: -len(suffix)]
    for suffix, kind in [(s, "jsonl") for s in JSONL_SUFFIXES] + [(".parquet", "parquet"), (".arrow", "arrow"),
                                                                   (".txt", "text")]:
        if low.endswith(suffix):
            return kind, suffix
    return None, ""


def sniff(path: str) -> tuple[str | None, str | None, bytes]:
    """What a file's first bytes say: (jsonl | parquet | arrow | empty | None, codec, first bytes).

    A compressed file's start is decompressed (a partial stream is fine: only the first
    non-blank character matters), so `.json.gz` and `.jsonl.zst` are told apart from
    compressed text by what they hold.
    """
    with open(path, "rb") as f:
        head = f.read(SNIFF_BYTES)
    if head.startswith(PARQUET_MAGIC):
        return "parquet", None, head[:8]
    if head.startswith((ARROW_FILE_MAGIC, ARROW_STREAM_MAGIC)):
        return "arrow", None, head[:8]
    codec = "gzip" if head.startswith(GZIP_MAGIC) else "zstd" if head.startswith(ZSTD_MAGIC) else None
    if codec:
        try:
            if codec == "gzip":
                head = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS).decompress(head, SNIFF_BYTES)
            else:
                import zstandard

                head = zstandard.ZstdDecompressor().decompressobj().decompress(head)[:SNIFF_BYTES]
        except Exception:  # noqa: BLE001 - zlib.error / ZstdError: corrupt; the reader names it
            return "corrupt", codec, head[:8]
    text = head.removeprefix(BOM).lstrip()
    if not text:
        return "empty", codec, b""
    return ("jsonl" if text[:1] == b"{" else None), codec, text[:8]


def classify(path: str, named: bool, text_files: bool) -> InputFile | None:
    """The InputFile for `path` (label left empty), or None: not a data file, and text is not wanted.

    `named`: the path was given on its own (no glob, no folder), so plain text is meant.
    """
    by_name, suffix = _name_kind(path)
    kind, codec, first = sniff(path)
    if kind == "corrupt":  # by its name, or as text; reading it gives the error with file and cause
        kind = by_name or "text"
    elif kind == "empty":  # no records either way (as text: one empty document, dropped and counted)
        if by_name in ("parquet", "arrow"):
            raise MixerError(f"{path}: named {suffix} but empty")
        kind = "text" if by_name == "text" or (by_name is None and (named or text_files)) else "jsonl"
    elif kind is None:
        if by_name == "jsonl":
            hint = " (a JSON array, not JSON lines)" if first[:1] == b"[" else ""
            raise MixerError(f"{path}: named {suffix} but does not start with '{{' like JSON lines: "
                             f"starts with {first!r}{hint}")
        if by_name in ("parquet", "arrow"):
            what = "a parquet" if by_name == "parquet" else "an Arrow IPC"
            raise MixerError(f"{path}: named {suffix} but is not {what} file (starts with {first!r})")
        if not (named or text_files or by_name == "text"):
            return None
        kind = "text"
    return InputFile(path, kind, "", codec)


def _state_files(folder: str) -> list[str] | None:
    """The arrow files of a `save_to_disk` folder, from its state.json (None: not such a folder)."""
    state = os.path.join(folder, HF_STATE)
    if not os.path.isfile(state) or not os.path.isfile(os.path.join(folder, HF_INFO)):
        return None
    try:
        files = [d["filename"] for d in json.loads(Path(state).read_text(encoding="utf-8"))["_data_files"]]
    except (ValueError, KeyError, TypeError) as e:
        raise MixerError(f"{state}: not a datasets state.json ({type(e).__name__}: {e})") from None
    missing = [f for f in files if not os.path.isfile(os.path.join(folder, f))]
    if missing:
        raise MixerError(f"{state}: lists {missing[0]}, which is not in {folder}")
    return [os.path.join(folder, f) for f in files]


def _files_under(folder: str) -> list[str]:
    out = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        if HF_DICT in files:
            splits = ", ".join(sorted(dirs)) or "none"
            raise UsageError(f"{root}: a datasets DatasetDict (splits: {splits}); give one split's folder, e.g. "
                             f"{os.path.join(root, sorted(dirs)[0]) if dirs else root}")
        out.extend(os.path.join(root, f) for f in files if not f.startswith("."))
    return out


def _metadata(path: str) -> bool:
    """A save_to_disk folder's own description, which is not data."""
    return os.path.basename(path) in (HF_STATE, HF_INFO) and _state_files(os.path.dirname(path)) is not None


# A dataset repository's own files (a hub snapshot's dataset card, its licence): never a
# corpus's documents, so a folder or glob skips them (with a note); named alone, they are read.
_REPO_FILE = re.compile(r"^(readme|license|licence|copying|notice|citation|authors|changelog)([._-].*)?$", re.I)


def list_inputs(patterns: list[str], flag: str = "--input", text_files: bool = False,
                text_flag: str = "--text-files", skipped: list[str] | None = None) -> list[InputFile]:
    """Expand globs/folders into the sorted, de-duplicated list of recognised input files.

    A pattern that matches nothing is an error (a typo must not give an empty store), and
    so are files that are no data file when plain text was not asked for (`text_flag`).
    A repository's README, LICENSE and the like found in a folder or glob are left out and
    named in `skipped`.
    """
    found: dict[str, bool] = {}  # path -> named on its own
    for pattern in patterns:
        expanded = os.path.expanduser(pattern)
        if glob.has_magic(expanded):
            matches = glob.glob(expanded, recursive=True)
            if not matches:
                raise UsageError(f"{flag} {pattern}: matches no files")
        elif os.path.lexists(expanded):
            matches = [expanded]
        else:
            raise UsageError(f"{flag} {pattern}: no such file or folder")
        for m in matches:
            if os.path.isdir(m):
                inside = _files_under(m)
                if not inside and not glob.has_magic(expanded):
                    raise UsageError(f"{flag} {pattern}: folder holds no files")
                found.update((os.path.abspath(f), False) for f in inside if os.path.abspath(f) not in found)
            elif os.path.isfile(m):
                named = m == expanded
                found[os.path.abspath(m)] = named or found.get(os.path.abspath(m), False)
            elif os.path.islink(m):
                raise MixerError(f"{m}: a broken symlink (an unfinished download?)")
    if not found:
        raise UsageError(f"{flag} {' '.join(patterns)}: matches no files")
    files, unknown, real = [], [], {}
    for path in sorted(found):
        if not found[path] and _metadata(path):
            continue
        if not found[path] and _REPO_FILE.match(os.path.basename(path)):
            if skipped is not None:
                skipped.append(path)
            continue
        if not os.path.exists(path):
            raise MixerError(f"{path}: a broken symlink (an unfinished download?)")
        same = real.setdefault(os.path.realpath(path), path)
        if same != path:
            raise MixerError(f"{same} and {path} are the same file (a symlink); give it once")
        f = classify(path, found[path], text_files)
        if f is None:
            unknown.append(path)
        else:
            files.append(f)
    if unknown:
        names = ", ".join(unknown[:MAX_NAMED]) + (f" and {len(unknown) - MAX_NAMED} more" if len(unknown) > MAX_NAMED
                                                  else "")
        raise UsageError(f"{flag}: {len(unknown)} file{'s are' if len(unknown) > 1 else ' is'} not JSON lines, "
                         f"parquet or Arrow: {names}; leave {'them' if len(unknown) > 1 else 'it'} out "
                         f"(a narrower glob), or use {text_flag} to read every such file as one text document")
    if not files:
        raise UsageError(f"{flag} {' '.join(patterns)}: matches only the metadata of a datasets folder")
    root = os.path.commonpath([os.path.dirname(f.path) for f in files])
    return [InputFile(f.path, f.kind, os.path.relpath(f.path, root), f.codec) for f in files]


def _open_binary(path: str, codec: str | None) -> io.BufferedIOBase:
    if codec == "gzip":
        return gzip.open(path, "rb")
    if codec == "zstd":
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


def _unreadable(f: InputFile, e: BaseException) -> MixerError:
    if type(e).__name__ == "ZstdError":
        return MixerError(f"{f.path}: corrupt zstd data ({e})")
    return MixerError(f"{f.path}: cannot read ({type(e).__name__}: {e}); is the file truncated?")


@contextlib.contextmanager
def _reading(f: InputFile) -> Iterator[None]:
    """A damaged input file (truncated, corrupt gzip or zstd) is one line naming it."""
    try:
        yield
    except MixerError:
        raise
    except (OSError, EOFError, ValueError) as e:
        raise _unreadable(f, e) from None
    except Exception as e:  # zstandard.ZstdError has no common base with OSError
        if type(e).__name__ == "ZstdError":
            raise _unreadable(f, e) from None
        raise


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
        self, files: list[InputFile], text_key: str, id_key: str, on_bad_record: str, report_dir: str,
        progress: str | None = None,
    ) -> None:
        super().__init__()
        self.files = files
        self.text_key = text_key
        self.id_key = id_key
        self.on_bad_record = on_bad_record
        self.report_dir = report_dir
        self.progress = progress  # a label: show a bar (the task runs in the command's own process)

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        from tqdm import tqdm

        report = {"rank": rank, "files": 0, "documents": 0, "empty": 0, "bad_records": 0, "skipped": [], "error": None}
        mine = range(rank, len(self.files), world_size)
        bar = tqdm(total=len(mine), desc=self.progress, unit=" files", disable=None if self.progress else True,
                   bar_format="{desc}: {n_fmt}/{total_fmt} files{postfix} [{elapsed}]")
        try:
            for index in mine:
                f = self.files[index]
                logger.info(f"reading {f.path} ({index + 1}/{len(self.files)})")
                self.stat_update("input_files")
                documents = empty = 0  # counted per file: datatrove's stat_update costs ~3 us a call
                try:
                    for text, doc_id in self._records(f, report):
                        if not text or text.isspace():  # as `not text.strip()`, without copying the text
                            empty += 1
                            continue
                        documents += 1
                        if documents % 4096 == 0:
                            bar.set_postfix_str(f"{report['documents'] + documents:,} documents", refresh=False)
                        yield Document(text=text, id=doc_id, metadata={"file": index})
                finally:
                    report["documents"] += documents
                    report["empty"] += empty
                    if documents:
                        self.stat_update("documents", value=documents)
                    if empty:
                        self.stat_update("dropped_empty", value=empty)
                report["files"] += 1
                bar.set_postfix_str(f"{report['documents']:,} documents", refresh=False)
                bar.update()
        except MixerError as e:
            # stop this task cleanly; the parent raises the message (see class doc)
            report["error"] = str(e)
        finally:
            bar.close()
            write_json(Path(self.report_dir) / f"reader-{rank:05d}.json", report)

    def _records(self, f: InputFile, report: dict) -> Iterator[tuple[str, str]]:
        # the format readers yield a BadRecord instead of raising it: a generator that
        # raises is finished, and a skipped record must not end its file
        readers = {"jsonl": self._jsonl, "parquet": self._parquet, "arrow": self._arrow, "text": self._text}
        for item in readers[f.kind](f):
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
        with _reading(f), _open_binary(f.path, f.codec) as fh:
            for lineno, line in enumerate(fh, 1):
                if lineno == 1:
                    line = line.removeprefix(BOM)
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

    def _columns(self, f: InputFile, names: list[str]) -> list[str]:
        if self.text_key not in names:
            raise MixerError(f"{f.path}: no column {self.text_key!r} (columns: {', '.join(names)}; set --text-key)")
        return [self.text_key] + ([self.id_key] if self.id_key in names else [])

    def _parquet(self, f: InputFile) -> Iterator[tuple[str, str] | BadRecord]:
        import pyarrow.parquet as pq

        try:
            pf = pq.ParquetFile(f.path)
        except Exception as e:  # pyarrow raises ArrowInvalid/OSError with a readable message
            raise MixerError(f"{f.path}: not a readable parquet file ({e})") from None
        columns = self._columns(f, pf.schema_arrow.names)
        yield from self._rows(f, pf.iter_batches(batch_size=TABLE_ROWS, columns=columns), columns)

    def _arrow(self, f: InputFile) -> Iterator[tuple[str, str] | BadRecord]:
        import pyarrow as pa
        import pyarrow.ipc as ipc

        try:
            with open(f.path, "rb") as fh:
                random_access = fh.read(len(ARROW_FILE_MAGIC)) == ARROW_FILE_MAGIC
            source = pa.OSFile(f.path)  # read, not mapped: a task holds one batch, not the file
            reader = ipc.open_file(source) if random_access else ipc.open_stream(source)
        except Exception as e:  # ArrowInvalid with a readable message
            raise MixerError(f"{f.path}: not a readable Arrow IPC file ({e})") from None
        columns = self._columns(f, reader.schema.names)
        batches = (reader.get_batch(i) for i in range(reader.num_record_batches)) if random_access else reader
        try:
            yield from self._rows(f, (b.select(columns) for b in batches), columns)
        except MixerError:
            raise
        except (OSError, ValueError, pa.ArrowException) as e:
            raise MixerError(f"{f.path}: cannot read Arrow data ({e}); is the file truncated?") from None
        finally:
            source.close()

    def _rows(self, f: InputFile, batches: Any, columns: list[str]) -> Iterator[tuple[str, str] | BadRecord]:
        """Records of a table's batches (text column first, then the id column if there is one)."""
        row = 0
        for batch in batches:
            for start in range(0, batch.num_rows, TABLE_ROWS):
                part = batch.slice(start, TABLE_ROWS)
                texts = part.column(0).to_pylist()
                ids = part.column(1).to_pylist() if len(columns) > 1 else [None] * len(texts)
                for text, doc_id in zip(texts, ids):
                    where = f"{f.path}:row {row}"
                    if text is not None and not isinstance(text, str):
                        yield BadRecord(f"{where}: {self.text_key!r} is a {type(text).__name__}, not a string")
                    else:
                        yield text or "", f"{f.label}:{row}" if doc_id is None else str(doc_id)
                    row += 1

    def _text(self, f: InputFile) -> Iterator[tuple[str, str] | BadRecord]:
        with _reading(f), _open_binary(f.path, f.codec) as fh:
            data = fh.read()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            yield _bad_utf8(data, f.path)
            return
        del data  # not held while the document is encoded (a 100 MB .txt)
        yield text, f.label
