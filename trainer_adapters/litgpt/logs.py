"""LitGPT's output read back: the subprocess log, and its CSV metrics merged into one table."""

from __future__ import annotations

import csv
import re
import subprocess
from pathlib import Path
from typing import Callable

from mixer.formats.atomic import atomic_open

_ERROR = re.compile(r"^(?:[\w.]+\.)?\w*(?:Error|Exception|Interrupt)\b:?.*|^error: .*", re.IGNORECASE)


# LitGPT's line per logged iteration: "Epoch 1 | iter 40 step 20 | loss train: 6.123, val: n/a | ..."
_STEP = re.compile(r"\biter \d+ step (\d+) \| loss train: ([-+0-9.eE]+|nan|inf)")


def step_of_line(line: str) -> tuple[int, float] | None:
    """(optimizer step, train loss) of a LitGPT iteration line; None for any other line."""
    m = _STEP.search(line)
    return (int(m.group(1)), float(m.group(2))) if m else None


def run_logged(cmd: list[str], log: Path, env: dict[str, str], echo: bool = False,
               on_line: Callable[[str], None] | None = None) -> int:
    """Run `cmd` with stdout+stderr appended to `log` (kept across resumes); its exit code.
    `on_line` sees every line as it comes (the status line reads LitGPT's steps from them)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True, bufsize=1)
        assert p.stdout is not None
        for line in p.stdout:
            f.write(line)
            if echo:
                print(line, end="", flush=True)
            if on_line is not None:
                on_line(line)
        return p.wait()


def last_error_line(log: Path) -> str:
    """The line that says what went wrong: the last exception line, else the last non-empty one."""
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()] if log.exists() else []
    for i in range(len(lines) - 1, -1, -1):
        if _ERROR.match(lines[i]):
            if lines[i].endswith(":"):  # jsonargparse: a heading, the detail on the lines below
                return " ".join(lines[i:])[:400]
            return lines[i]
    return lines[-1] if lines else "no output"


def metrics_files(out_dir: Path) -> list[Path]:
    """LitGPT's CSV logs, oldest first (a resumed run adds a version_N folder)."""
    files = list((out_dir / "logs" / "csv").glob("version_*/metrics.csv"))
    return sorted(files, key=lambda p: int(p.parent.name.split("_")[1]))


def merge_metrics(out_dir: Path, dest: Path) -> list[dict]:
    """Concatenate the CSV logs into `dest` (union of columns); the rows."""
    rows: list[dict] = []
    for f in metrics_files(out_dir):
        with open(f, newline="") as fh:
            rows += list(csv.DictReader(fh))
    if not rows:
        return []
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with atomic_open(dest, "w") as fh:
        w = csv.DictWriter(fh, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)
    return rows


def train_table(rows: list[dict]) -> dict[int, dict]:
    """Tokens seen -> {train_loss, lr} of the iteration that reached them.

    Keyed by tokens because the CSV's `step` column is the logger's (iteration - 1), which
    overwrites LitGPT's optimizer step; total_tokens is unambiguous across accumulation.
    """
    out: dict[int, dict] = {}
    for r in rows:
        if r.get("loss") and r.get("total_tokens"):
            out[int(float(r["total_tokens"]))] = {"train_loss": float(r["loss"]), "lr": float(r["learning_rate"])}
    return out
