"""fit.json: the scaling-law fit `mixer fit` writes and `mixer plan --fit` reads (docs/formats.md, Fit)."""

from __future__ import annotations

from pathlib import Path

from mixer.formats.atomic import read_versioned, write_versioned
from mixer.errors import MixerError

FIT_FORMAT = "mixer-fit/2"
# mixer-fit/1 had no units.token_unit: its law is in raw tokens (a token unit of 1).
READABLE = (FIT_FORMAT, "mixer-fit/1")


def write_fit(out: str | Path, fit: dict) -> Path:
    """OUT/fit.json, atomically: the one writer of what `load_fit` reads."""
    return write_versioned(out, "fit.json", fit, FIT_FORMAT)


def load_fit(path: str | Path) -> dict:
    """Read fit.json (written by `mixer fit`) with one-line errors naming the file."""
    f = Path(path)
    if not f.is_file():
        raise MixerError(f"{f}: no such fit file; make one with mixer fit RUN... --out DIR", exit_code=2)
    fit = read_versioned(f, READABLE, "file", "; make one with mixer fit")
    fit.setdefault("units", {}).setdefault("token_unit", 1.0)
    return fit
