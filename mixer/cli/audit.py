"""`mixer audit`: flag parsing and the human summary; the work is in mixer.checks.audit."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import click

from mixer.errors import MixerError, UsageError
from mixer.units import format_count
from mixer.cli.common import emit, json_option, table

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
@click.option("--train", "train", multiple=True, help="Training token files or globs (instead of MIX).")
@click.option("--seq-len", type=int, help="--train files are samples of seq_len+1 tokens (default: flat token files).")
@click.option("--dtype", type=click.Choice(["uint16", "uint32"]), help="Token type of --train files (default: the stores').")
@click.option("--ngram", type=int, default=13, show_default=True, help="n-gram length in tokens.")
@click.option("--max-overlap", type=float, default=0.0, show_default=True,
              help="Exit 1 when a held-out document's n-gram share found in training exceeds this.")
@click.option("--no-allowlist", is_flag=True, help="Count boilerplate n-grams too (see mixer.checks.audit).")
@click.option("--allowlist-min-docs", type=int,
              help="Boilerplate: n-grams in at least this many held-out and training documents (default 5).")
@click.option("--executor", type=click.Choice(["local", "slurm", "ray"]), default="local", show_default=True)
@click.option("--tasks", type=int, default=1, show_default=True, help="Tasks the training files are spread over.")
@click.option("--workers", type=int, default=-1, help="Concurrent local tasks (default: min(tasks, cores)).")
@click.option("--work", type=click.Path(file_okay=False, path_type=Path),
              help="Folder for partial results; a rerun resumes (required for slurm/ray; default: a temp folder).")
@json_option
def audit(mix, heldout, train, seq_len, dtype, ngram, max_overlap, no_allowlist, allowlist_min_docs, executor,
          tasks, workers, work, as_json) -> None:
    """Share of each held-out document's n-grams found in training data; exit 1 on leaks.

    \b
    mixer audit mixes/spt-2pct
    mixer audit --heldout stores/music stores/prose --train shards/*.bin --seq-len 2048
    """
    from mixer.checks.audit import audit as run_audit

    stores, files, label = _inputs(mix, heldout, train, seq_len, dtype)
    if tasks < 1:
        raise UsageError(f"--tasks {tasks}: must be at least 1")
    if executor != "local" and work is None:
        raise UsageError(f"--executor {executor}: needs --work DIR on a filesystem every task can reach")
    with tempfile.TemporaryDirectory(prefix="mixer-audit-") as tmp:
        rep = run_audit(stores, files, Path(work or tmp), n=ngram, max_overlap=max_overlap,
                        allowlist=not no_allowlist, min_docs=allowlist_min_docs, executor=executor, tasks=tasks,
                        workers=workers)
    rep["audited"] = label
    emit(rep, as_json, format_audit)
    if not rep["clean"]:
        raise MixerError(f"{label}: {rep['exceeding']} held-out document(s) exceed --max-overlap {max_overlap:g}")


def _inputs(mix, heldout, train, seq_len, dtype):
    from mixer.checks.audit_inputs import file_inputs, mix_inputs

    if mix is not None and (heldout or train):
        raise UsageError("give either MIX or --heldout/--train, not both")
    if mix is None:
        if not heldout or not train:
            raise UsageError("give MIX, or both --heldout STORE... and --train FILE...")
        return (*file_inputs(heldout, train, seq_len, dtype), ", ".join(train))
    if seq_len is not None or dtype is not None:
        raise UsageError("--seq-len/--dtype describe --train files; a mix's manifest has them")
    return (*mix_inputs(mix), str(mix))


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%" if x else "0"


def _show(text: str, width: int = 100) -> str:
    s = json.dumps(text, ensure_ascii=False)[1:-1]
    return s if len(s) <= width else s[: width - 3] + "..."


def format_audit(r: dict) -> str:
    t, a = r["training"], r["allowlist"]
    lines = [
        f"audit {r['audited']}: {r['ngram']}-grams of {r['heldout']['documents']:,} held-out documents against "
        f"{t['files']} training file{'s' if t['files'] != 1 else ''} ({format_count(t['tokens'])} tokens, "
        f"{format_count(t['ngrams'])} n-grams) "
        f"in {t['seconds']} s ({t['executor']}, {t['tasks']} task{'s' if t['tasks'] > 1 else ''})",
    ]
    if a["enabled"]:
        lines.append(f"allowlist: {a['ngrams']:,} boilerplate n-grams ({a['rule']}), {a['occurrences']:,} held-out "
                     "occurrences not counted" + (":" if a["examples"] else ""))
        lines += [f"  \"{_show(e['text'], 70)}\"  held-out docs {e['heldout_docs']}, training docs {e['train_docs']}"
                  for e in a["examples"]]
    else:
        lines.append("allowlist: off (--no-allowlist)")
    hist = [label for label in r["sources"][0]["histogram"]] if r["sources"] else []
    rows = [[s["source"], s["split"], f"{s['documents']:,}", f"{s['checked']:,}", f"{s['with_overlap']:,}", s["exact"],
             s["exceeding"], _pct(s["max_share"])] + [s["histogram"][h] for h in hist] for s in r["sources"]]
    lines.append(table(rows, ["source", "split", "docs", "checked", "overlapping", "exact", "exceeding", "max share"]
                       + [f"share {h}" for h in hist]))
    for s in r["sources"]:
        if s["worst"]:
            lines.append(f"worst offenders in {s['source']}/{s['split']}:")
        for w in s["worst"][:5]:
            lines.append(f"  {w['id']}  {_pct(w['share'])} of {w['ngrams']} n-grams{'  EXACT COPY' if w['exact'] else ''}"
                         f"  at {w['found_in']}")
            lines.append(f"      \"{_show(w['snippet'])}\"")
    verdict = (f"clean: no held-out document exceeds --max-overlap {r['max_overlap']:g}" if r["clean"] else
               f"LEAK: {r['exceeding']} held-out document(s) exceed --max-overlap {r['max_overlap']:g}")
    lines.append(verdict)
    return "\n".join(lines)
