"""`mixer plan`: what a build would produce, or (--fit) a forecast from a fitted law."""

from __future__ import annotations

from pathlib import Path

import click

from mixer.errors import UsageError
from mixer.cli.build import format_plan, mix_fields, mix_options
from mixer.cli.common import emit, json_option, resolve_stores


@click.command()
@mix_options
@click.option("--fit", "fit_file", type=click.Path(dir_okay=False, path_type=Path), help="fit.json from `mixer fit`: forecast per fraction.")
@click.option("--domain-tokens", help="Forecast for a domain of this size (no stores needed with --fit).")
@click.option("--fractions", help="Fractions to forecast, comma-separated (default: the paper's grid, 0-10%, plus the fitted ones, within the fitted range).")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), help="Write the forecast plot (PNG) here.")
@click.option("--extrapolate", is_flag=True,
              help="With --fit: forecast beyond the measured tokens, fractions and finetuning gains (and say how far).")
@json_option
def plan(fit_file, domain_tokens, fractions, plot, extrapolate, as_json, **kw) -> None:
    """Everything a build would produce, without writing anything; with --fit, a forecast."""
    if fit_file is not None:
        _forecast(fit_file, kw, domain_tokens, fractions, plot, as_json, extrapolate)
        return
    if extrapolate:
        raise UsageError("--extrapolate: only with --fit (a forecast)")
    from mixer import api

    summary = api.plan(stores=resolve_stores(kw["stores"]), spell=api.cli_flag, **mix_fields(kw))
    emit(summary, as_json, format_plan)


def _forecast(fit_file: Path, kw: dict, domain_tokens, fractions, plot, as_json, extrapolate: bool = False) -> None:
    from mixer import api
    from mixer.analysis.forecast import format_forecast

    if not kw["tokens"]:
        raise UsageError("--fit needs --tokens (the budget to forecast)")
    # A forecast reads the fit, the budget, the domain size and the fractions; a flag that
    # would change a build but not the forecast is refused rather than silently ignored.
    unused = {"--epochs": kw["epochs"], "--replay": kw["replay"], "--window": kw["window"], "--general": kw["general"],
              "--domain-subset": kw["domain_subset"], "--samples-per-shard": kw["samples_per_shard"],
              "--name": kw["name"], "--mix": kw.get("mix_sources") or None,
              "--seq-len": None if kw["seq_len"] == 2048 else kw["seq_len"], "--seed": kw["seed"] or None}
    given = [k for k, v in unused.items() if v is not None]
    if given:
        raise UsageError(f"{', '.join(given)}: not used by a forecast with --fit (it takes --tokens, --domain/--domain-tokens, --fraction/--fractions)")
    if kw["fraction"] is not None:
        if fractions:
            raise UsageError("give --fraction or --fractions with --fit, not both")
        fractions = str(kw["fraction"])
    result = api.forecast(fit_file, kw["tokens"], fractions=[float(x) for x in fractions.split(",")] if fractions else None,
                          domain_tokens=domain_tokens, domain=kw["domain"], stores=resolve_stores(kw["stores"]),
                          extrapolate=extrapolate, plot=plot, spell=api.cli_flag)
    emit(result, as_json, format_forecast)
