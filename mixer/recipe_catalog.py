"""What the shipped recipes are: descriptions, sources and stages, read straight from TOML.

This reads the files with tomllib only (no `${VAR}` expansion, no validation): listing must
work even when a recipe points at data that is not on this machine.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any

from mixer.errors import MixerError, UsageError


def recipes_dir() -> Path:
    """`$MIXER_RECIPES`, else the recipes shipped in the package (in a checkout, `mixer/recipes`
    is a link to the top-level `recipes/`; a wheel holds a copy)."""
    env = os.environ.get("MIXER_RECIPES")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent / "recipes"
    if here.is_dir():
        return here
    raise MixerError(f"{here}: no recipes in the installed package; set MIXER_RECIPES to a recipes folder")


def find_recipe(text: str | Path, flag: str = "--recipe") -> Path:
    """A recipe file by path, else by its name among the shipped recipes (`samples`,
    `stages/spt`), so an installed mixer needs no checkout to use them."""
    path = Path(text)
    if path.is_file():
        return path
    name = str(text).removesuffix(".toml").removeprefix("recipes/")
    shipped = recipes_dir() / f"{name}.toml"
    if shipped.is_file():
        return shipped
    if (recipes_dir() / "stages" / f"{name}.toml").is_file():
        return recipes_dir() / "stages" / f"{name}.toml"
    known = ", ".join(e["recipe"] for e in list_recipes(recipes_dir()))
    raise UsageError(f"{flag} {text}: no such recipe file, nor a shipped recipe ({known})")


def list_recipes(folder: Path) -> list[dict[str, Any]]:
    """One entry per `*.toml` below `folder` (sorted by relative path). A file that does not
    parse gets an `error` entry instead of hiding the others."""
    if not folder.is_dir():
        raise MixerError(f"{folder}: recipes folder does not exist")
    entries = []
    for path in sorted(folder.rglob("*.toml"), key=lambda p: p.relative_to(folder).as_posix()):
        rel = path.relative_to(folder).as_posix()
        entry: dict[str, Any] = {"recipe": rel[: -len(".toml")], "path": str(path)}
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
            entry["description"] = str(data.get("description", ""))
            entry["sources"] = [{"name": s.get("name"), "role": s.get("role"), "inputs": s.get("inputs", [])}
                                for s in _tables(data, "source")]
            # A stage is shown by its name, else its kind, else its position.
            entry["stages"] = [str(s.get("name") or s.get("kind") or f"#{i}")
                               for i, s in enumerate(_tables(data, "stage"))]
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, ValueError) as e:
            entry["error"] = str(e).splitlines()[0] if str(e) else type(e).__name__
        entries.append(entry)
    return entries


def _tables(data: dict[str, Any], key: str) -> list[dict[str, Any]]:
    tables = data.get(key, [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise ValueError(f"'{key}' must be an array of tables ([[{key}]])")
    return tables


def show_recipe(text: str | Path) -> dict[str, Any]:
    """Everything a user needs to run a recipe on their own disk: its sources (inputs as
    written, with `${VAR}`s), what to download and from where (`[fetch]`), which variables
    must point where and whether they are set here, and its stages."""
    path = find_recipe(text, "mixer recipes show")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise MixerError(f"{path}: not a readable recipe ({str(e).splitlines()[0]})") from None
    fetch = data.get("fetch") or {}
    if not isinstance(fetch, dict):
        raise MixerError(f"{path}: [fetch] must be a table")
    described = fetch.get("vars") or {}
    used = sorted({m for s in _tables(data, "source") for v in s.values() if isinstance(v, (str, list))
                   for m in _VAR_NAME.findall(" ".join(v) if isinstance(v, list) else v)})
    names = list(dict.fromkeys([*described, *used]))
    return {
        "recipe": path.stem if path.parent.name != "stages" else f"stages/{path.stem}",
        "path": str(path),
        "description": str(data.get("description", "")),
        "sources": [{k: s.get(k) for k in ("name", "role", "inputs", "tokenizer", "test_fraction", "test_tokens")
                     if s.get(k) is not None} for s in _tables(data, "source")],
        "fetch": {k: v for k, v in fetch.items() if k != "vars"},
        "vars": [{"name": n, "means": str(described.get(n, "")), "set": bool(os.environ.get(n)),
                  "value": os.environ.get(n)} for n in names],
        "stages": [str(s.get("name") or s.get("kind") or f"#{i}") for i, s in enumerate(_tables(data, "stage"))],
    }


_VAR_NAME = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)")


def recipes_with_source(name: str) -> list[str]:
    """The shipped recipes that define a source called `name` (for "no store named X" hints)."""
    try:
        entries = list_recipes(recipes_dir())
    except MixerError:
        return []
    return [e["recipe"] for e in entries if any(s.get("name") == name for s in e.get("sources", []))]
