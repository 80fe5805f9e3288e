"""The Python API under the command line: `from mixer import tokenize, plan, build, verify, audit,
pretrain, finetune, evaluate, report, fit`.

Each function does what its command does and returns what the command prints with
`--json` (plain dicts and lists), without printing; errors are `mixer.errors.MixerError`
(one line, naming the file or flag). docs/api.md walks through a whole study.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from mixer.executors import Executor
from mixer.formats.run import RunKind
from mixer.errors import UsageError, as_written
from mixer.formats.folders import claim_folder, mark_folder
from mixer.units import parse_count, parse_optional_count

if TYPE_CHECKING:  # the stage modules import numpy, datatrove, torch's neighbours: `import mixer` stays light
    from mixer.checks.verify import VerifyReport
    from mixer.mixing.build import BuildStatus
    from mixer.mixing.spec import PlanSummary
    from mixer.training.config import FinetuneConfig, PretrainConfig
    from mixer.training.runner import FinetuneGrid, RunPlan

PathLike = str | Path


# Keywords whose flag is not the keyword itself with dashes.
_FLAGS = {"domain_subset_tokens": "--domain-subset", "inputs": "--input"}


def cli_flag(name: str) -> str:
    """How the command line spells a keyword in an error: holdout -> --holdout."""
    return _FLAGS.get(name, "--" + name.replace("_", "-"))


def tokenize(recipe: PathLike | None = None, *, stores: PathLike = "stores", source: str | None = None,
             overrides: dict | None = None, force: bool = False, executor: Executor | None = None,
             tokenizer_backend: str = "auto", spell: Callable[[str], str] = as_written, **fields: Any) -> list[dict]:
    """Corpora -> token stores. Either a recipe (a path or a shipped name such as "samples";
    `source` picks one of its sources; `overrides` replaces settings of its sources, paths
    absolute) or one source described by `fields` (`name`, `role`, `inputs`, `tokenizer`,
    `test_tokens` ("5M" or an int), ... as in a recipe's [[source]] table).
    `tokenizer_backend`: auto, hf or tiktoken (the same ids either way; checked).
    Returns each source's store.json content with a `status`."""
    from mixer.ingest.sources import SourceSpec, load_sources, select_source
    from mixer.ingest.tokenize import RunOptions, tokenize_source
    from mixer.recipe_catalog import find_recipe, show_recipe

    if recipe is not None:
        overrides = _source_overrides(overrides or {}, spell)
        path = find_recipe(recipe)
        if "inputs" in overrides and source is None and len(show_recipe(path)["sources"]) > 1:
            raise UsageError(f"{spell('inputs')} with a recipe of several sources: pick the one it is for with "
                             f"{spell('source')}")
        specs = select_source(load_sources(path, overrides), source, path)
    else:
        if overrides:
            raise UsageError(f"{spell('set')} {next(iter(overrides))}: overrides a recipe's setting; without one "
                             "give the setting itself")
        if "test_tokens" in fields:
            fields["test_tokens"] = parse_optional_count(fields["test_tokens"], spell("test_tokens"))
        for key in ("name", "role", "inputs", "tokenizer"):
            if not fields.get(key):
                raise UsageError(f"{spell(key)} is required (or give {spell('recipe')} FILE)")
        specs = [SourceSpec(**fields).validate()]
    run = RunOptions(executor=executor or Executor(), force=force, tokenizer_backend=tokenizer_backend).validate()
    return [tokenize_source(spec, Path(stores), run) for spec in specs]


def _source_overrides(overrides: dict, spell: Callable[[str], str]) -> dict:
    """A recipe's settings as replaced from outside it: paths absolute (from here, not from the
    recipe's folder), the tokenizer found (a folder or a cached name becomes its file), counts
    parsed."""
    from mixer.ingest.vocab import find_tokenizer

    out = dict(overrides)
    if "inputs" in out:
        ins = out["inputs"] if isinstance(out["inputs"], list) else [out["inputs"]]
        out["inputs"] = [str(Path(x).expanduser().absolute()) for x in ins]
    if "tokenizer" in out:
        out["tokenizer"] = str(find_tokenizer(str(out["tokenizer"])))
    if "test_tokens" in out:
        out["test_tokens"] = parse_optional_count(out["test_tokens"], spell("test_tokens"))
    return out


def _spec(stores: PathLike, fields: dict, spell: Callable[[str], str]) -> Any:
    from mixer.mixing.request import spec_from_fields

    spec = spec_from_fields(str(Path(stores).resolve()), fields, spell)
    spec.validate()
    return spec


def plan(*, stores: PathLike = "stores", spell: Callable[[str], str] = as_written, **fields: Any) -> "PlanSummary":
    """What a build would produce (counts, epochs, fractions per source), writing nothing.
    `fields` are MixSpec's: domain, general, fraction, epochs, replay, tokens ("200B" or an
    int), seq_len, seed, window ("0.9:1.0"), ...; or `mix={"music": 0.02, "proofs": 0.01}`.
    `spell`: how errors name a keyword (the CLI passes cli_flag: --seq-len)."""
    from mixer.mixing.spec import resolve

    return resolve(_spec(stores, fields, spell)).summary()


def forecast(fit: PathLike, tokens: int | str, *, fractions: Sequence[float] | None = None,
             domain_tokens: int | str | None = None, domain: str | None = None, stores: PathLike = "stores",
             extrapolate: bool = False, plot: PathLike | None = None,
             spell: Callable[[str], str] = as_written) -> dict:
    """`mixer plan --fit`: the loss a fitted law (fit.json) forecasts at each fraction for a
    budget of `tokens` and a domain of `domain_tokens` (or the train split of the store
    `domain`); the paper's fractions by default, within the fitted range unless `extrapolate`.
    With `plot`, also the forecast's PNG there."""
    from mixer.analysis.forecast import forecast as run_forecast, plot_forecast
    from mixer.formats.fit import load_fit

    d_tokens = parse_optional_count(domain_tokens, spell("domain_tokens"))
    if d_tokens is None and domain:
        from mixer.formats.store import open_store

        d_tokens = open_store(Path(stores), domain).n_tokens("train")
    result = run_forecast(load_fit(fit), parse_count(tokens, spell("tokens")), list(fractions) if fractions else None,
                          d_tokens, extrapolate=extrapolate)
    if plot is not None:
        plot_forecast(result, Path(plot))
    return result


def build(out: PathLike | None = None, *, stores: PathLike = "stores", recipe: PathLike | None = None,
          overrides: dict | None = None, shards: str | None = None, executor: Executor | None = None,
          progress: bool = False, recheck_stores: bool = False, spell: Callable[[str], str] = as_written,
          **fields: Any) -> "BuildStatus | dict":
    """Write a mix (or, with `recipe`, every stage of a multi-stage recipe; `overrides` sets
    its vars) into `out` (default ./mixes/<name>). Returns the build status with the manifest
    once every shard exists. `fields`: as plan's."""
    ex = (executor or Executor()).validate()
    if recipe is not None:
        from mixer.mixing.stages import build_recipe
        from mixer.recipe_catalog import find_recipe

        return build_recipe(find_recipe(recipe), Path(stores), Path(out) if out else None, overrides,
                            executor=ex, progress=progress, recheck_stores=recheck_stores)
    from mixer.mixing.build import build as run_build
    from mixer.mixing.request import check_name

    spec = _spec(stores, fields, spell)
    if out is None:  # ./mixes/<name>: the name must not lead out of ./mixes
        out = Path("mixes") / check_name(spec.default_name(), spell("name") if fields.get("name")
                                         else "mix name (from the flags)")
    return run_build(spec, Path(out), shards=shards, executor=ex, progress=progress, recheck_stores=recheck_stores)


def verify(mix: PathLike, *, quick: bool = False, workers: int | None = None, progress: bool = False) -> "VerifyReport | dict":
    """Re-derive a mix from its stores and compare every claim of its manifest; raises
    MixerError on the first difference. A token store (a folder with store.json) instead:
    its checksums, indexes and format (the report has "store" where a mix's has "mix").
    workers: shards checked at once (default: one per core, at most 8)."""
    from mixer.checks.verify_store import is_store, verify_store

    if is_store(Path(mix)):
        return verify_store(Path(mix))
    from mixer.checks.verify import verify as run_verify

    return run_verify(Path(mix), quick=quick, progress=progress, workers=workers)


def similarity(a: PathLike, b: PathLike, *, stores: PathLike = "stores", split_a: str = "train",
               split_b: str = "train", tokens: int | str = "1.5M", seed: int = 0,
               spell: Callable[[str], str] = as_written) -> dict:
    """Unigram, bigram and trigram Jensen-Shannon divergence (bits) between samples of two
    token stores, each a name in `stores` or a store folder."""
    from mixer.checks.similarity import similarity as run_similarity
    from mixer.formats.store import open_store

    sa, sb = (open_store(p.parent, p.name) if (p := Path(x)).joinpath("store.json").is_file()
              else open_store(Path(stores), str(x)) for x in (a, b))
    return run_similarity(sa, sb, split_a, split_b, parse_count(tokens, spell("tokens")), seed)


def audit(mix: PathLike | None = None, *, heldout: Sequence[PathLike] = (), train: Sequence[PathLike] = (),
          seq_len: int | None = None, dtype: str | None = None, ngram: int = 13, work: PathLike | None = None,
          executor: Executor | None = None, spell: Callable[[str], str] = as_written, **options: Any) -> dict:
    """Leakage of the mix's held-out documents into its training shards (the report
    `mixer audit MIX --json` prints; `report["leaks"]` is the verdict, the exit status of
    `mixer audit`: a domain source's flagged documents; `report["clean"]`: nothing flagged).
    Instead of a mix: `heldout` stores and `train` files (globs; samples of `seq_len`+1
    tokens of `dtype`, or flat token files). `options`: mixer.checks.audit.audit's
    thresholds (near_copy, min_quote, strict, ...). Partial results go to `work` (needed by
    an executor other than local), else a temporary folder."""
    from mixer.checks.audit import audit as run_audit
    from mixer.checks.audit_inputs import audit_inputs

    stores, files, source_ids, label = audit_inputs(mix, heldout, train, seq_len, dtype)
    if executor is not None and executor.kind != "local" and work is None:
        raise UsageError(f"{spell('executor')} {executor.kind}: needs {spell('work')} DIR on a filesystem every "
                         "task can reach")
    if work is not None:
        _claim_audit_work(Path(work), spell("work"))
    with tempfile.TemporaryDirectory(prefix="mixer-audit-") as tmp:
        return run_audit(stores, files, Path(work or tmp), n=ngram, source_ids=source_ids,
                         executor=executor, **options) | {"audited": label}


def _claim_audit_work(work: Path, flag: str = "work") -> None:
    """The audit's partial results go only into a folder that is new, empty or already its own."""
    claim_folder(work, "audit work", flag)
    work.mkdir(parents=True, exist_ok=True)
    mark_folder(work, "audit work")


def _config(cls: type, config: Any, settings: dict) -> Any:
    from mixer.training.config import config_from

    if config is None:
        return config_from(cls, settings)
    if settings:
        raise UsageError(f"give a {cls.__name__} or its settings ({', '.join(settings)}), not both")
    return config


def pretrain_plan(mix: PathLike, out: PathLike, config: "PretrainConfig | None" = None, *, dry_run: bool = False,
                  **settings: Any) -> "RunPlan":
    """The pretraining run `mixer train pretrain` would start (or resume), planned, not run:
    `.run()` trains it, `.config_text()` is the trainer's config, `.write_sbatch()` its Slurm
    job. `config`, or its fields as keywords (model=, tokens=, checkpoints=, seed=, trainer=,
    devices=, ...: mixer.training.config.PretrainConfig and Machine)."""
    from mixer.training.config import PretrainConfig
    from mixer.training.runner import plan_pretrain

    return plan_pretrain(Path(mix), Path(out), _config(PretrainConfig, config, settings), dry_run=dry_run)


def pretrain(mix: PathLike, out: PathLike, config: "PretrainConfig | None" = None, *, evaluate: bool = True,
             eval_samples: int | None = None, echo: bool = False, **settings: Any) -> dict:
    """`mixer train pretrain`: train a model from scratch on a mix (resuming an unfinished run
    in `out`), evaluate every checkpoint; run.json as written. Settings: as pretrain_plan's."""
    return pretrain_plan(mix, out, config, **settings).run(echo=echo, evaluate=evaluate, eval_samples=eval_samples)


def finetune_plan(mix: PathLike, out: PathLike, parent: PathLike, config: "FinetuneConfig | None" = None, *,
                  kind: RunKind = "finetune", lr: str | None = None, lr_ratio: str | None = None,
                  warmup: str | None = None, grid: Sequence[str] = (), dry_run: bool = False,
                  **settings: Any) -> "FinetuneGrid":
    """The finetune (kind "replay": replay) of the run `parent` on a mix, over a grid of rates
    (comma-separated values as on the command line; the paper's by default), planned, not run
    (`.run()`, `.points()`, `.write_sbatch()`). `config`, or its fields as keywords (patience=,
    tokens=, seed=, select_on=, schedule=, ...: mixer.training.config.FinetuneConfig)."""
    from mixer.training.config import FinetuneConfig
    from mixer.training.runner import plan_finetune_grid

    return plan_finetune_grid(kind, Path(mix), Path(out), Path(parent), _config(FinetuneConfig, config, settings),
                              lr=lr, lr_ratio=lr_ratio, warmup=warmup, grid=list(grid), dry_run=dry_run)


def finetune(mix: PathLike, out: PathLike, parent: PathLike, config: "FinetuneConfig | None" = None, *,
             kind: RunKind = "finetune", lr: str | None = None, lr_ratio: str | None = None, warmup: str | None = None,
             grid: Sequence[str] = (), evaluate: bool = True, eval_samples: int | None = None, echo: bool = False,
             **settings: Any) -> dict:
    """`mixer train finetune` (kind "replay": `mixer train replay`): every grid point trained,
    early-stopped and chosen on the domain validation split; run.json as written."""
    plans = finetune_plan(mix, out, parent, config, kind=kind, lr=lr, lr_ratio=lr_ratio, warmup=warmup, grid=grid,
                          **settings)
    return plans.run(echo=echo, evaluate=evaluate, eval_samples=eval_samples)


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


def report(runs: Sequence[PathLike], out: PathLike | None = None, *,
           spell: Callable[[str], str] = as_written) -> dict:
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
        seed: int = 0, spell: Callable[[str], str] = as_written) -> dict:
    """The overfitting scaling law and the finetuning gain fitted to runs (fit.json's
    content); with `out`, also fit.json and fit.png, listed under "files". `spell`: as report's."""
    from mixer.analysis.fit import build_fit, fit_inputs
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
