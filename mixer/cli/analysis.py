"""`mixer report`, `mixer fit`, `mixer similarity`: flags in, toolkit calls, summaries out."""

from __future__ import annotations

from pathlib import Path

import click

from mixer.errors import UsageError
from mixer.formats.folders import claim_folder
from mixer.units import SEED_MAX, format_count, parse_count
from mixer.cli.common import emit, json_option, resolve_stores, stores_option, table

runs_argument = click.argument("runs", nargs=-1, type=click.Path(path_type=Path))


@click.command()
@runs_argument
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("report"), show_default=True,
              help="Folder for report.md, report.json and the plots.")
@json_option
def report(runs: tuple[Path, ...], out: Path, as_json: bool) -> None:
    """Paper metrics over RUNS: post-FT loss, relative gain, compute multiplier, gap closed,
    forgetting (mean ± std over seeds); writes Markdown, JSON and PNG plots to --out."""
    from mixer.analysis.report import build_report, format_report, write_report
    from mixer.formats.run import load_runs

    claim_folder(out, "report", "--out")
    loaded = load_runs(_need(runs))
    data = build_report(loaded)
    files = write_report(data, loaded, out)
    emit(data | {"files": [str(f) for f in files]}, as_json,
         lambda d: format_report(d) + "\n\nwrote " + ", ".join(str(f) for f in files))


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
    from mixer.formats.atomic import write_json
    from mixer.analysis.fit import build_fit, fit_inputs, format_fit
    from mixer.analysis.plots import plot_fit
    from mixer.formats.run import load_runs

    if holdout is not None and not 0 < holdout <= 1:
        raise UsageError(f"--holdout {holdout:g}: give the fraction as a fraction in (0, 1], e.g. 0.10 for 10%")
    claim_folder(out, "fit", "--out")
    inputs = fit_inputs(load_runs(_need(runs)), model, domain)
    result = build_fit(inputs, holdout, loss)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "fit.json", result)
    png = plot_fit(result, inputs["curves"], out / "fit.png")
    emit(result | {"files": [str(out / "fit.json"), str(png)]}, as_json,
         lambda d: f"{format_fit(d)}\n\nwrote {out / 'fit.json'}, {png}"
                   f"  (next: mixer plan --fit {out / 'fit.json'} --tokens ...)")


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


def _need(runs: tuple[Path, ...]) -> list[Path]:
    if not runs:
        raise UsageError("give one or more RUN folders (e.g. mixer report runs/*)")
    return list(runs)
