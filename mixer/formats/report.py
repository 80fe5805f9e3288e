"""report.json: the papers' metrics `mixer report` writes (docs/formats.md, Report)."""

from __future__ import annotations

from pathlib import Path

from mixer.formats.atomic import read_output, write_versioned

REPORT_FORMAT = "mixer-report/1"


def write_report_json(out: str | Path, report: dict) -> Path:
    """OUT/report.json, atomically: the one writer of what `load_report` reads."""
    return write_versioned(out, "report.json", report, REPORT_FORMAT)


def load_report(path: str | Path) -> dict:
    """Read report.json (written by `mixer report --out`) with one-line errors naming the file."""
    return read_output(path, REPORT_FORMAT, "report", "mixer report RUN... --out DIR")
