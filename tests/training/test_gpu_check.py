"""`make gpu-check` (examples/gpu_check.sh) end to end on CPU with --cpu: the same steps a GPU
run takes (GPT-2 stores of the sample corpora, an SPT and a finetune mix, pretrain with
--no-eval then `mixer eval`, a finetune chosen on the validation split, report), with the
tiny model; it must print each run's throughput and where its time went."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def test_the_gpu_check_runs_end_to_end_on_cpu(sample_cache, tmp_path):
    work = tmp_path / "check"
    env = {**os.environ, "MIXER_CACHE": str(sample_cache), "PYTHON": sys.executable}
    p = subprocess.run(["bash", str(ROOT / "examples" / "gpu_check.sh"), "--cpu", str(work)], capture_output=True,
                       text=True, env=env, cwd=tmp_path)
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    out = p.stdout
    for run in ("spt", "ft"):
        meta = json.loads((work / "runs" / run / "run.json").read_text())
        assert meta["status"] == "done" and meta["evaluated"] is True
        t = meta["time"]
        assert t["train_steps"] > 0 and t["startup"] > 0
        assert (t["evaluation"] is None) == (run == "spt")  # the pretraining ran with --no-eval
        assert meta["throughput"]["tokens_per_second"] > 0 and meta["throughput"]["device"] == "cpu"
        assert meta["throughput"]["mfu"] is None  # no peak for a CPU
    pre = json.loads((work / "runs" / "spt" / "run.json").read_text())
    ft = json.loads((work / "runs" / "ft" / "run.json").read_text())
    assert (work / "runs" / "spt" / "evals.jsonl").is_file()  # evaluated by `mixer eval` after --no-eval
    assert ft["best"]["selected_on"] == "val" and (work / "report" / "report.json").is_file()
    assert "warmup_capped" in ft["hparams"] or ft["hparams"]["warmup"] <= max(1, ft["hparams"]["steps"] // 10)
    assert pre["model"] == "tiny" and json.loads((work / "mixes" / "spt" / "manifest.json").read_text())["seq_len"] == 128
    assert out.count("tokens/s") >= 2 and out.count("time: ") >= 2 and "MFU n/a" in out
    # a second run replaces its own folder, but never one it did not make
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.txt").write_text("keep me")
    p = subprocess.run(["bash", str(ROOT / "examples" / "gpu_check.sh"), "--cpu", str(tmp_path / "mine")],
                       capture_output=True, text=True, env=env, cwd=tmp_path)
    assert p.returncode == 1 and "was not made by gpu_check" in p.stderr
    assert (tmp_path / "mine" / "thesis.txt").read_text() == "keep me"
