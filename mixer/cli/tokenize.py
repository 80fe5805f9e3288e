"""`mixer tokenize`: flags (or a recipe and the flags that override it) -> mixer.api.tokenize."""

from __future__ import annotations

from pathlib import Path

import click

from mixer.errors import UsageError
from mixer.units import SEED_MAX, format_count
from mixer.cli.common import emit, executor_from_flags, executor_options, json_option, resolve_stores, stores_option, table

# flags that describe a source; with --recipe the recipe describes it instead
_SOURCE_FLAGS = ("role", "inputs", "more_inputs", "text_key", "id_key", "tokenizer", "test_fraction", "test_tokens",
                 "seed", "near_duplicates", "on_bad_record", "eos", "text_files")


@click.command("tokenize")
@click.option("--recipe", type=click.Path(path_type=Path), help="Recipe TOML with [[source]] tables (all, or --source); a path or a shipped recipe's name.")
@click.option("--source", "name", help="Store name (STORES/NAME); with --recipe, the one source to tokenize.")
@click.option("--role", type=click.Choice(["domain", "general"]), help="domain: train/test splits; general: train/val.")
@click.option("--input", "inputs", multiple=True, metavar="GLOB",
              help="Input files, globs or folders: JSON lines (.jsonl/.json/.ndjson, also .gz/.zst), parquet, Arrow "
              "(incl. a datasets save_to_disk folder), .txt (one document each); recognised by content.")
@click.argument("more_inputs", nargs=-1, metavar="[GLOB]...")
@click.option("--text-files", is_flag=True, default=False,
              help="Read every other input file (README.md, .v, no suffix...) as one text document "
              "(without it, such files in a folder or glob are an error).")
@click.option("--text-key", default="text", show_default=True, help="JSON key / parquet column of the text.")
@click.option("--id-key", default="id", show_default=True, help="Key of the document id (default id: file:line).")
@click.option("--tokenizer", metavar="FILE|DIR|NAME",
              help="HuggingFace tokenizer.json, a folder holding one (hub snapshot, LitGPT checkpoint), or a name "
              "in a local cache (gpt2 after fetch-samples; a hub cache's org/name). With --recipe: replaces the recipe's.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="With --recipe: override a source setting (inputs, tokenizer, test_fraction, test_tokens, seed, "
              "near_duplicates, ...); recorded in store.json. Repeatable.")
@click.option("--eos", help="End-of-document token text (default: found in the tokenizer, e.g. <|endoftext|>).")
@stores_option
@click.option("--test-fraction", type=float, help="Held-out share of documents by hash [default: 0.01].")
@click.option("--test-tokens", help="Held-out size in tokens instead (e.g. 100K).")
@click.option("--seed", type=click.IntRange(0, SEED_MAX), default=0, show_default=True, help="Split seed.")
@click.option("--near-duplicates/--no-near-duplicates", default=None,
              help="Keep near-copies on one side of the split (MinHash). [default: on for domain sources]")
@click.option("--on-bad-record", type=click.Choice(["skip", "fail"]), default="fail", show_default=True,
              help="A malformed record (bad JSON, no text key, bad UTF-8): stop with file:line, or skip and count.")
@executor_options
@click.option("--tokenizer-backend", type=click.Choice(["auto", "hf", "tiktoken"]), default="auto", show_default=True,
              help="Library that tokenizes. auto: tiktoken (~3x faster) for a byte-level BPE tokenizer.json it "
              "reproduces exactly (checked when it starts), else HF tokenizers. Either way the store's bytes are the "
              "same; with tiktoken each task re-encodes a sample of documents with HF and stops if one differs.")
@click.option("--force", is_flag=True, help="Replace a store built with other settings; allow a tokenizer that "
              "differs from the other stores'.")
@json_option
@click.pass_context
def tokenize(ctx: click.Context, recipe: Path | None, name: str | None, more_inputs: tuple[str, ...],
             stores: Path | None, tokenizer_backend: str, force: bool, as_json: bool, overrides: tuple[str, ...],
             **source: object) -> None:
    """Tokenize a corpus into a token store with train/test (or train/val) splits.

    \b
    mixer tokenize --source music --role domain --input 'data/music/*.jsonl.zst' --tokenizer tok.json
    mixer tokenize --recipe recipes/samples.toml [--source music]
    """
    from mixer import api
    from mixer.ingest.sources import OVERRIDABLE

    typed = click.core.ParameterSource.COMMANDLINE
    given = [k for k in _SOURCE_FLAGS if k != "more_inputs" and ctx.get_parameter_source(k) == typed]
    given += ["more_inputs"] if more_inputs else []
    root = resolve_stores(stores)
    executor = executor_from_flags(source)
    if recipe is not None:
        fixed = [k for k in given if k not in OVERRIDABLE and k != "more_inputs"]
        if fixed:
            flag = "--" + fixed[0].replace("_", "-")
            allowed = ", ".join("--" + ("input" if k == "inputs" else k.replace("_", "-")) for k in OVERRIDABLE)
            raise UsageError(f"{flag}: not with --recipe (it says what the source is; override only {allowed} or --set)")
        results = api.tokenize(recipe, stores=root, source=name, overrides=_recipe_overrides(given, source, more_inputs,
                                                                                             overrides),
                               force=force, executor=executor, tokenizer_backend=tokenizer_backend, spell=_spell)
    else:
        if overrides:
            raise UsageError(f"--set {overrides[0]}: overrides a --recipe's setting; without one give the flag itself")
        fields = {k: source[k] for k in ("role", "text_key", "id_key", "test_fraction", "test_tokens", "seed",
                                         "near_duplicates", "on_bad_record", "eos", "text_files")}
        fields["tokenizer"] = str(source["tokenizer"]) if source["tokenizer"] else None
        results = api.tokenize(stores=root, force=force, executor=executor, tokenizer_backend=tokenizer_backend,
                               spell=_spell, name=name, inputs=list(source["inputs"]) + list(more_inputs), **fields)
    emit({"stores": str(root), "sources": results}, as_json, _human)


def _spell(key: str) -> str:
    """A keyword of api.tokenize as this command's flag."""
    from mixer.api import cli_flag

    return "--source" if key == "name" else cli_flag(key)  # the source's name is --source here, not --name


def _recipe_overrides(given: list[str], source: dict, more_inputs: tuple[str, ...], pairs: tuple[str, ...]) -> dict:
    """The recipe settings the command line replaces (--set pairs and the source flags given)."""
    from mixer.ingest.sources import parse_overrides

    out = parse_overrides(pairs)
    for key in given:
        if key == "more_inputs":
            continue
        value = source[key]
        out[key] = list(value) if key == "inputs" else value
    if more_inputs:
        out["inputs"] = list(out.get("inputs", [])) + list(more_inputs)
    return out


def _human(data: dict) -> str:
    rows, notes = [], []
    for m in data["sources"]:
        notes.extend(f"{m['source']}: {n}" for n in m.get("notes", []))
        if m.get("status") == "submitted":
            notes.append(f"{m['source']}: submitted to Slurm (jobs {', '.join(m['job_ids'])}, logs in {m['logs']}); "
                         f"the store appears at {m['store']} when they finish")
            continue
        for split, c in m["splits"].items():
            rows.append([m["source"], split, f"{c['documents']:,}", f"{c['tokens']:,}", format_count(c["tokens"])])
        s, d = m["split"], m["dropped"]
        line = f"{m['source']}: {m['status']}; held out {s['achieved_fraction']:.4f} of tokens (seed {s['seed']})"
        if s.get("near_duplicates"):
            line += (f"; {s['near_duplicate_clusters']} near-duplicate clusters "
                     f"({s['near_duplicate_documents']} documents, {s['near_duplicate_moved']} moved)")
        line += f"; dropped {d['empty']} empty, {d['bad_records']} bad records"
        notes.append(line)
        if b := m.get("tokenizer_backend"):
            checked = f"; {b['checked_documents']:,} documents re-checked with HF, identical" if "tiktoken" in b["used"] else ""
            notes.append(f"  tokenizer backend: {b['used']} ({b['reason']}){checked}")
        notes.extend(f"  skipped: {x}" for x in m.get("skipped_records", [])[:5])
    out = [f"stores: {data['stores']}"]
    if rows:
        out.append(table(rows, ["source", "split", "documents", "tokens", ""]))
    return "\n".join(out + notes)
