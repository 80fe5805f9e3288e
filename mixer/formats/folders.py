"""Which folders mixer may fill or replace: only its own.

Every command that writes a whole folder (a token store, a mix, a run, a report, a fit, the
audit's work folder) first asks `claim_folder`: the folder must be absent, empty, or
marked as mixer's output of that kind by its own record file (store.json, run.json, ...,
whose `format` names mixer). Anything else is refused in one line before anything is
written or deleted, with or without --force: --force replaces mixer outputs only. A
user who types `--stores ~ --source Documents` loses nothing.

Writing never follows a symbolic link out of such a folder either (`check_no_links`): a
link inside a mix or store (a linked `eval/`, a linked shard) would make mixer write
through it into a place it was never asked to touch.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from mixer.errors import MixerError

# kind -> (record file, its `format` prefix)
RECORDS = {
    "store": ("store.json", "mixer-store/"),
    "run": ("run.json", "mixer-run/"),
    "report": ("report.json", "mixer-report/"),
    "fit": ("fit.json", "mixer-fit/"),
    "audit work": ("mixer-audit-work.json", "mixer-audit-work/"),
}


def record_of(folder: Path, kind: str) -> dict | None:
    """The folder's record of `kind` when it is one of mixer's (a JSON object whose format
    names mixer), else None; never raises on a damaged or foreign file."""
    name, prefix = RECORDS[kind]
    path = Path(folder) / name
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):  # missing, unreadable, not JSON, not UTF-8
        return None
    if isinstance(data, dict) and str(data.get("format", "")).startswith(prefix):
        return data
    return None


def is_ours(folder: Path, kind: str) -> bool:
    return record_of(folder, kind) is not None


def claim_folder(folder: Path, kind: str, flag: str, extra_ok: tuple[str, ...] = ()) -> None:
    """Refuse, before anything is written or deleted, a `folder` that mixer may not fill:
    a file, a link, or a non-empty folder without mixer's record of `kind`. `extra_ok`
    names entries of mixer's own that make a folder of this kind before its record exists
    (a run's files while it trains)."""
    folder = Path(folder)
    if not folder.exists():
        return
    if not folder.is_dir():
        raise MixerError(f"{folder}: exists and is a file; choose another {flag} (nothing was changed there)")
    record = record_of(folder, kind)
    if record is not None:
        foreign = _foreign_in_store(folder, record) if kind == "store" else []
        if foreign:
            raise MixerError(f"{folder}: a mixer {kind}, but it also holds {', '.join(foreign[:3])}"
                             f"{' ...' if len(foreign) > 3 else ''}, which mixer did not write; move "
                             "that out first (nothing was changed there)")
        return
    entries = [p.name for p in folder.iterdir()]
    if entries and not set(entries) <= set(extra_ok):
        name, _ = RECORDS[kind]
        raise MixerError(f"{folder}: exists and is not a mixer {kind} (no {name} of mixer's); mixer never replaces "
                         f"or fills a folder it did not write, with or without --force: choose another {flag} "
                         "(nothing was changed there)")


def _foreign_in_store(folder: Path, record: dict) -> list[str]:
    """Entries of a store folder that the store does not list: a store is replaced whole, so
    they would go with it. (Other kinds are written file by file and keep what else is there.)"""
    listed = {RECORDS["store"][0], "near_duplicates.jsonl", *((record.get("checksums") or {}).get("files") or {})}
    return sorted(p.name for p in folder.iterdir() if p.name not in listed and not _STORE_FILE.match(p.name))


# A store's own files by name, for stores written before store.json listed them (checksums).
_STORE_FILE = re.compile(r"^(train|test|val)\.(ds|ds\.index|ds\.metadata|ids)$")


def mark_folder(folder: Path, kind: str, **fields: object) -> None:
    """Write the record that makes `folder` mixer's `kind` (for kinds whose record is only a
    mark: the audit's work folder)."""
    from mixer.formats.atomic import write_json

    name, prefix = RECORDS[kind]
    write_json(Path(folder) / name, {"format": f"{prefix}1", **fields})


def refuse_links(root: Path, *below: str) -> None:
    """Refuse when anything inside `root` (or inside the given sub-paths only) is a symbolic
    link: writing there would land outside the folder mixer was asked to write. Links are
    never followed while looking. (`root` itself may be a link: a user who keeps mixes on
    another disk chose that place.)"""
    root = Path(root)
    starts = [root / b for b in below] if below else [root]
    for start in starts:
        if start != root and os.path.islink(start):
            raise _link_error(start, root)
        if not start.is_dir():
            continue
        todo = [start]
        while todo:
            with os.scandir(todo.pop()) as it:
                for entry in it:
                    if entry.is_symlink():
                        raise _link_error(Path(entry.path), root)
                    if entry.is_dir(follow_symlinks=False):
                        todo.append(Path(entry.path))


def _link_error(path: Path, root: Path) -> MixerError:
    return MixerError(f"{path}: is a symbolic link inside {root}; mixer never writes through links "
                      "(replace it with a real folder or file, or choose another output)")
