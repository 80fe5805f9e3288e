"""The build's hook for the sample sets a mix holds besides shards and eval sets (the domain
validation split and the fixed domain train sample; mixer/formats/sample_sets.py): the plan's
domain store and the train documents it draws from, handed to the format's writer."""

from __future__ import annotations

from pathlib import Path

from mixer.formats.sample_sets import write_sample_sets
from mixer.mixing.spec import MixPlan


def sample_sets(plan: MixPlan, out: Path) -> list[dict]:
    """Write OUT/eval/<domain>-val.bin and <domain>-train-sample.bin; their manifest records."""
    src = plan.domain
    if src is None:
        return []
    return write_sample_sets(out, src.store, src.stream.documents, plan.spec.seq_len, plan.dtype)
