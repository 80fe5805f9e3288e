"""A mix holds everything training and evaluation read (issue: a mix copied to a cluster's
scratch could not be finetuned where its stores were not).

The same chain (pretrain, finetune chosen on the domain validation split, eval, report) runs
twice: on mixes where they were built, and on copies moved to another path after the token
stores were deleted. Both must work and give bitwise the same numbers (one CPU thread). A
store re-split after the build changes nothing a run reads (the mix's own samples are used)
and `mixer verify` names it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from mixutil import build, make_stores, run_cli

from mixer.training.config import FinetuneConfig

pytestmark = pytest.mark.slow


def mixer(*args: str) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", "mixer", *args], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-3000:]
    return p


def chain(mixes: dict, runs) -> dict:
    """pretrain -> finetune (selected on val) -> eval -> report; what each wrote."""
    mixer("train", "pretrain", str(mixes["spt"]), "--model", "tiny", "--out", str(runs / "spt"), "--checkpoints", "2",
          "--threads", "1")
    mixer("train", "finetune", str(mixes["ft"]), "--from", str(runs / "spt"), "--out", str(runs / "ft"),
          "--lr-ratio", "0.5", "--patience", "1", "--threads", "1")
    for run in ("spt", "ft"):
        (runs / run / "evals.jsonl").rename(runs / run / "evals-train.jsonl")
        mixer("eval", str(runs / run))  # evaluated again from scratch by the eval command
    mixer("report", str(runs / "spt"), str(runs / "ft"), "--out", str(runs / "report"))
    return {"evals": {r: (runs / r / "evals.jsonl").read_text() for r in ("spt", "ft")},
            "evals_in_train": {r: (runs / r / "evals-train.jsonl").read_text() for r in ("spt", "ft")},
            "best": json.loads((runs / "ft" / "run.json").read_text())["best"],
            "report": json.loads((runs / "report" / "report.json").read_text())["table"],
            "early_stopping": (runs / "ft" / "early_stopping.jsonl").read_text()}


@pytest.fixture(scope="module")
def twice(tmp_path_factory):
    root = tmp_path_factory.mktemp("portable")
    stores = make_stores(root / "stores", general_docs=300, domain_docs=30)
    mixes = {"spt": build(stores, root / "mixes" / "spt", "--fraction", "0.1", "--tokens", "12K", "--seq-len", "32"),
             "ft": build(stores, root / "mixes" / "ft", "--epochs", "4", "--seq-len", "32")}
    in_place = chain(mixes, root / "runs-here")
    shutil.rmtree(stores)
    moved = {k: shutil.move(str(v), str(root / "scratch" / "elsewhere" / k)) for k, v in mixes.items()}
    away = chain(moved, root / "runs-away")
    return {"root": root, "here": in_place, "away": away, "moved": moved}


def test_a_moved_mix_without_its_stores_trains_evaluates_and_reports_the_same_numbers(twice):
    here, away = twice["here"], twice["away"]
    assert here["evals"] == away["evals"] and here["evals_in_train"] == away["evals_in_train"]
    assert here["evals"] == here["evals_in_train"]  # mixer eval gives what mixer train's evaluation gave
    assert here["early_stopping"] == away["early_stopping"]
    assert here["best"] == away["best"] and here["best"]["selected_on"] == "val"
    assert here["report"] == away["report"] and here["report"]
    rows = [json.loads(x) for x in away["evals"]["ft"].splitlines()]
    # the finetune is selected on the validation split the mix holds; the train sample scores
    # pretraining (the law's gap) only
    assert rows[0]["checkpoint"] == "start"
    assert all(r["domain_val_loss"] is not None and r["domain_train_loss"] is None for r in rows)
    pre = [json.loads(x) for x in away["evals"]["spt"].splitlines()]
    assert all(r["domain_train_loss"] is not None and r["domain_train_sample"] for r in pre)
    cfg = (twice["root"] / "runs-away" / "ft" / "config.yaml").read_text()
    assert str(twice["root"] / "stores") not in cfg and "elsewhere/ft/eval/music-val.bin" in cfg


def test_training_imports_no_mixing_code():
    code = ("import sys, mixer.training.runner, mixer.training.evaluate, mixer_litgpt.trainer; "
            "print(sorted(m for m in sys.modules if m.startswith('mixer.mixing')))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[]"


def test_a_store_re_split_after_the_build_changes_nothing_a_run_reads_and_verify_names_it(tmp_path, capsys,
                                                                                          monkeypatch):
    """Issue: after a re-split of the domain store, finetune selection read the new val split,
    most of whose documents were training documents of the mix."""
    import numpy as np

    from mixer.training import registry, runner
    from mixutil import markov_docs, write_store

    monkeypatch.setattr(registry, "TRAINERS", dict(registry.TRAINERS))
    monkeypatch.setattr(registry, "_loaded", {})
    registry.register("count", "count_trainer:TRAINER")
    stores = make_stores(tmp_path / "stores", general_docs=300, domain_docs=30)
    spt = build(stores, tmp_path / "spt", "--fraction", "0.1", "--tokens", "12K", "--seq-len", "32")
    ft = build(stores, tmp_path / "ft", "--epochs", "4", "--seq-len", "32")
    code, _, err = run_cli(capsys, "train", "pretrain", str(spt), "--model", "bigram", "--trainer", "count", "--out",
                           str(tmp_path / "pre"))
    assert code == 0, err
    val_before = (ft / "eval" / "music-val.bin").read_bytes()
    # the domain store written again with other splits (as `mixer tokenize --test-fraction 0.3 --seed 7 --force`)
    shutil.rmtree(stores / "music")
    docs = markov_docs(90, 3, table_seed=200)
    write_store(stores, "music", "domain", {"train": docs[:40], "val": docs[40:70], "test": docs[70:]})
    plan = runner.plan_finetune("finetune", ft, tmp_path / "run", tmp_path / "pre", FinetuneConfig(lr=0.5), dry_run=True)
    (held,) = plan.spec.val_files.values()  # what the finetune is early-stopped and chosen on
    assert held.path == ft / "eval" / "music-val.bin" and np.asarray(held.read(plan.spec.mix)).tobytes() == val_before
    code, _, err = run_cli(capsys, "verify", str(ft), "--quiet")
    assert code == 1 and "music" in err and len(err.strip().splitlines()) == 1


def test_an_older_mix_without_sample_sets_is_refused_for_selection_in_one_line(tmp_path, capsys):
    from mixer.formats.atomic import write_json

    stores = make_stores(tmp_path / "stores", general_docs=300, domain_docs=30)
    ft = build(stores, tmp_path / "ft", "--epochs", "4", "--seq-len", "32")
    manifest = json.loads((ft / "manifest.json").read_text())
    del manifest["sample_sets"]
    write_json(ft / "manifest.json", manifest)
    from mixer.errors import MixerError
    from mixer.formats.mix import MixFiles
    from mixer.training import runner

    with pytest.raises(MixerError, match="older mixer.*--select-on test"):
        runner.selection_set(MixFiles.open(ft))
    assert run_cli(capsys, "verify", str(ft), "--quiet")[0] == 0  # nothing to check, nothing wrong
