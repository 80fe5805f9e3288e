"""`mixer build`, and the mix flags and summary it shares with `mixer plan`."""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from mixer.errors import UsageError
from mixer.units import SEED_MAX, format_count
from mixer.cli.common import emit, executor_from_flags, executor_options, json_option, resolve_stores, stores_option, table


def mix_options(f):
    for opt in reversed([
        stores_option,
        click.option("--domain", help="Domain store name."),
        click.option("--mix", "mix_sources", multiple=True, metavar="NAME=FRACTION",
                     help="A placed source and its share (repeatable; the first is the domain): --mix music=0.02 --mix proofs=0.01."),
        click.option("--general", help="General store name (default: the only general store)."),
        click.option("--fraction", type=float, help="Domain share of the samples in the window (0 = NPT)."),
        click.option("--epochs", type=float, help="Domain epochs (instead of --fraction; alone: a finetune mix)."),
        click.option("--replay", type=float, help="Finetune with this general share (replay), e.g. 0.1."),
        click.option("--tokens", help="Training tokens: 200B, 1.5M, ..."),
        click.option("--seq-len", type=int, default=2048, show_default=True),
        click.option("--seed", type=click.IntRange(0, SEED_MAX), default=0, show_default=True),
        click.option("--window", help="Domain only inside this part of the run, e.g. 0.9:1.0 (SCPT)."),
        click.option("--max-epochs", type=float, default=100.0, show_default=True, help="Refuse more domain repetition."),
        click.option("--max-general-epochs", type=float, default=4.0, show_default=True,
                     help="Refuse more general repetition (past ~4 epochs repeated data loses most of its value)."),
        click.option("--domain-subset", help="Use a seeded subset of the domain train split of about this many tokens."),
        click.option("--samples-per-shard", type=int, help="Default: ~128 MiB shards."),
        click.option("--name", help="Mix name (default derived from the flags)."),
    ]):
        f = opt(f)
    return f


def _mix_pairs(items: tuple[str, ...]) -> list[tuple[str, float]]:
    pairs = []
    for item in items:
        name, sep, value = item.partition("=")
        try:
            pairs.append((name.strip(), float(value)))
        except ValueError:
            raise UsageError(f"--mix {item!r}: expected NAME=FRACTION such as music=0.02") from None
        if not sep or not name.strip():
            raise UsageError(f"--mix {item!r}: expected NAME=FRACTION such as music=0.02")
    return pairs


def mix_fields(kw: dict) -> dict:
    """The mix flags as the API's keywords (MixSpec's fields; counts and the window still text)."""
    fields = {k: kw[k] for k in ("domain", "general", "fraction", "epochs", "replay", "tokens", "seq_len", "seed",
                                 "window", "max_epochs", "max_general_epochs", "samples_per_shard", "name")}
    fields["domain_subset_tokens"] = kw["domain_subset"]
    pairs = _mix_pairs(kw.get("mix_sources") or ())
    if pairs:
        fields["mix"] = pairs  # a list: a repeated name is refused by the plan, not merged here
    return fields


def format_plan(s: dict) -> str:
    lines = [
        f"mix {s['name']} ({s['kind']}): {s['samples']:,} samples x {s['seq_len']} = {format_count(s['tokens'])} tokens, "
        f"{s['shards']} shards, {s['bytes'] / 1e9:.3g} GB ({s['dtype']})",
        f"domain share: requested {s['fraction']['requested']}, achieved {s['fraction']['achieved']:.6g} "
        f"in window {s['fraction']['window'][0]:g}:{s['fraction']['window'][1]:g}",
    ]
    rows = []
    for src in s["sources"]:
        hist = ", ".join(f"{v:,}x{k}" for k, v in src["documents_full_passes"].items()) or "-"
        rows.append([src["name"], src["role"], format_count(src["train_tokens"]), f"{src['train_documents']:,}",
                     f"{src['samples']:,}", f"{src['epochs']:.3f}", hist])
    lines.append(table(rows, ["source", "role", "train tok", "docs", "samples", "epochs", "docs x full passes"]))
    for p in s.get("placed", [])[1:]:
        lines.append(f"{p['source']} share: requested {p['requested']}, achieved {p['achieved']:.6g} "
                     f"(every window of W samples within {p['window_bound']:.4g}/W)")
    lines += [f"warning: {w}" for w in s["warnings"]]
    return "\n".join(lines)


@click.command()
@mix_options
@click.option("--recipe", type=click.Path(dir_okay=False, path_type=Path), help="Multi-stage recipe (TOML [[stage]] tables): a path, or a shipped name such as spt.")
@click.option("--set", "overrides", multiple=True, help="Override a recipe var: --set fraction=0.05 (repeatable).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="Output dir (default ./mixes/<name>).")
@click.option("--shards", help="Write only shards I:J (the manifest comes when all exist).")
@executor_options
@click.option("--recheck-stores", is_flag=True, help="Re-read every store file to prove its checksum, even "
              "files this build already verified (by default an unchanged size and mtime is trusted).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@json_option
def build(recipe, overrides, out, shards, recheck_stores, quiet, as_json, **kw) -> None:
    """Build an exact, pre-shuffled mix: shards, provenance, eval sets, manifest."""
    if overrides and recipe is None:
        raise UsageError(f"--set {overrides[0]}: sets a var of a --recipe; without one give the flag itself "
                         "(e.g. --fraction 0.2)")
    from mixer import api

    executor = executor_from_flags(kw)
    stores = resolve_stores(kw["stores"])
    if recipe is not None:
        from mixer.mixing.stages import format_stages, parse_set

        result = api.build(out, stores=stores, recipe=recipe, overrides=parse_set(overrides), executor=executor,
                           progress=not quiet, recheck_stores=recheck_stores)
        emit(result, as_json, format_stages)
        return
    result = api.build(out, stores=stores, shards=shards, executor=executor, progress=not quiet,
                       recheck_stores=recheck_stores, spell=api.cli_flag, **mix_fields(kw))
    emit(result, as_json, format_build)


def format_build(r: dict) -> str:
    if r["status"] == "submitted":
        return (f"{r['out']}: {r['shards_submitted']} shards submitted to Slurm, {r['shards_skipped']} already there "
                f"(of {r['shards_total']}); jobs {', '.join(r['job_ids'])}, logs in {r['logs']}\n"
                "a job after them writes the manifest (squeue -j to follow; --wait blocks until then)")
    head = (f"{r['out']}: {r['shards_written']} shards written, {r['shards_skipped']} already there, "
            f"{r['shards_missing']} of {r['shards_total']} still missing ({r['seconds']} s)")
    if r["status"] != "done":
        return head + "\nmanifest pending: build the remaining shards (same command, other --shards) to finish"
    return head + "\n" + format_plan({**r["manifest"], "shards": len(r["manifest"]["shards"]),
                                      "bytes": sum(s["samples"] for s in r["manifest"]["shards"]) *
                                      (r["manifest"]["seq_len"] + 1) * np.dtype(r["manifest"]["dtype"]).itemsize})
