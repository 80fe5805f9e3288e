"""`mixer fit`: the overfitting scaling law fitted to runs."""

from __future__ import annotations

from pathlib import Path

import click

from mixer.cli.common import emit, json_option, need_runs, runs_argument


@click.command()
@runs_argument
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("fit"), show_default=True,
              help="Folder for fit.json and fit.png.")
@click.option("--holdout", type=float, default=None,
              help="Leave this fraction (e.g. 0.10: a fraction, not percent) out of the joint fit and report "
                   "how well the law predicts it.")
@click.option("--loss", type=click.Choice(["sse", "huber-log"]), default="sse", show_default=True,
              help="Joint fit objective: squared error in nats (the paper's, appendix D) or Huber on log-loss "
                   "residuals (Chinchilla's).")
@click.option("--starts", type=int, default=64, show_default=True,
              help="Seeded starts of the joint fit; the lowest objective wins.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the joint fit's starts.")
@click.option("--model", default=None, help="Model preset to fit when the runs hold several.")
@click.option("--domain", default=None, help="Domain to fit when the runs hold several.")
@json_option
def fit(runs: tuple[Path, ...], out: Path, holdout: float | None, loss: str, starts: int, seed: int,
        model: str | None, domain: str | None, as_json: bool) -> None:
    """Fit the overfitting scaling law (and the finetuning gain) to the pretraining and
    finetune RUNS of one model and domain, as appendix D of the paper: per-fraction curves
    with shared exponents, the floor and gap-kernel shape checks with their residuals, then
    the joint law (>= 5 fractions); writes fit.json and fit.png to --out.

    With too few fractions or checkpoints for the joint law the per-fraction curves are
    still fitted and written; the output says what was not fitted and why."""
    from mixer import api
    from mixer.analysis.fit import format_fit

    result = api.fit(need_runs(runs), out, holdout=holdout, model=model, domain=domain, loss=loss, starts=starts,
                     seed=seed, spell=api.cli_flag)
    emit(result, as_json, lambda d: f"{format_fit(d)}\n\nwrote {', '.join(d['files'])}"
                                    f"  (next: mixer plan --fit {out / 'fit.json'} --tokens ...)")
