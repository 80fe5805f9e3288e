"""fit.json: the scaling-law fit `mixer fit` writes and `mixer plan --fit` reads (docs/formats.md, Fit)."""

from __future__ import annotations

from pathlib import Path

from mixer.formats.atomic import read_output, write_versioned

FIT_FORMAT = "mixer-fit/2"
# mixer-fit/1 had no units.token_unit: its law is in raw tokens (a token unit of 1).
READABLE = (FIT_FORMAT, "mixer-fit/1")


def write_fit(out: str | Path, fit: dict) -> Path:
    """OUT/fit.json, atomically: the one writer of what `load_fit` reads."""
    return write_versioned(out, "fit.json", fit, FIT_FORMAT)


def load_fit(path: str | Path) -> dict:
    """Read fit.json (written by `mixer fit`) with one-line errors naming the file."""
    fit = read_output(path, READABLE, "fit file", "mixer fit RUN... --out DIR")
    fit.setdefault("units", {}).setdefault("token_unit", 1.0)
    return fit
