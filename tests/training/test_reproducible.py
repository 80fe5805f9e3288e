"""The same command twice gives bitwise the same losses on CPU with one thread per run, also
when the two run at the same time (as examples/study.py runs its chains, --jobs at a time).
tests/training/test_portable_mix.py pins the same, one after the other, for a whole chain
(pretrain, finetune, eval, report) run where its mixes were built and again on moved copies."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest
from mixutil import spt_and_ft_mixes

pytestmark = pytest.mark.slow


def at_once(*commands: list[str]) -> None:
    procs = [subprocess.Popen([sys.executable, "-m", "mixer", *c], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True) for c in commands]
    for p in procs:
        _, err = p.communicate()
        assert p.returncode == 0, err[-3000:]


def losses(run) -> dict:
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    return {"train": [(r["total_tokens"], r["loss"]) for r in rows if r.get("loss")],
            "val": [r["val_loss"] for r in rows if r.get("val_loss")],
            "evals": [{k: v for k, v in json.loads(x).items()} for x in (run / "evals.jsonl").read_text().splitlines()]}


def test_two_runs_of_one_command_at_the_same_time_give_the_same_bits(tmp_path):
    mixes = spt_and_ft_mixes(tmp_path)
    runs = [tmp_path / "a", tmp_path / "b"]
    at_once(*[["train", "pretrain", str(mixes["spt"]), "--model", "tiny", "--out", str(r / "pre"), "--checkpoints",
               "2", "--tokens", "8K", "--threads", "1"] for r in runs])
    a, b = losses(runs[0] / "pre"), losses(runs[1] / "pre")
    assert len(a["train"]) == 15 and a["val"] and len(a["evals"]) == 3 and a == b
    env = json.loads((runs[0] / "pre" / "run.json").read_text())["environment"]
    assert env["threads"] == 1 and env["torch"] and env["device"] == "cpu"
