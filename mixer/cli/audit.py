"""`mixer audit`: flag parsing and the human summary; the work is in mixer.checks.audit."""

from __future__ import annotations

import json
from pathlib import Path

import click

from mixer.errors import MixerError
from mixer.units import format_count
from mixer.cli.common import emit, executor_from_flags, executor_options, json_option, table

LIST_OPTIONS = ("--heldout", "--train")


class ListOptionsCommand(click.Command):
    """Lets `--heldout A B --train X Y Z` take several values each (click options take one):
    values that follow a list option, up to the next flag, are given to it one by one."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        out: list[str] = []
        current, given = None, 0
        for a in args:
            if a in LIST_OPTIONS:
                if current and not given:
                    out.append(current)  # bare option: click reports the missing value
                current, given = a, 0
            elif current and not a.startswith("-"):
                out += [current, a]
                given += 1
            else:
                if current and not given:
                    out.append(current)
                current = None
                out.append(a)
        if current and not given:
            out.append(current)
        return super().parse_args(ctx, out)


@click.command(cls=ListOptionsCommand)
@click.argument("mix", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option("--heldout", "heldout", multiple=True, type=click.Path(file_okay=False, path_type=Path),
              help="Token store folder(s) whose held-out split (test/val) is audited (instead of MIX).")
@click.option("--train", "train", multiple=True,
              help="Training token files or globs (instead of MIX); with --seq-len, a NAME.prov.npy next to "
                   "NAME.bin stitches its samples into source streams.")
@click.option("--seq-len", type=int, help="--train files are samples of seq_len+1 tokens (default: flat token files).")
@click.option("--dtype", type=click.Choice(["uint16", "uint32"]),
              help="Token type of --train files (default: a mix shard's manifest, else the stores'); checked against "
                   "the files' sizes, first tokens and the vocabulary.")
@click.option("--ngram", type=int, default=13, show_default=True, help="n-gram length in tokens.")
@click.option("--near-copy", type=float, default=None,
              help="Flag a held-out document when one training document holds this share of its tokens (default 0.9).")
@click.option("--near-text", type=float, default=None,
              help="... or this share of its text, in order, by characters (the text check; default 0.8).")
@click.option("--min-quote", type=int, default=None,
              help="Flag a passage of this many tokens found in another source's training data (default 20) ...")
@click.option("--quote-edge", type=int, default=None,
              help="... counting up to this many tokens at each end that tokenize differently in context (default 1).")
@click.option("--strict", is_flag=True,
              help="Also flag passages shared with the document's own source, and make a general source's findings "
                   "leaks (exit 1). A triage list, not a verdict: clean real mixes share titles, licence headers and "
                   "parallel proofs within a source (docs/benchmarks/audit.md).")
@click.option("--no-boilerplate", is_flag=True, help="Discount nothing as boilerplate (see mixer.checks.audit).")
@click.option("--boilerplate-train-docs", type=int, default=None,
              help="Boilerplate: n-grams in at least this many training documents (default 5) ...")
@click.option("--boilerplate-heldout-docs", type=int, default=None,
              help="... and at least this many held-out documents (default 2).")
@executor_options
@click.option("--work", type=click.Path(file_okay=False, path_type=Path),
              help="Folder for partial results; a rerun resumes (required for slurm/ray; default: a temp folder).")
@json_option
def audit(mix, heldout, train, seq_len, dtype, ngram, near_copy, near_text, min_quote, quote_edge, strict,
          no_boilerplate, boilerplate_train_docs, boilerplate_heldout_docs, work, as_json, **kw) -> None:
    """Held-out documents found in training data, exact, nearly whole or quoted.

    Exit 1 on leaks: a domain source's flagged held-out documents. A general source's
    (its val split, for forgetting) are warnings, exit 0, unless --strict: near copies
    inside web-like corpora are their own duplication. Exit 2 on bad flags (a --dtype
    the files contradict), 1 on unreadable data.

    \b
    mixer audit mixes/spt-2pct
    mixer audit --heldout stores/music stores/prose --train shards/*.bin --seq-len 2048
    """
    from mixer import api

    options = {k: v for k, v in (("near_copy", near_copy), ("near_text", near_text), ("min_quote", min_quote),
                                 ("quote_edge", quote_edge), ("boilerplate_train_docs", boilerplate_train_docs),
                                 ("boilerplate_heldout_docs", boilerplate_heldout_docs)) if v is not None}
    rep = api.audit(mix, heldout=heldout, train=train, seq_len=seq_len, dtype=dtype, ngram=ngram, work=work,
                    executor=executor_from_flags(kw), spell=api.cli_flag, strict=strict,
                    boilerplate=not no_boilerplate, **options)
    label = rep["audited"]
    emit(rep, as_json, format_audit)
    if rep["leaks"]:
        raise MixerError(f"{label}: {rep['leaks']} held-out document(s) found in training data "
                         "(exact, near copy or quote; see the report)")


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%" if x else "0"


def _show(text: str, width: int = 100) -> str:
    s = json.dumps(text, ensure_ascii=False)[1:-1]
    return s if len(s) <= width else s[: width - 3] + "..."


def format_audit(r: dict) -> str:
    from mixer.checks.evidence import SATURATED  # a full signature: at least this many documents

    t, b = r["training"], r["boilerplate"]
    stitched = f", {len(t['stitched_sources'])} source(s) stitched from provenance" if t["stitched_sources"] else ""
    lines = [
        f"audit {r['audited']}: {r['ngram']}-grams of {r['heldout']['documents']:,} held-out documents against "
        f"{t['files']} training file{'s' if t['files'] != 1 else ''} ({format_count(t['tokens'])} tokens, "
        f"{format_count(t['ngrams'])} n-grams{stitched}) "
        f"in {t['seconds']} s ({t['executor']}, {t['tasks']} task{'s' if t['tasks'] > 1 else ''})",
    ]
    if b["enabled"]:
        lines.append(f"boilerplate discounted: {b['ngrams']:,} n-grams ({b['rule']}), {b['occurrences']:,} held-out "
                     "occurrences" + (":" if b["examples"] else ""))
        lines += [f"  \"{_show(e['text'], 70)}\"  held-out docs {e['heldout_docs']}, training docs "
                  f"{e['train_docs']}{'+' if e['train_docs'] >= SATURATED else ''}" for e in b["examples"]]
    else:
        lines.append("boilerplate: not discounted (--no-boilerplate)")
    rows = [[s["source"], s["split"], f"{s['documents']:,}", f"{s['checked']:,}", f"{s['with_overlap']:,}", s["exact"],
             s["near_copies"], s["quotes"], s["flagged"], _pct(s["max_share"]), _pct(s["max_near_copy"]),
             s["longest_quote"]] for s in r["sources"]]
    lines.append(table(rows, ["source", "split", "docs", "checked", "overlapping", "exact", "near copies", "quotes",
                              "flagged", "max share", "max near copy", "longest quote"]))
    for s in r["sources"]:
        if s["worst"]:
            lines.append(f"strongest evidence in {s['source']}/{s['split']}:")
        shown = max(5, s["flagged"]) if s["flagged"] <= 20 else 20
        for w in s["worst"][:shown]:
            why = "FLAGGED " + "+".join(w["flagged"]) if w["flagged"] else "not flagged"
            lines.append(f"  {w['id']}  {why}: near copy {_pct(w['near_copy'])} (text {_pct(w['near_text'])}), "
                         f"quote {w['quote_tokens']} tokens, "
                         f"longest shared run {w['span_tokens']} tokens, {_pct(w['share'])} of {w['ngrams']} n-grams "
                         f"({w['discounted_ngrams']} boilerplate)" + (f"  at {w['found_in']}" if w["found_in"] else ""))
            lines.append(f"      \"{_show(w['snippet'])}\"")
        if s["flagged"] > shown:
            lines.append(f"  ... and {s['flagged'] - shown} more flagged (--json lists them all)")
    tc = r["text_check"]
    lines.append(f"text check: {tc['pairs']:,} training documents read, {tc['flagged']} near copies by text "
                 f"({tc['seconds']} s)" if not tc["skipped"] else f"text check: not run ({tc['skipped']})")
    rule = r["rule"]["thresholds"]
    warned = [s for s in r["sources"] if s["severity"] == "warning" and s["flagged"]]
    if warned:
        lines.append("WARNING: " + ", ".join(f"{s['flagged']} {s['source']}/{s['split']}" for s in warned)
                     + " held-out document(s) of a general source found in training data (not a leak: general "
                     "corpora duplicate themselves; --strict makes it one)")
    lines.append(f"LEAK: {r['leaks']} held-out document(s) found in training data" if r["leaks"] else
                 f"clean: no held-out document is in the training data (exact, near copy >= {rule['near_copy']:g} "
                 f"of tokens or {rule['near_text']:g} of text, quote >= {rule['min_quote']} tokens)" if r["clean"] else
                 "no leak: nothing of a domain source's held-out split is in the training data")
    return "\n".join(lines)
