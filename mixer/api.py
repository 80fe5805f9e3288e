"""The Python API under the command line: `from mixer import tokenize, plan, build, verify, audit, report, fit`.

Each function does what its command does and returns what the command prints with
`--json` (plain dicts and lists), without printing; errors are `mixer.errors.MixerError`
(one line, naming the file or flag). docs/api.md walks through a whole study.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Sequence

from mixer.executors import Executor
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


def report(runs: Sequence[PathLike], out: PathLike | None = None) -> dict:
    """The papers' metrics over runs (relative gain, compute multiplier, gap closed,
    forgetting); with `out`, also report.md, report.json and the plots."""
    from mixer.analysis.report import build_report, write_report
    from mixer.formats.run import load_runs

    if out is not None:
        claim_folder(Path(out), "report", "out")
    loaded = load_runs(list(runs))
    data = build_report(loaded)
    if out is not None:
        write_report(data, loaded, Path(out))
    return data


def fit(runs: Sequence[PathLike], out: PathLike | None = None, *, holdout: float | None = None,
        model: str | None = None, domain: str | None = None, loss: str = "sse", starts: int = 64,
        seed: int = 0) -> dict:
    """The overfitting scaling law and the finetuning gain fitted to runs (fit.json's
    content); with `out`, also fit.json and fit.png."""
    from mixer.analysis.fit import build_fit, fit_inputs
    from mixer.formats.run import load_runs

    if out is not None:
        claim_folder(Path(out), "fit", "out")
    inputs = fit_inputs(load_runs(list(runs)), model, domain)
    result = build_fit(inputs, holdout, loss, starts=starts, seed=seed)
    if out is not None:
        from mixer.analysis.plots import plot_fit
        from mixer.formats.atomic import write_json

        Path(out).mkdir(parents=True, exist_ok=True)
        write_json(Path(out) / "fit.json", result)
        plot_fit(result, inputs["curves"], Path(out) / "fit.png")
    return result
