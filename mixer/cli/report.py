"""`mixer report`: the papers' metrics over runs, with plots."""

from __future__ import annotations

from pathlib import Path

import click

from mixer.cli.common import emit, json_option, need_runs, runs_argument


@click.command()
@runs_argument
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("report"), show_default=True,
              help="Folder for report.md, report.json and the plots.")
@json_option
def report(runs: tuple[Path, ...], out: Path, as_json: bool) -> None:
    """Paper metrics over RUNS: post-FT loss, relative gain, compute multiplier, gap closed,
    forgetting (mean ± std over seeds); writes Markdown, JSON and PNG plots to --out."""
    from mixer import api
    from mixer.analysis.report import format_report

    data = api.report(need_runs(runs), out, spell=api.cli_flag)
    emit(data, as_json, lambda d: format_report(d) + "\n\nwrote " + ", ".join(d["files"]))
