"""Nothing half-written is ever visible: write under a temporary name, fsync, rename."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import IO, Any, Iterator


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open `path.tmp-<pid>` for writing; on success rename it over `path`, on error remove it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
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
    from mixer.errors import MixerError

    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise MixerError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
