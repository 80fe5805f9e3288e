"""The names of pretraining and finetuning setups (NPT, SPT, SCPT; FT, replay) that label
report rows and plot series."""

from __future__ import annotations

from mixer.formats.run import Run


def setup_of(run: Run) -> str:
    """NPT, SPT 2% or SCPT 1% @0.9-1 for a pretraining run."""
    if run.fraction == 0:
        return "NPT"
    pct = f"{run.fraction * 100:g}%"
    return f"SPT {pct}" if run.full_window else f"SCPT {pct} @{run.window[0]:g}-{run.window[1]:g}"


def finetune_of(run: Run) -> str:
    if run.kind == "replay":
        share = 1 - run.meta["fraction"] if run.meta.get("fraction") is not None else None
        return "replay" if share is None else f"replay {share * 100:g}%"
    return "FT"

