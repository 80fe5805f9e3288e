"""A mix request as a user gives it (the command's flags, the API's keywords, a recipe
stage's keys) -> a checked MixSpec. One place, so `mixer build`, `mixer plan`, the Python
API and recipes accept and refuse the same things with the same words."""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping

from mixer.errors import UsageError, as_written
from mixer.mixing.spec import MixSpec
from mixer.units import SEED_MAX, parse_optional_count

MAX_TOKENS = 2**53  # sample counts stay exact in float64 arithmetic (fractions, windows) up to here

Named = Callable[[str], str]  # a MixSpec field -> how the user wrote it (--seed, "seed", "recipe.toml: seed")


def check_name(name: str, what: str) -> str:
    """A name that becomes a folder: one plain path component, so nothing lands outside
    the folder it is meant for."""
    if (not name or name in (".", "..") or name.startswith(".") or "/" in name or "\\" in name
            or "\0" in name or os.path.isabs(name)):
        raise UsageError(f"{what} {name!r}: must be one plain folder name (not empty, no '/', no '..', "
                         "no leading '.')")
    return name


def check_settings(spec: MixSpec, named: Named) -> None:
    """What MixSpec.validate leaves open, named as the user wrote it: `named(field)` gives
    the flag (--seed) or the recipe key (recipe.toml [[stage]] pre: seed)."""
    for key in ("seed", "subset_seed"):
        if not 0 <= getattr(spec, key) <= SEED_MAX:
            raise UsageError(f"{named(key)}: must be a whole number from 0 to {SEED_MAX}, got {getattr(spec, key)}")
    if spec.samples_per_shard is not None and spec.samples_per_shard < 1:
        raise UsageError(f"{named('samples_per_shard')}: must be at least 1, got {spec.samples_per_shard}")
    for key in ("tokens", "domain_subset_tokens"):
        v = getattr(spec, key)
        if v is not None and not 1 <= v <= MAX_TOKENS:
            raise UsageError(f"{named(key)}: must be between 1 and 2^53 (9.0e15) tokens, got {v:.4g}")
    if spec.seq_len < 1:
        raise UsageError(f"{named('seq_len')}: must be at least 1, got {spec.seq_len}")
    if not spec.max_epochs > 0:
        raise UsageError(f"{named('max_epochs')}: must be positive, got {spec.max_epochs}")
    if spec.name is not None:
        check_name(spec.name, named("name"))


def parse_window(window: str | tuple[float, float] | None, named: Named = as_written) -> tuple[float, float]:
    """"0.9:1.0" (or a pair) -> (0.9, 1.0); None -> the whole run."""
    if window is None:
        return (0.0, 1.0)
    try:
        a, b = window.split(":") if isinstance(window, str) else window
        return (float(a), float(b))
    except (ValueError, TypeError):
        raise UsageError(f"{named('window')}: expected A:B such as 0.9:1.0, got {window!r}") from None


def spec_from_fields(stores: str, fields: Mapping[str, Any], named: Named = as_written) -> MixSpec:
    """A checked MixSpec from MixSpec's fields as a user gives them: `tokens` and
    `domain_subset_tokens` as counts ("200B") or ints, `window` as "A:B", and `mix` (NAME ->
    fraction, or (NAME, fraction) pairs; the first is the domain) in place of `domain` and `fraction`."""
    fields = dict(fields)
    mix = fields.pop("mix", None)
    if mix:
        if fields.get("domain") is not None or fields.get("fraction") is not None:
            raise UsageError(f"{named('mix')} names the domain and its fraction: drop "
                             f"{named('domain')}/{named('fraction')}")
        pairs = list(mix.items()) if isinstance(mix, Mapping) else [tuple(p) for p in mix]  # pairs keep repeats
        (fields["domain"], fields["fraction"]), *extra = pairs
        fields["extra"] = extra
    for key in ("tokens", "domain_subset_tokens"):
        if key in fields:
            fields[key] = parse_optional_count(fields[key], named(key))
    if "window" in fields:
        fields["window"] = parse_window(fields["window"], named)
    try:
        spec = MixSpec(stores=stores, **fields)
    except TypeError as e:  # an unknown keyword (Python API): name it, not the dataclass's signature
        raise UsageError(f"mix request: {e}".replace("MixSpec.__init__() ", "")) from None
    check_settings(spec, named)
    return spec
