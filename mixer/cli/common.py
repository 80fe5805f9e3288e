"""Flags and output shared by the subcommands."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import click

from mixer.text import table  # noqa: F401 - the commands' tables


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
