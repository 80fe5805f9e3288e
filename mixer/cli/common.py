"""Flags and output shared by the subcommands."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import click


def default_stores() -> Path:
    return Path(os.environ.get("MIXER_STORES", "stores"))


stores_option = click.option(
    "--stores",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Token stores folder (default: $MIXER_STORES or ./stores).",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a human summary.")


def resolve_stores(stores: Path | None) -> Path:
    return stores if stores is not None else default_stores()


def emit(data: Any, as_json: bool, human: Callable[[Any], str] | str) -> None:
    """Print `data` as JSON, or its human summary."""
    if as_json:
        click.echo(json.dumps(data, indent=2, default=_jsonable))
    else:
        click.echo(human if isinstance(human, str) else human(data))


def _jsonable(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def table(rows: list[list[Any]], header: list[str]) -> str:
    """A plain fixed-width table (no dependency: it is three lines of code)."""
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    fmt = lambda r: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join([fmt(cells[0]), "  ".join("-" * w for w in widths)] + [fmt(r) for r in cells[1:]])
