"""`mixer similarity`: n-gram divergence between two token stores."""

from __future__ import annotations

from pathlib import Path

import click

from mixer.units import SEED_MAX, format_count
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
    from mixer import api

    result = api.similarity(a, b, stores=resolve_stores(stores), split_a=split_a, split_b=split_b, tokens=n_tokens,
                            seed=seed, spell=api.cli_flag)
    emit(result, as_json, format_similarity)


def format_similarity(r: dict) -> str:
    rows = [[k, f"{v:.4f}"] for k, v in r["jsd_bits"].items()]
    a, b = r["a"], r["b"]
    return (f"{Path(a['store']).name}/{a['split']} ({format_count(a['tokens'])} tokens, {a['documents']} docs) vs "
            f"{Path(b['store']).name}/{b['split']} ({format_count(b['tokens'])} tokens, {b['documents']} docs), "
            f"seed {r['seed']}\n" + table(rows, ["n-gram", "JSD (bits)"]) + "\n0 = same distribution, 1 = nothing in common")
