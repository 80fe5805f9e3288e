"""The Python API under the command line: `from mixer import tokenize, plan, build, verify, audit,
pretrain, finetune, evaluate, report, fit`.

Each function does what its command does and returns what the command prints with
`--json` (plain dicts and lists), without printing; errors are `mixer.errors.MixerError`
(one line, naming the file or flag). docs/api.md walks through a whole study.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

from mixer.executors import Executor
from mixer.formats.run import RunKind
from mixer.formats.folders import claim_folder, mark_folder

PathLike = str | Path


def tokenize(recipe: PathLike | None = None, *, stores: PathLike = "stores", source: str | None = None,
             force: bool = False, executor: Executor | None = None, **fields: Any) -> list[dict]:
    """Corpora -> token stores. Either a recipe (a path or a shipped name such as "samples";
    `source` picks one of its sources) or one source described by `fields`
    (`name`, `role`, `inputs`, `tokenizer`, ... as in a recipe's [[source]] table).
    Returns each source's store.json content with a `status`."""
    from mixer.ingest.sources import SourceSpec, load_sources, select_source
    from mixer.ingest.tokenize import RunOptions, tokenize_source
    from mixer.recipe_catalog import find_recipe

    if recipe is not None:
        path = find_recipe(recipe)
        specs = select_source(load_sources(path), source, path)
    else:
        specs = [SourceSpec(**fields).validate()]
    run = RunOptions(executor=executor or Executor(), force=force).validate()
    return [tokenize_source(spec, Path(stores), run) for spec in specs]


def _spec(stores: PathLike, fields: dict) -> Any:
    from mixer.mixing.spec import MixSpec

    mix = fields.pop("mix", None)  # {"music": 0.02, "proofs": 0.01}: the first is the domain
    if mix:
        (fields["domain"], fields["fraction"]), *extra = list(dict(mix).items())
        fields["extra"] = extra
    if isinstance(fields.get("tokens"), str):
        from mixer.units import parse_count

        fields["tokens"] = parse_count(fields["tokens"], "tokens")
    return MixSpec(stores=str(Path(stores).resolve()), **fields)


def plan(*, stores: PathLike = "stores", **fields: Any) -> dict:
    """What a build would produce (counts, epochs, fractions per source), writing nothing.
    `fields` are MixSpec's: domain, general, fraction, epochs, replay, tokens ("200B" or an
    int), seq_len, seed, window, ...; or `mix={"music": 0.02, "proofs": 0.01}`."""
    from mixer.mixing.spec import resolve

    return resolve(_spec(stores, fields)).summary()


def build(out: PathLike | None = None, *, stores: PathLike = "stores", recipe: PathLike | None = None,
          overrides: dict | None = None, shards: str | None = None, executor: Executor | None = None,
          progress: bool = False, **fields: Any) -> dict:
    """Write a mix (or, with `recipe`, every stage of a multi-stage recipe). Returns the
    build status with the manifest once every shard exists."""
    ex = (executor or Executor()).validate()
    if recipe is not None:
        from mixer.mixing.stages import build_recipe
        from mixer.recipe_catalog import find_recipe

        return build_recipe(find_recipe(recipe), Path(stores), Path(out) if out else None, overrides,
                            executor=ex, progress=progress)
    from mixer.mixing.build import build as run_build

    spec = _spec(stores, fields)
    spec.validate()
    target = Path(out) if out else Path("mixes") / spec.default_name()
    return run_build(spec, target, shards=shards, executor=ex, progress=progress)


def verify(mix: PathLike, *, quick: bool = False, workers: int = 1, progress: bool = False) -> dict:
    """Re-derive a mix from its stores and compare every claim of its manifest; raises
    MixerError on the first difference."""
    from mixer.checks.verify import verify as run_verify

    return run_verify(Path(mix), quick=quick, progress=progress, workers=workers)


def audit(mix: PathLike, *, ngram: int = 13, work: PathLike | None = None, executor: Executor | None = None,
          **options: Any) -> dict:
    """Leakage of the mix's held-out documents into its training shards (the report
    `mixer audit MIX --json` prints; `report["leaks"]` is the verdict, the exit status of
    `mixer audit`: a domain source's flagged documents; `report["clean"]`: nothing flagged)."""
    from mixer.checks.audit import audit as run_audit
    from mixer.checks.audit_inputs import mix_inputs

    stores, files, source_ids = mix_inputs(Path(mix))
    if work is not None:
        claim_audit_work(Path(work))
    with tempfile.TemporaryDirectory(prefix="mixer-audit-") as tmp:
        return run_audit(stores, files, Path(work or tmp), n=ngram, source_ids=source_ids,
                         executor=executor, **options) | {"audited": str(mix)}


def claim_audit_work(work: Path, flag: str = "work") -> None:
    """The audit's partial results go only into a folder that is new, empty or already its own."""
    claim_folder(work, "audit work", flag)
    work.mkdir(parents=True, exist_ok=True)
    mark_folder(work, "audit work")


def pretrain(mix: PathLike, out: PathLike, *, model: str, evaluate: bool = True, eval_samples: int | None = None,
             **settings: Any) -> dict:
    """`mixer train pretrain`: train a model from scratch on a mix (resuming an unfinished run
    in `out`), evaluate every checkpoint; run.json as written. `settings`: the keywords of
    mixer.training.runner.plan_pretrain (tokens, lr, checkpoints, seed, trainer, devices, ...)."""
    from mixer.training.runner import execute, plan_pretrain

    return execute(plan_pretrain(Path(mix), Path(out), model, **settings), evaluate=evaluate,
                   eval_samples=eval_samples)


def finetune(mix: PathLike, out: PathLike, parent: PathLike, *, kind: RunKind = "finetune", lr: str | None = None,
             lr_ratio: str | None = None, warmup: str | None = None, grid: Sequence[str] = (),
             evaluate: bool = True, eval_samples: int | None = None, **settings: Any) -> dict:
    """`mixer train finetune` (kind "replay": `mixer train replay`): finetune the run `parent`
    on a mix over a grid of rates (comma-separated values as on the command line; the paper's
    by default), early-stopped and chosen on the domain validation split; run.json as written.
    `settings`: the keywords of mixer.training.runner.plan_finetune (tokens, patience, seed, ...)."""
    from mixer.training.runner import plan_finetune_grid

    grid_plan = plan_finetune_grid(kind, Path(mix), Path(out), Path(parent), lr=lr, lr_ratio=lr_ratio, warmup=warmup,
                                   grid=list(grid), **settings)
    return grid_plan.run(evaluate=evaluate, eval_samples=eval_samples)


def evaluate(run: PathLike, *, max_samples: int | None = None, device: str | None = None) -> dict[str, list[dict]]:
    """`mixer eval`: every checkpoint of a run (or of each point of a grid) scored on the sets
    its mixes hold -> RUN/evals.jsonl, skipping those already there; the rows by run folder. A
    run trained without evaluation gets its early-stopping winner recorded."""
    from mixer.formats.run import read_run_meta
    from mixer.training.evaluate import eval_targets, evaluate_run
    from mixer.training.runner import record_best

    run = Path(run)
    results = {}
    targets = eval_targets(run)
    for r in targets:
        results[str(r)] = [e.as_row() for e in evaluate_run(r, max_samples=max_samples, device=device)]
        if read_run_meta(r).get("evaluated") is False:  # trained with --no-eval: the winner is recorded now
            record_best(r)
    if targets != [run] and (run / "run.json").is_file() and read_run_meta(run).get("evaluated") is False:
        record_best(run)  # a grid folder: its winner among the grid points
    return results


def _as_written(name: str) -> str:
    return name


def cli_flag(name: str) -> str:
    """How the command line spells a keyword in an error: holdout -> --holdout."""
    return "--" + name.replace("_", "-")


def report(runs: Sequence[PathLike], out: PathLike | None = None, *,
           spell: Callable[[str], str] = _as_written) -> dict:
    """The papers' metrics over runs (relative gain, compute multiplier, gap closed,
    forgetting); with `out`, also report.md, report.json and the plots, listed under "files".
    `spell`: how errors name a keyword (the CLI passes cli_flag: --out)."""
    from mixer.analysis.report import build_report, write_report
    from mixer.formats.run import load_runs

    if out is not None:
        claim_folder(Path(out), "report", spell("out"))
    loaded = load_runs(list(runs))
    data = build_report(loaded)
    if out is not None:
        data = data | {"files": [str(f) for f in write_report(data, loaded, Path(out))]}
    return data


def fit(runs: Sequence[PathLike], out: PathLike | None = None, *, holdout: float | None = None,
        model: str | None = None, domain: str | None = None, loss: str = "sse", starts: int = 64,
        seed: int = 0, spell: Callable[[str], str] = _as_written) -> dict:
    """The overfitting scaling law and the finetuning gain fitted to runs (fit.json's
    content); with `out`, also fit.json and fit.png, listed under "files". `spell`: as report's."""
    from mixer.analysis.fit import build_fit, fit_inputs
    from mixer.errors import UsageError
    from mixer.formats.run import load_runs

    if holdout is not None and not 0 < holdout <= 1:
        raise UsageError(f"{spell('holdout')} {holdout:g}: give the fraction as a fraction in (0, 1], e.g. 0.10 for 10%")
    if out is not None:
        claim_folder(Path(out), "fit", spell("out"))
    inputs = fit_inputs(load_runs(list(runs)), model, domain)
    result = build_fit(inputs, holdout, loss, starts=starts, seed=seed)
    if out is None:
        return result
    from mixer.analysis.plots import plot_fit
    from mixer.formats.fit import write_fit

    Path(out).mkdir(parents=True, exist_ok=True)
    write_fit(out, result)
    png = plot_fit(result, inputs["curves"], Path(out) / "fit.png")
    return result | {"files": [str(Path(out) / "fit.json"), str(png)]}
