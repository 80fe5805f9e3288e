"""A CPU test that really trains: tiny pretrain -> finetune (early stopping) -> replay -> eval.

Markov-chain stores (tests/mixutil.py) make the losses move within seconds: the domain
test loss falls while finetuning, the general loss rises (forgetting), and replaying a
general share holds that rise down.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time

import pytest
from mixutil import build, make_stores, run_cli

pytestmark = pytest.mark.slow

SEQ = "64"


def mixer(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", "mixer", *args], capture_output=True, text=True)
    if check:
        assert p.returncode == 0, p.stderr[-3000:]
    return p


mixer_here = run_cli


def evals(run) -> list[dict]:
    return [json.loads(line) for line in (run / "evals.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    stores = make_stores(root / "stores", general_docs=1500, domain_docs=60)
    mixes = {
        "spt": build(stores, root / "mixes" / "spt", "--fraction", "0.1", "--tokens", "40K", "--seq-len", SEQ),
        "ft": build(stores, root / "mixes" / "ft", "--epochs", "5", "--seq-len", SEQ),
        "replay": build(stores, root / "mixes" / "replay", "--epochs", "5", "--replay", "0.3", "--seq-len", SEQ),
    }
    runs = root / "runs"
    times = {}
    t = time.perf_counter()
    mixer("train", "pretrain", str(mixes["spt"]), "--model", "tiny", "--out", str(runs / "spt"), "--checkpoints", "3")
    times["pretrain"] = time.perf_counter() - t
    for kind in ("ft", "replay"):
        t = time.perf_counter()
        # one point of the paper's grid (its highest rate) keeps this test to one finetune per kind
        mixer("train", "finetune" if kind == "ft" else "replay", str(mixes[kind]), "--from", str(runs / "spt"),
              "--out", str(runs / kind), "--patience", "2", "--lr-ratio", "0.2556")
        times[kind] = time.perf_counter() - t
    print(f"train times (s): {times}")
    return {"root": root, "mixes": mixes, "runs": runs, "times": times}


def test_pretrain_run_folder_is_complete(study):
    run = study["runs"] / "spt"
    for f in ("run.json", "config.yaml", "metrics.csv", "evals.jsonl", "train.log", "out/final/lit_model.pth"):
        assert (run / f).is_file(), f
    meta = json.loads((run / "run.json").read_text())
    assert meta["format"] == "mixer-run/1" and meta["kind"] == "pretrain" and meta["status"] == "done"
    assert meta["parent"] is None and meta["pretrain_tokens"] == meta["tokens"] > 0
    assert meta["model"] == "tiny" and meta["model_params"] > 0 and meta["fraction"] == 0.1
    rows = evals(run)
    assert [r["checkpoint"] for r in rows][-1] == "final" and len(rows) >= 3
    assert rows[-1]["tokens"] == meta["tokens"]
    assert rows[-1]["general_val_loss"] < rows[0]["general_val_loss"]
    assert all(r["domain_test_loss"] is not None and r["domain_train_loss"] is not None for r in rows)
    trained = float(re.search(r"Training Time : ([\d.]+) s", (run / "train.log").read_text()).group(1))
    assert trained < 60


def test_finetune_lowers_the_domain_test_loss_and_records_its_start(study):
    runs = study["runs"]
    pre_final = evals(runs / "spt")[-1]
    meta = json.loads((runs / "ft" / "run.json").read_text())
    assert meta["parent"] == str((runs / "spt").resolve())
    assert meta["parent_checkpoint"].endswith("out/final")
    assert (runs / "spt" / "converted" / "final" / "lit_model.pth").is_file()
    config = (runs / "ft" / "config.yaml").read_text()
    assert str(runs / "spt" / "converted" / "final") in config
    rows = evals(runs / "ft")
    # its start (the parent's final checkpoint) is row 0, scored on the finetune's own samples: the
    # parent's general validation loss there, the same weights
    assert rows[0]["checkpoint"] == "start" and rows[0]["tokens"] == rows[0]["step"] == 0
    assert rows[0]["general_val_loss"] == pytest.approx(pre_final["general_val_loss"], abs=1e-6)
    chosen = min(rows, key=lambda r: r["domain_val_loss"])  # early stopping on the domain validation split
    assert meta["select_on"] == "val" and meta["best"]["checkpoint"] == chosen["checkpoint"]
    assert meta["best"]["domain_test_loss"] == chosen["domain_test_loss"] < pre_final["domain_test_loss"] - 0.1
    assert meta["pretrain_tokens"] == json.loads((runs / "spt" / "run.json").read_text())["tokens"]
    # validated once per domain epoch: every step checkpoint was judged for early stopping
    judged = [json.loads(x) for x in (runs / "ft" / "early_stopping.jsonl").read_text().splitlines()]
    assert [j["checkpoint"] for j in judged] == [r["checkpoint"] for r in rows if r["checkpoint"].startswith("step-")]
    # LitGPT validated on the validation split alone: its loss (a mean of per-batch means) is that of
    # the mix's eval/music-val.bin, the store's validation split fixed when the mix was built
    import numpy as np
    import yaml

    from mixer.formats.mix import MixFiles
    from mixer.formats.sample_sets import SELECTION, sample_set
    from mixer.training.registry import get_trainer

    held = sample_set(MixFiles.open(study["mixes"]["ft"]), SELECTION)
    val = np.asarray(held.samples)
    data = yaml.safe_load((runs / "ft" / "config.yaml").read_text())["data"]["init_args"]
    assert data["val_files"] == {"music-val": str(held.path)} and data["val_sets"] == []
    first = judged[0]
    model = get_trainer("litgpt").load_for_eval(runs / "ft", runs / "ft" / "out" / first["checkpoint"], "cpu", 1)
    batches = [model.loss(val[i : i + 16]) for i in range(0, len(val), 16)]
    assert first["val_loss"] == pytest.approx(float(np.mean(batches)), abs=1e-4)


def test_replay_forgets_less_than_domain_only_finetuning(study):
    runs = study["runs"]
    before = evals(runs / "spt")[-1]["general_val_loss"]
    rise = {k: evals(runs / k)[-1]["general_val_loss"] - before for k in ("ft", "replay")}
    assert rise["ft"] > 0
    assert rise["replay"] < rise["ft"]
    assert json.loads((runs / "replay" / "run.json").read_text())["kind"] == "replay"


def test_eval_is_idempotent_and_parses_litgpt_metrics(study, capsys):
    run = study["runs"] / "ft"
    before = (run / "evals.jsonl").read_text()
    code, out, _ = mixer_here(capsys, "eval", str(run))
    assert code == 0 and (run / "evals.jsonl").read_text() == before
    assert "domain test" in out
    rows = evals(run)
    assert rows[0]["checkpoint"] == "start" and rows[0]["train_loss"] is None  # nothing trained at step 0
    assert all(r["train_loss"] is not None and r["lr"] is not None for r in rows[1:])
    assert "learning_rate" in (run / "metrics.csv").read_text().splitlines()[0]


def test_eval_adds_only_new_checkpoints(study, tmp_path, capsys):
    run = tmp_path / "spt-copy"
    shutil.copytree(study["runs"] / "spt", run)
    lines = (run / "evals.jsonl").read_text().splitlines()
    (run / "evals.jsonl").write_text("\n".join(lines[:1]) + "\n")
    assert mixer_here(capsys, "eval", str(run))[0] == 0
    assert [json.loads(x) for x in (run / "evals.jsonl").read_text().splitlines()] == [json.loads(x) for x in lines]


def test_corrupt_or_missing_checkpoint_is_one_line(study, tmp_path, capsys):
    run = tmp_path / "broken"
    shutil.copytree(study["runs"] / "spt", run)
    (run / "evals.jsonl").unlink()
    first = min((run / "out").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
    ckpt = first / "lit_model.pth"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    code, _, err = mixer_here(capsys, "eval", str(run))
    assert code == 1 and "cannot read the checkpoint" in err and len(err.strip().splitlines()) == 1
    code, _, err = mixer_here(capsys, "train", "finetune", str(study["mixes"]["ft"]), "--from", str(run),
                              "--checkpoint", "step-00000099", "--out", str(tmp_path / "x"))
    assert code == 1 and "missing" in err and len(err.strip().splitlines()) == 1
    code, _, err = mixer_here(capsys, "train", "finetune", str(study["mixes"]["ft"]), "--from", str(run),
                              "--checkpoint", first.name, "--out", str(tmp_path / "y"))
    assert code == 1 and "cannot read the checkpoint" in err


def test_an_interrupted_run_resumes_on_the_same_samples(study, tmp_path, capsys):
    """A run killed mid-training resumes from its latest resume state (the only checkpoint that
    keeps the optimizer), with the loader's position restored: the first step after resuming
    sees the same batch (same loss) as the uninterrupted run, and it ends with the same model."""
    from interrupt import kill_mid_run

    original = study["runs"] / "spt"
    run = tmp_path / "spt"
    args = ["train", "pretrain", str(study["mixes"]["spt"]), "--model", "tiny", "--out", str(run), "--checkpoints", "3"]
    last = kill_mid_run([sys.executable, "-m", "mixer", *args], run)
    assert json.loads((run / "run.json").read_text())["status"] == "running"
    code, _, err = mixer_here(capsys, *args)
    assert code == 0, err
    log = (run / "train.log").read_text()
    assert f"Resuming training from {run}/out/step-{last:08d}/resume.pth" in log

    def loss_at(text: str, it: int) -> str:
        return re.findall(rf"iter {it} step {it} \| loss train: ([\d.]+)", text)[-1]

    assert loss_at(log, last + 1) == loss_at((original / "train.log").read_text(), last + 1)
    final = {r["checkpoint"]: r for r in evals(run)}["final"]
    assert final["general_val_loss"] == pytest.approx(evals(original)[-1]["general_val_loss"], abs=1e-4)
    assert not list((run / "out").glob("step-*/resume.pth"))  # finished: nothing left to resume from


def test_checkpoints_hold_the_weights_alone_and_final_is_the_last_steps_file(study):
    """Only a resume needs the optimizer state: a finished run keeps the weights (in their training
    dtype, float32 on CPU) and nothing else; `final` after a saved last step is the same file."""
    import os

    import torch

    run = study["runs"] / "spt"
    steps = sorted((run / "out").glob("step-*"))
    assert steps and not list((run / "out").glob("*/resume.pth")) and not list((run / "out").glob("*/.*partial"))
    for ckpt in [*steps, run / "out" / "final"]:
        state = torch.load(ckpt / "lit_model.pth", map_location="cpu", weights_only=True)
        assert set(state) == {"model", "iter_num", "step_count", "mixer"} and state["mixer"]["weights_only"]
        assert {t.dtype for t in state["model"].values()} == {torch.float32}
    meta = json.loads((run / "run.json").read_text())
    last = run / "out" / f"step-{meta['hparams']['steps']:08d}"
    if last.is_dir():  # the last step was a save step
        assert os.path.samefile(last / "lit_model.pth", run / "out" / "final" / "lit_model.pth")


def test_a_finished_run_is_not_overwritten(study, capsys):
    code, _, err = mixer_here(capsys, "train", "pretrain", str(study["mixes"]["spt"]), "--model", "tiny",
                              "--out", str(study["runs"] / "spt"))
    assert code == 1 and "already trained" in err
