"""Source recipes: the `[[source]]` tables of a recipe TOML file, as validated dataclasses.

A recipe is a convenience on top of the `mixer tokenize` flags: both produce the same
`SourceSpec`, and the spec (not the flags) is what `store.json` records. Stage tables
(`[[stage]]`) are parsed elsewhere (the build); here they are left alone.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mixer.errors import MixerError, UsageError
from mixer.formats.store import ROLES, Role  # noqa: F401 - Role: the type of a source's role
from mixer.units import SEED_MAX, parse_count

BAD_RECORD_POLICIES = ("skip", "fail")
DEFAULT_TEST_FRACTION = 0.01
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")

# flag spelled on the command line for each field, so a flag-built spec names the flag in errors
_FLAGS = {
    "name": "--source", "role": "--role", "inputs": "--input", "text_key": "--text-key", "id_key": "--id-key",
    "tokenizer": "--tokenizer", "test_fraction": "--test-fraction", "test_tokens": "--test-tokens",
    "seed": "--seed", "near_duplicates": "--near-duplicates", "on_bad_record": "--on-bad-record", "eos": "--eos",
    "text_files": "--text-files",
}


@dataclass
class SourceSpec:
    """One corpus to tokenize into `STORES/<name>`.

    `origin` is the recipe file it came from (None: command-line flags); errors name it.
    `near_duplicates=None` means the role's default (on for domain sources).
    `text_files`: read every input file that is not JSON lines, parquet, Arrow or `.txt`
    as one plain-text document (without it such files in a folder or glob are an error; a
    file named on its own is read as text either way).
    """

    name: str
    role: Role
    inputs: list[str]
    tokenizer: str
    text_key: str = "text"
    id_key: str = "id"
    test_fraction: float | None = None
    test_tokens: int | None = None
    seed: int = 0
    near_duplicates: bool | None = None
    on_bad_record: str = "fail"
    eos: str | None = None
    text_files: bool = False
    origin: Path | None = field(default=None, compare=False)
    overrides: dict[str, Any] = field(default_factory=dict, compare=False)  # the command line's, over the recipe

    @property
    def use_near_duplicates(self) -> bool:
        return self.role == "domain" if self.near_duplicates is None else self.near_duplicates

    @property
    def heldout_fraction(self) -> float | None:
        """The requested held-out fraction (the default when neither size is given)."""
        if self.test_tokens is not None:
            return None
        return DEFAULT_TEST_FRACTION if self.test_fraction is None else self.test_fraction

    def where(self, key: str) -> str:
        """How to name a field in an error: `recipe.toml: source 'music': test_fraction` or `--test-fraction`."""
        if self.origin is None:
            return _FLAGS.get(key, key)
        return f"{self.origin}: source {self.name!r}: {key}"

    @property
    def text_files_flag(self) -> str:
        """How to ask for plain-text files where this spec came from, for error messages."""
        return "--text-files" if self.origin is None else f"text_files = true (in {self.origin}, source {self.name!r})"

    def fail(self, key: str, problem: str) -> MixerError:
        message = f"{self.where(key)}: {problem}"
        return UsageError(message) if self.origin is None else MixerError(message)

    def validate(self) -> "SourceSpec":
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise self.fail("name", f"{self.name!r} is not a store name (letters, digits, '.', '_', '-')")
        if self.role not in ROLES:
            raise self.fail("role", f"{self.role!r} is not one of {', '.join(ROLES)}")
        if not self.inputs or not all(isinstance(p, str) and p for p in self.inputs):
            raise self.fail("inputs", "needs at least one file, glob or folder")
        if not isinstance(self.tokenizer, str) or not self.tokenizer:
            raise self.fail("tokenizer", "needs the path of a tokenizer.json")
        for key in ("text_key", "id_key"):
            if not isinstance(getattr(self, key), str) or not getattr(self, key):
                raise self.fail(key, "must be a non-empty string")
        if self.test_fraction is not None and self.test_tokens is not None:
            raise self.fail("test_tokens", "give test_fraction or test_tokens, not both")
        if self.test_fraction is not None:
            if isinstance(self.test_fraction, bool) or not isinstance(self.test_fraction, (int, float)):
                raise self.fail("test_fraction", f"{self.test_fraction!r} is not a number")
            if not 0 < self.test_fraction < 1:
                raise self.fail("test_fraction", f"{self.test_fraction} must be between 0 and 1 (exclusive)")
        if self.test_tokens is not None:
            if isinstance(self.test_tokens, bool) or not isinstance(self.test_tokens, int) or self.test_tokens <= 0:
                raise self.fail("test_tokens", f"{self.test_tokens!r} must be a positive whole number of tokens")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed <= SEED_MAX:
            raise self.fail("seed", f"{self.seed!r} must be a whole number from 0 to {SEED_MAX}")
        if self.near_duplicates is not None and not isinstance(self.near_duplicates, bool):
            raise self.fail("near_duplicates", f"{self.near_duplicates!r} must be true or false")
        if self.on_bad_record not in BAD_RECORD_POLICIES:
            raise self.fail("on_bad_record", f"{self.on_bad_record!r} is not one of {', '.join(BAD_RECORD_POLICIES)}")
        if not isinstance(self.text_files, bool):
            raise self.fail("text_files", f"{self.text_files!r} must be true or false")
        if self.eos is not None and (not isinstance(self.eos, str) or not self.eos):
            raise self.fail("eos", "must be the text of the end-of-document token, e.g. '<|endoftext|>'")
        return self

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["origin"] = str(self.origin) if self.origin else None
        return d


def expand_vars(text: str, where: str, recipe: str | None = None) -> str:
    """Expand `${VAR}` and `${VAR:-default}`; `${MIXER_CACHE}` defaults to ~/.cache/mixer."""

    def one(m: re.Match) -> str:
        var, default = m.group(1), m.group(2)
        value = os.environ.get(var)
        if value:
            return value
        if default is not None:
            return default
        if var == "MIXER_CACHE":
            return str(Path("~/.cache/mixer").expanduser())
        show = f"`mixer recipes show {recipe}` says what it points to; " if recipe else ""
        raise MixerError(f"{where}: ${{{var}}} is not set (set it: {show}or write ${{{var}:-default}})")

    return os.path.expanduser(_VAR.sub(one, text))


def _resolve_path(text: str, base: Path, where: str, recipe: str | None = None) -> str:
    p = expand_vars(text, where, recipe)
    return p if os.path.isabs(p) else str(base / p)


# What may be overridden on the command line with --recipe (flags or --set KEY=VALUE): where
# the data is, the tokenizer a lab uses, and the held-out sizes; what a source *is* (its name,
# role, keys) stays the recipe's.
OVERRIDABLE = ("inputs", "tokenizer", "test_fraction", "test_tokens", "seed", "near_duplicates", "text_files",
               "on_bad_record", "eos")


def parse_overrides(pairs: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """--set KEY=VALUE pairs for a source recipe (values as TOML would read them, else text)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(f"--set {pair!r}: expected KEY=VALUE, e.g. --set test_tokens=1M")
        if key not in OVERRIDABLE:
            raise UsageError(f"--set {key}: not a source setting a recipe lets you override "
                             f"({', '.join(OVERRIDABLE)})")
        try:
            out[key] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            out[key] = value
    return out


def load_sources(path: str | os.PathLike, overrides: dict[str, Any] | None = None) -> list[SourceSpec]:
    """Read every `[[source]]` table of a recipe file into validated specs; `overrides`
    (OVERRIDABLE keys, paths already absolute) replace the recipe's values in every table."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"--recipe {path}: no such recipe file")
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise MixerError(f"{path}: not valid TOML ({e})") from None
    except UnicodeDecodeError:
        raise MixerError(f"{path}: not UTF-8 text") from None
    tables = doc.get("source", [])
    if not isinstance(tables, list) or not tables:
        raise MixerError(f"{path}: no [[source]] tables (a source recipe needs at least one)")
    base = path.resolve().parent
    known = set(_FLAGS)
    specs: list[SourceSpec] = []
    for i, table in enumerate(tables):
        label = f"{path}: source {table.get('name', f'#{i + 1}')!r}"
        if overrides and ({"test_fraction", "test_tokens"} & set(overrides)):  # one held-out size replaces the other
            table = {k: v for k, v in table.items() if k not in ("test_fraction", "test_tokens")}
        table = {**table, **(overrides or {})}
        unknown = sorted(set(table) - known)
        if unknown:
            raise MixerError(f"{label}: unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})")
        for key in ("name", "role", "inputs", "tokenizer"):
            if key not in table:
                raise MixerError(f"{label}: missing required key {key!r}")
        inputs = table["inputs"]
        if isinstance(inputs, str):
            inputs = [inputs]
        if not isinstance(inputs, list) or not all(isinstance(x, str) for x in inputs):
            raise MixerError(f"{label}: inputs must be a list of paths or globs")
        values = {k: expand_vars(v, f"{label}: {k}", path.stem) if isinstance(v, str) else v for k, v in table.items()}
        if isinstance(values.get("test_tokens"), str):  # "10M", as on the command line, or from ${VAR}
            try:
                values["test_tokens"] = parse_count(values["test_tokens"], f"{label}: test_tokens")
            except UsageError as e:
                raise MixerError(str(e)) from None
        values["inputs"] = [_resolve_path(x, base, f"{label}: inputs", path.stem) for x in inputs]
        values["tokenizer"] = _resolve_path(table["tokenizer"], base, f"{label}: tokenizer", path.stem) if isinstance(
            table["tokenizer"], str
        ) else table["tokenizer"]
        specs.append(SourceSpec(**values, origin=path, overrides=dict(overrides or {})).validate())
    names = [s.name for s in specs]
    for n in names:
        if names.count(n) > 1:
            raise MixerError(f"{path}: source {n!r} is defined {names.count(n)} times")
    return specs


def select_source(specs: list[SourceSpec], name: str | None, recipe: Path) -> list[SourceSpec]:
    """All sources of a recipe, or the one named by --source."""
    if name is None:
        return specs
    chosen = [s for s in specs if s.name == name]
    if not chosen:
        raise UsageError(f"--source {name}: not in {recipe} (sources there: {', '.join(s.name for s in specs)})")
    return chosen
