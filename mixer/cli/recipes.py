"""`mixer recipes` and `mixer recipes show`: the shipped recipes."""

from __future__ import annotations

from pathlib import Path

import click

from mixer.errors import MixerError
from mixer.cli.common import emit, json_option


@click.group("recipes", invoke_without_command=True)
@click.option("--dir", "folder", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Recipes folder (default: $MIXER_RECIPES or the repository's recipes/).")
@json_option
@click.pass_context
def recipes(ctx: click.Context, folder: Path | None, as_json: bool) -> None:
    """List the recipes: description, sources (name:role) and stages.
    `mixer recipes show NAME`: what to download for it, and where to point.

    \b
    mixer recipes
    mixer recipes show musicpile
    """
    if ctx.invoked_subcommand is not None:
        ctx.obj = {"as_json": as_json}
        return
    from mixer.recipe_catalog import list_recipes, recipes_dir

    folder = folder if folder is not None else recipes_dir()
    entries = list_recipes(folder)
    emit({"dir": str(folder), "recipes": entries}, as_json, lambda _: _recipes_summary(folder, entries))
    broken = [e for e in entries if "error" in e]
    if broken:
        raise MixerError("; ".join(f"{e['path']}: {e['error']}" for e in broken))


def _recipes_summary(folder: Path, entries: list[dict]) -> str:
    # Blocks, not a table: descriptions are sentences and read badly right-aligned.
    lines = [f"recipes in {folder}:" if entries else f"no recipes in {folder}"]
    for e in entries:
        if "error" in e:
            lines.append(f"{e['recipe']}: ERROR: {e['error']}")
            continue
        lines.append(f"{e['recipe']}: {e['description']}" if e["description"] else e["recipe"])
        if e["sources"]:
            lines.append("    sources: " + ", ".join(f"{s['name']} ({s['role']})" for s in e["sources"]))
        if e["stages"]:
            lines.append("    stages:  " + ", ".join(e["stages"]))
    return "\n".join(lines)


@recipes.command("show")
@click.argument("name")
@json_option
@click.pass_context
def show(ctx: click.Context, name: str, as_json: bool) -> None:
    """What a recipe needs on this disk: what to download, from where, which variable
    points where (set here or not), and the next command."""
    from mixer.recipe_catalog import show_recipe

    info = show_recipe(name)
    emit(info, as_json or (ctx.obj or {}).get("as_json", False), _show_summary)


def _show_summary(r: dict) -> str:
    lines = [f"{r['recipe']}: {r['description']}" if r["description"] else r["recipe"], f"  file: {r['path']}"]
    for src in r["sources"]:
        lines.append(f"  source {src['name']} ({src['role']}): inputs {', '.join(src['inputs'])}")
    f = r["fetch"]
    if f:
        lines.append("download:")
        for key in ("from", "size", "licence"):
            if f.get(key):
                lines.append(f"  {key + ':':<8} {f[key]}")
        if f.get("command"):
            lines.append(f"  command: {f['command']}")
    if r["vars"]:
        lines.append("variables:")
        for v in r["vars"]:
            state = f"set: {v['value']}" if v["set"] else "not set"
            lines.append(f"  {v['name']} ({state}){': ' + v['means'] if v['means'] else ''}")
    if r["sources"]:
        lines.append(f"then: mixer tokenize --recipe {r['recipe']} [--tokenizer YOUR/tokenizer.json]")
    if r["stages"]:
        lines.append(f"stages: {', '.join(r['stages'])}; then: mixer build --recipe {r['recipe']}")
    return "\n".join(lines)
