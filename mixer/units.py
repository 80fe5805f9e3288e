"""Token counts as people write them: 200B, 1.5M, 300k."""

from __future__ import annotations

from mixer.errors import UsageError

_SUFFIX = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9, "T": 10**12}


def parse_count(text: str | int, what: str = "--tokens") -> int:
    """Parse '200B' -> 200_000_000_000. Decimal suffixes (the papers count tokens in powers of ten)."""
    if isinstance(text, int):
        return text
    s = str(text).strip().replace("_", "").upper()
    suffix = s[-1] if s and s[-1] in _SUFFIX else ""
    number = s[: len(s) - len(suffix)]
    try:
        value = float(number) * _SUFFIX[suffix]
    except ValueError:
        raise UsageError(f"{what}: cannot read {text!r} as a count (use e.g. 200B, 1.5M, 300K)") from None
    if not 0 < value < float("inf"):  # also NaN
        raise UsageError(f"{what}: {text!r} must be a positive, finite count")
    return int(round(value))


def parse_optional_count(text: str | int | None, what: str = "--tokens") -> int | None:
    """parse_count, with None (a count not given) passed through."""
    return None if text is None else parse_count(text, what)


def format_count(n: float) -> str:
    """200_000_000_000 -> '200B' (3 significant digits)."""
    for suffix, scale in (("T", 10**12), ("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{suffix}"
    return f"{n:.0f}" if float(n).is_integer() else f"{n:.3g}"


# Seeds feed numpy generators and 64-bit hashes; 32 bits is every seed a study needs, and a
# bound here keeps a typo such as 2**70 a one-line error instead of an overflow deep inside.
SEED_MAX = 2**32 - 1


def check_seed(seed: object, what: str = "--seed") -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= SEED_MAX:
        raise UsageError(f"{what} {seed!r}: must be a whole number from 0 to {SEED_MAX}")
    return seed
