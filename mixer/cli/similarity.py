"""`mixer similarity`: n-gram divergence between two token stores."""

from __future__ import annotations

from pathlib import Path

import click

from mixer.units import SEED_MAX, format_count, parse_count
from mixer.cli.common import emit, json_option, resolve_stores, stores_option, table


@click.command()
@click.argument("a")
@click.argument("b")
@stores_option
@click.option("--split-a", default="train", show_default=True, help="Split of A to sample.")
@click.option("--split-b", default="train", show_default=True, help="Split of B to sample.")
@click.option("--tokens", "n_tokens", default="1.5M", show_default=True, help="Tokens sampled per side.")
@click.option("--seed", type=click.IntRange(0, SEED_MAX), default=0, show_default=True)
@json_option
def similarity(a: str, b: str, stores: Path | None, split_a: str, split_b: str, n_tokens: str, seed: int,
               as_json: bool) -> None:
    """Unigram, bigram and trigram Jensen-Shannon divergence (bits, 2^20 hashed bins) between
    token stores A and B (names in --stores, or store folders)."""
    from mixer.checks.similarity import similarity as run_similarity
    from mixer.formats.store import open_store

    root = resolve_stores(stores)
    sa, sb = (open_store(p.parent, p.name) if (p := Path(x)).joinpath("store.json").is_file() else open_store(root, x)
              for x in (a, b))
    result = run_similarity(sa, sb, split_a, split_b, parse_count(n_tokens, "--tokens"), seed)

    def human(r: dict) -> str:
        rows = [[k, f"{v:.4f}"] for k, v in r["jsd_bits"].items()]
        return (f"{sa.name}/{split_a} ({format_count(r['a']['tokens'])} tokens, {r['a']['documents']} docs) vs "
                f"{sb.name}/{split_b} ({format_count(r['b']['tokens'])} tokens, {r['b']['documents']} docs), seed {seed}\n"
                + table(rows, ["n-gram", "JSD (bits)"]) + "\n0 = same distribution, 1 = nothing in common")

    emit(result, as_json, human)
