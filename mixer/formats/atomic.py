"""Nothing half-written is ever visible: write under a temporary name, fsync, rename."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
from pathlib import Path
from typing import IO, Any, Iterator

from mixer.errors import MixerError


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open `.NAME.tmp-<host>-<pid>` for writing; on success rename it over `path`, on error remove it.

    Host and pid in the name: processes on several hosts may write into one folder, and
    a temporary file may be removed by another process only once its writer is dead
    (mixer.mixing.build.remove_stale_temporaries).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{socket.gethostname()}-{os.getpid()}")
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if isinstance(e, OSError) and e.filename is None:
            e.filename = str(path)  # a failed write() names no file; the one-line error should
        raise


def write_json(path: str | os.PathLike, data: Any) -> None:
    with atomic_open(path, "w") as f:
        json.dump(data, f, indent=2, sort_keys=False)
        f.write("\n")


def write_bytes(path: str | os.PathLike, data: bytes | memoryview) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def read_json(path: str | os.PathLike) -> Any:
    """JSON from a file, or a one-line MixerError naming the file and where it is broken."""
    try:
        return json.loads(Path(path).read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise MixerError(f"{path}: not UTF-8 text (byte {e.start}); not a file mixer wrote, or a damaged one") from None
    except json.JSONDecodeError as e:
        raise MixerError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None


def read_output(path: str | os.PathLike, accepted: str | tuple[str, ...], noun: str, command: str) -> dict:
    """A command's JSON output (fit.json, report.json): read_versioned, and a missing file
    named with the command that makes it (exit 2: a path the user gave is wrong)."""
    if not Path(path).is_file():
        raise MixerError(f"{path}: no such {noun}; make one with {command}", exit_code=2)
    return read_versioned(path, accepted, "file", f"; make one with {command}")


def write_versioned(folder: str | os.PathLike, name: str, data: dict, fmt: str) -> Path:
    """FOLDER/NAME written atomically, refusing content whose "format" is not `fmt`: the check
    every writer of a mixer JSON file makes on the way out, so no stage writes a file that
    mixer's readers refuse."""
    if data.get("format") != fmt:
        raise ValueError(f"{name}: format {data.get('format')!r}: not a {fmt} file")
    path = Path(folder) / name
    write_json(path, data)
    return path


def read_versioned(path: str | os.PathLike, accepted: str | tuple[str, ...], noun: str, hint: str = "",
                   error: type | None = None) -> dict:
    """A JSON object whose "format" is one of `accepted` (the first is the current version), or
    a one-line error (`error`, default MixerError) naming the file, what it is not and its
    format: the check every reader of a mixer JSON file makes, in one place."""
    accepted = (accepted,) if isinstance(accepted, str) else tuple(accepted)
    error = error or MixerError
    try:
        data = read_json(path)
    except MixerError as e:
        raise error(str(e)) from None
    if not isinstance(data, dict) or data.get("format") not in accepted:
        got = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise error(f"{path}: not a {accepted[0]} {noun} (format={got!r}){hint}")
    return data


# numpy parses a .npy header with ast.literal_eval, and CPython 3.11 can fail when several
# threads parse at once ("SystemError: AST constructor recursion depth mismatch",
# python/cpython#106905). mixer's local tasks are threads (build, audit, verify workers), so
# every .npy load goes through this lock; a mapped load holds it for the header only.
_NPY_HEADER = threading.Lock()


def load_npy(file: str | os.PathLike | IO[bytes], mmap_mode: str | None = None) -> Any:
    """np.load of one .npy file (a path or a binary file object), pickles refused, safe from
    any thread."""
    import numpy as np

    with _NPY_HEADER:
        return np.load(file, mmap_mode=mmap_mode, allow_pickle=False)
