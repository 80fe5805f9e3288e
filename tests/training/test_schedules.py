"""The paper's learning-rate regime (appendix B) with hand-evaluated rates: pretraining stops
part-way down a cosine laid out over 10x the run, finetuning runs at multiples of the rate
pretraining had reached."""

from __future__ import annotations

import json

import pytest
from mixutil import spt_and_ft_mixes

from mixer import api
from mixer.training.config import FinetuneConfig
from mixer.errors import UsageError
from mixer.training import runner
from mixer.training.schedules import PAPER_LR_RATIOS, lr_at, paper_final_lr, run_lr


@pytest.fixture(scope="module")
def mixes(tmp_path_factory):
    return spt_and_ft_mixes(tmp_path_factory.mktemp("sched"))


def test_the_papers_final_pretraining_rate_and_finetuning_ratios():
    # 4e-5 + (4e-4 - 4e-5) (1 + cos(pi * 200B / 2T)) / 2 = 4e-5 + 3.6e-4 * 0.9755283 = 3.9119017e-4
    assert paper_final_lr() == pytest.approx(3.9119017e-4, rel=1e-7)
    # {1e-5, 4e-5, 1e-4} / 3.9119017e-4
    assert PAPER_LR_RATIOS == pytest.approx((0.025563014, 0.10225206, 0.25563014), rel=1e-7)


def test_schedule_shapes_by_hand():
    # cosine over a horizon of 1000 steps, stopped at 100 with warmup 5: ratio 95/995
    assert lr_at(100, 3e-3, 3e-4, 5, 100, "cosine", 1000) == pytest.approx(2.9397238e-3, rel=1e-7)
    assert lr_at(100, 3e-3, 3e-4, 5, 100, "cosine") == pytest.approx(3e-4)  # annealed: the floor
    assert lr_at(2, 1e-3, 1e-4, 4, 100, "constant") == pytest.approx(5e-4)  # warmup: 2/4 of the rate
    assert lr_at(90, 1e-3, 1e-4, 10, 100, "wsd", decay_fraction=0.2) == pytest.approx(5.5e-4)  # half-way down
    with pytest.raises(ValueError, match="schedule 'linear'"):
        lr_at(1, 1e-3, 1e-4, 0, 10, "linear")


def test_pretraining_defaults_to_a_cosine_ten_times_the_run(mixes, tmp_path):
    plan = api.pretrain_plan(mixes["spt"], tmp_path / "r", model="tiny", tokens=10_000, dry_run=True)
    h = plan.meta["hparams"]
    # 10,000 // (16 x 32) = 19 steps of 512 tokens, warmup round(0.05 x 19) = 1, horizon 190 steps
    assert (h["steps"], h["warmup"], plan.meta["tokens"]) == (19, 1, 9728)
    assert (h["schedule_tokens"], h["horizon"], h["horizon_steps"], h["annealed"]) == (97280, 10.0, 190.0, False)
    # 3e-4 + 2.7e-3 (1 + cos(pi * 18 / 189)) / 2: the last checkpoint is at 98% of the peak 3e-3
    assert h["final_lr"] == pytest.approx(2.9400233e-3, rel=1e-7)
    assert plan.job.hooks["schedule"] == {"kind": "cosine", "horizon_iters": 190}
    assert run_lr(plan.meta, 19) == pytest.approx(h["final_lr"])


def test_anneal_decays_to_the_floor_by_the_last_step(mixes, tmp_path):
    plan = api.pretrain_plan(mixes["spt"], tmp_path / "r", model="tiny", tokens=10_000, anneal=True, dry_run=True)
    h = plan.meta["hparams"]
    assert (h["schedule_tokens"], h["horizon"], h["annealed"]) == (9728, 1.0, True)
    assert h["final_lr"] == pytest.approx(3e-4) and "schedule" not in plan.job.hooks
    old = dict(plan.meta, hparams={k: v for k, v in h.items() if k != "horizon_steps"})
    assert run_lr(old, 19) == pytest.approx(3e-4)  # horizon from schedule_tokens when steps are not recorded


@pytest.mark.parametrize("kw, message", [
    ({"anneal": True, "horizon": 4.0}, "--horizon and --anneal"),
    ({"horizon": 0.5}, "at least 1"),
    ({"schedule_tokens": 5000}, "shorter than the run"),
])
def test_bad_horizons_are_usage_errors(mixes, tmp_path, kw, message):
    with pytest.raises(UsageError, match=message):
        api.pretrain_plan(mixes["spt"], tmp_path / "r", model="tiny", tokens=10_000, dry_run=True, **kw)


def test_finetune_rate_is_a_ratio_of_the_parents_rate_at_its_checkpoint(mixes, tmp_path):
    from test_train_cli import _fake_checkpoint

    parent = tmp_path / "parent"
    _fake_checkpoint(api.pretrain_plan(mixes["spt"], parent, model="tiny"), parent)  # 39 steps; final at step 7
    h = json.loads((parent / "run.json").read_text())["hparams"]
    assert (h["steps"], h["warmup"], h["horizon_steps"]) == (39, 2, 390.0)
    plan = runner.plan_finetune("finetune", mixes["ft"], tmp_path / "ft", parent, FinetuneConfig(), dry_run=True)
    ft = plan.meta["hparams"]
    # the parent at step 7: 3e-4 + 2.7e-3 (1 + cos(pi * 5 / 388)) / 2 = 2.9988938e-3; x 0.10225206
    assert ft["reference_lr"] == pytest.approx(2.9988938e-3, rel=1e-7)
    assert ft["lr"] == pytest.approx(3.0664306e-4, rel=1e-7) and ft["lr_ratio"] == pytest.approx(PAPER_LR_RATIOS[1])
    assert ft["schedule"] == "constant" and ft["min_lr"] == ft["lr"]
    half = runner.plan_finetune("finetune", mixes["ft"], tmp_path / "ft", parent, FinetuneConfig(lr_ratio=0.5),
                                dry_run=True)
    assert half.meta["hparams"]["lr"] == pytest.approx(0.5 * 2.9988938e-3, rel=1e-7)
    with pytest.raises(UsageError, match="not both"):
        runner.plan_finetune("finetune", mixes["ft"], tmp_path / "ft", parent, FinetuneConfig(lr=1e-4, lr_ratio=0.5),
                             dry_run=True)


def test_a_new_schedule_is_one_registry_entry(mixes, tmp_path, monkeypatch):
    """A schedule added to SCHEDULES alone: lr_at computes it, a finetune plans and records it,
    LitGPT's launcher receives it (launch.json) and applies it through lr_at."""
    from test_train_cli import _fake_checkpoint

    from mixer.training import schedules
    from mixer_litgpt import launch

    linear = schedules.Schedule(lambda step, lr, min_lr, warmup, steps, horizon, decay: lr + (min_lr - lr) * step / steps,
                                finetune=True, floor=lambda lr, min_lr: lr / 100)
    monkeypatch.setitem(schedules.SCHEDULES, "linear", linear)
    monkeypatch.setattr(runner, "FINETUNE_SCHEDULES", (*schedules.FINETUNE_SCHEDULES, "linear"))
    assert lr_at(50, 1.0, 0.0, 0, 100, "linear") == 0.5
    parent = tmp_path / "parent"
    _fake_checkpoint(api.pretrain_plan(mixes["spt"], parent, model="tiny"), parent)
    plan = runner.plan_finetune("finetune", mixes["ft"], tmp_path / "ft", parent,
                                FinetuneConfig(schedule="linear", lr=1e-3, warmup=0), dry_run=True)
    assert plan.meta["hparams"]["schedule"] == "linear" and plan.meta["hparams"]["min_lr"] == pytest.approx(1e-5)
    assert plan.job.hooks["schedule"]["kind"] == "linear"
    assert launch.schedule_lr("linear", 1e-3, 25, 0, 50, 1e-5) == pytest.approx(1e-3 + (1e-5 - 1e-3) / 2)
    assert set(schedules.FINETUNE_SCHEDULES) == {"constant", "wsd"}  # what the CLI offers without the entry
