"""A finetune's start is one of its candidates (paper 1's dL >= 0): `mixer eval` scores the
checkpoint it started from as row `start` on the finetune's own samples, early stopping's
choice includes it, and a later stage continues from it when it won."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mixutil import run_cli, spt_and_ft_mixes
from runutil import write_run

from test_registry import count  # noqa: F401 - the count trainer, registered for one test

from mixer.analysis.report import build_report
from mixer.formats.run import best_eval, load_runs, read_evals
from mixer.training.evaluate import START
from mixer.training.runner import _parent_checkpoint


def test_the_start_is_scored_first_and_the_winner_is_never_worse_than_it(tmp_path, capsys, count):
    mixes = spt_and_ft_mixes(tmp_path / "mixes")
    pre = tmp_path / "pre"
    code, _, err = run_cli(capsys, "train", "pretrain", str(mixes["spt"]), "--model", "bigram", "--trainer", "count",
                           "--out", str(pre), "--checkpoints", "4")
    assert code == 0, err
    code, _, err = run_cli(capsys, "train", "finetune", str(mixes["ft"]), "--from", str(pre), "--out",
                           str(tmp_path / "g"), "--patience", "1", "--grid", "lr=0.001,10")
    assert code == 0, err
    assert all(r.domain_train_loss is not None for r in read_evals(pre))  # the law's gap: pretraining runs
    for point in sorted(p for p in (tmp_path / "g").iterdir() if p.is_dir()):
        rows = read_evals(point)
        assert all(r.domain_train_loss is None for r in rows)  # a finetune is not scored on the train sample
        assert rows[0].checkpoint == START and rows[0].tokens == rows[0].step == 0 and rows[0].train_loss is None
        assert rows[0].domain_val_loss is not None and rows[0].general_val_loss is not None
        assert best_eval(rows, "val").domain_val_loss <= rows[0].domain_val_loss
        # mixer eval again: the start is not scored twice
        before = (point / "evals.jsonl").read_text()
        assert run_cli(capsys, "eval", str(point))[0] == 0 and (point / "evals.jsonl").read_text() == before


class _Trainer:
    def __init__(self, have: list[Path]) -> None:
        self.have = have

    def checkpoints(self, run: Path) -> list[Path]:
        return self.have


def test_a_stage_whose_winner_is_its_start_hands_on_the_start(tmp_path):
    start = tmp_path / "pre" / "out" / "final"
    start.mkdir(parents=True)
    post = tmp_path / "post"
    post.mkdir()
    meta = {"kind": "finetune", "parent_checkpoint": "../pre/out/final", "best": {"checkpoint": START}}
    assert _parent_checkpoint(_Trainer([post / "out" / "step-1"]), post, None, meta) == start.resolve()
    gone = meta | {"parent_checkpoint": str(tmp_path / "nowhere")}
    with pytest.raises(Exception, match="the one it started from"):
        _parent_checkpoint(_Trainer([post / "out" / "step-1"]), post, None, gone)


def test_a_finetune_that_only_hurts_reports_its_start_and_no_gain_or_loss(tmp_path):
    """Every finetuned checkpoint is worse on val than the start: the report's post-FT loss is the
    start's, measured on the finetune's samples, and forgetting is 0."""
    pre = write_run(tmp_path, "pre", [(100, 3.0, 2.9, 4.0), (200, 2.8, 2.7, 3.9)], fraction=0.1)
    rows = [dict(checkpoint=START, step=0, tokens=0, domain_test_loss=2.75, domain_val_loss=2.76,
                 domain_train_loss=None, general_val_loss=3.95),
            dict(checkpoint="step-1", step=1, tokens=10, domain_test_loss=2.70, domain_val_loss=2.80,
                 domain_train_loss=None, general_val_loss=4.2)]
    ft = write_run(tmp_path, "ft", rows, kind="finetune", fraction=1.0, parent=pre, pretrain_tokens=200)
    meta = json.loads((ft / "run.json").read_text()) | {"select_on": "val"}
    (ft / "run.json").write_text(json.dumps(meta))
    rep = build_report(load_runs([pre, ft]))
    row = rep["finetune_runs"][0]
    assert row["best_checkpoint"] == START and row["post_ft_loss"] == 2.75 and row["forgetting"] == 0.0
