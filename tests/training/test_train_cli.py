"""`mixer train` without training: the YAML it writes, bad input, schedules, early stopping, grids."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from mixutil import build, make_stores, run_cli

from mixer import api
from mixer.training.config import FinetuneConfig
from mixer.training import runner as train_mod
from mixer_litgpt import launch
from mixer_litgpt.logs import last_error_line


@pytest.fixture(scope="module")
def mixes(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    stores = make_stores(root / "stores", general_docs=300, domain_docs=30)
    other = make_stores(root / "other", general_docs=300, domain_docs=30, sha="another-tokenizer")
    return {
        "root": root,
        "spt": build(stores, root / "spt", "--fraction", "0.1", "--tokens", "20K", "--seq-len", "32"),
        "long": build(stores, root / "long", "--fraction", "0.1", "--tokens", "20K", "--seq-len", "256"),
        "ft": build(stores, root / "ft", "--epochs", "4", "--seq-len", "32"),
        "other": build(other, root / "other-ft", "--epochs", "4", "--seq-len", "32"),
    }


cli = run_cli


def test_dry_run_prints_a_complete_litgpt_config_with_absolute_paths(mixes, capsys, tmp_path):
    code, out, err = cli(capsys, "train", "pretrain", str(mixes["spt"]), "--model", "tiny", "--out",
                         str(tmp_path / "run"), "--tokens", "10K", "--checkpoints", "4", "--dry-run")
    assert code == 0, err
    cfg = yaml.safe_load(out)
    assert cfg["precision"] == "32-true" and cfg["devices"] == 1 and cfg["logger_name"] == "csv"
    assert cfg["data"]["class_path"] == "mixer_litgpt.MixData"
    assert Path(cfg["data"]["init_args"]["mix"]).is_absolute() and Path(cfg["out_dir"]).is_absolute()
    steps = 10_000 // (16 * 32)
    assert cfg["train"]["max_tokens"] == cfg["data"]["init_args"]["max_tokens"] == steps * 16 * 32
    assert cfg["train"]["max_seq_length"] == 32 and cfg["train"]["save_interval"] == steps // 4
    assert cfg["model_config"]["vocab_size"] == 128 and cfg["tokenizer_dir"] is None
    assert cfg["train"]["min_lr"] == pytest.approx(cfg["optimizer"]["init_args"]["lr"] / 10)
    assert not (tmp_path / "run").exists()  # a dry run writes nothing
    # whoever reuses the file with LitGPT alone is told it skips launch.json's schedule
    assert out.startswith("# Written by mixer train") and "ignores launch.json" in out[:600]


def test_the_yaml_is_what_litgpt_parses(mixes, capsys, tmp_path):
    """jsonargparse (LitGPT's CLI parser) accepts the file and instantiates the DataModule by class_path,
    for a pretraining run and for a finetune validated on a held-out file outside the mix."""
    from jsonargparse import ArgumentParser
    from litgpt.pretrain import setup

    _, out, _ = cli(capsys, "train", "pretrain", str(mixes["spt"]), "--model", "tiny", "--out", str(tmp_path / "r"),
                    "--dry-run")
    parent = _fake_parent(mixes, tmp_path)
    ft = train_mod.plan_finetune("finetune", mixes["ft"], tmp_path / "ft", parent,
                                 FinetuneConfig(lr_ratio=0.1)).config_text()
    parser = ArgumentParser()
    parser.add_function_arguments(setup)
    parser.add_argument("--config", action="config")
    for name, text in (("c.yaml", out), ("f.yaml", ft)):
        (tmp_path / name).write_text(text)
        init = parser.instantiate_classes(parser.parse_args(["--config", str(tmp_path / name)]))
        assert type(init.data).__name__ == "MixData" and init.data.max_tokens == init.train.max_tokens
    assert init.data.val_files == {"music-val": str(mixes["ft"] / "eval" / "music-val.bin")}


@pytest.mark.parametrize("args, code, message", [
    (["--model", "huge"], 2, "unknown preset"),
    (["--model", "tiny", "--tokens", "1M"], 2, "holds"),
    (["--model", "tiny", "--batch-size", "10", "--micro-batch-size", "4"], 2, "split evenly"),
])
def test_bad_pretrain_input_is_one_line(mixes, capsys, tmp_path, args, code, message):
    got, _, err = cli(capsys, "train", "pretrain", str(mixes["spt"]), "--out", str(tmp_path / "r"), "--dry-run", *args)
    assert got == code and message in err and len(err.strip().splitlines()) == 1


def test_context_must_fit_the_preset(mixes, capsys, tmp_path):
    """(The vocabulary always fits: every preset takes the mix's; tests/training/test_multidevice.py.)"""
    code, _, err = cli(capsys, "train", "pretrain", str(mixes["long"]), "--model", "tiny", "--out",
                       str(tmp_path / "r"), "--dry-run")
    assert code == 1 and "context 128 is shorter" in err


def _fake_parent(mixes, root: Path) -> Path:
    """A finished pretraining run folder with a real (untrained) LitGPT checkpoint."""
    run = root / "parent"
    _fake_checkpoint(api.pretrain_plan(mixes["spt"], run, model="tiny"), run)
    return run


def _fake_checkpoint(plan, run: Path) -> None:
    """RUN/out/final (an untrained model at step 7), config.yaml and run.json (status done)."""
    import torch
    from litgpt.model import GPT, Config

    ckpt = run / "out" / "final"
    ckpt.mkdir(parents=True)
    cfg = plan.job.settings.model_config
    torch.save({"model": GPT(Config(**cfg)).state_dict(), "step_count": 7}, ckpt / "lit_model.pth")
    (ckpt / "model_config.yaml").write_text(yaml.safe_dump(cfg))
    (run / "config.yaml").write_text(plan.config_text())
    (run / "run.json").write_text(json.dumps({**plan.meta, "status": "done"}))


def test_finetune_plan_starts_from_the_converted_parent_and_evaluates_each_epoch(mixes, tmp_path, capsys):
    parent = _fake_parent(mixes, tmp_path)
    code, out, err = cli(capsys, "train", "finetune", str(mixes["ft"]), "--from", str(parent), "--out",
                         str(tmp_path / "ft"), "--lr-ratio", "0.1", "--dry-run")
    assert code == 0, err
    cfg = yaml.safe_load(out)
    assert cfg["initial_checkpoint_dir"] == str(parent / "converted" / "final")
    # early stopping on the domain validation split alone, which the mix holds
    assert cfg["data"]["init_args"]["val_sets"] == []
    assert cfg["data"]["init_args"]["val_files"] == {"music-val": str(mixes["ft"] / "eval" / "music-val.bin")}
    assert not (tmp_path / "ft").exists()
    assert cfg["train"]["min_lr"] == cfg["optimizer"]["init_args"]["lr"]  # constant after warmup
    assert cfg["train"]["tie_embeddings"] is False and cfg["eval"]["initial_validation"] is True
    from mixer.formats.mix import MixFiles

    src = MixFiles.open(mixes["ft"]).source("domain")
    per_epoch = src["epoch_start_samples"][1] - src["epoch_start_samples"][0]
    assert cfg["train"]["save_interval"] == cfg["eval"]["interval"] == max(1, round(per_epoch / 16))
    plan = train_mod.plan_finetune("finetune", mixes["ft"], tmp_path / "ft", parent, FinetuneConfig())
    held = plan.spec.val_files["music-val"]
    assert held.path == mixes["ft"] / "eval" / "music-val.bin"
    assert cfg["eval"]["max_iters"] == -(-held.samples // 16)  # the whole split once
    test_cfg = yaml.safe_load(train_mod.plan_finetune("finetune", mixes["ft"], tmp_path / "ft", parent,
                                                      FinetuneConfig(select_on="test")).config_text())
    assert test_cfg["data"]["init_args"]["val_sets"] == ["music-test"] and test_cfg["data"]["init_args"]["val_files"] is None
    assert plan.meta["parent_checkpoint"] == str(parent / "out" / "final")
    assert plan.meta["pretrain_tokens"] == 7 * 16 * 32
    assert plan.job.hooks == {"early_stopping": {"patience": 2}}
    assert plan.meta["trainer"] == "litgpt"


def test_finetune_refuses_a_mix_from_another_tokenizer(mixes, tmp_path, capsys):
    parent = _fake_parent(mixes, tmp_path)
    code, _, err = cli(capsys, "train", "finetune", str(mixes["other"]), "--from", str(parent), "--out",
                       str(tmp_path / "ft"), "--dry-run")
    assert code == 1 and "re-tokenize" in err


def test_litgpt_failure_surfaces_in_one_line_with_the_log(mixes, tmp_path, capsys):
    code, _, err = cli(capsys, "train", "pretrain", str(mixes["spt"]), "--model", "tiny", "--out",
                       str(tmp_path / "run"), "--precision", "bogus-precision", "--tokens", "2K")
    assert code == 1, err
    line = err.strip()
    assert line.startswith("mixer: error: litgpt failed: ") and f"(log: {tmp_path / 'run' / 'train.log'})" in line
    assert "bogus-precision" in line and len(line.splitlines()) == 1
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "failed"


def test_last_error_line_prefers_the_exception(tmp_path):
    log = tmp_path / "train.log"
    log.write_text("Traceback (most recent call last):\n  File x\nValueError: the mix is exhausted\nsome cleanup\n")
    assert last_error_line(log) == "ValueError: the mix is exhausted"
    log.write_text('usage: litgpt\nerror: Parser key "precision":\n  Does not validate\n  Given value: bogus\n')
    assert last_error_line(log) == 'error: Parser key "precision": Does not validate Given value: bogus'
    log.write_text("just output\n")
    assert last_error_line(log) == "just output"


def test_schedules():
    lr, floor = 1e-3, 1e-4
    assert launch.schedule_lr("constant", lr, 5, 10, 100, floor) == pytest.approx(5e-4)
    assert launch.schedule_lr("constant", lr, 90, 10, 100, floor) == lr
    assert launch.schedule_lr("wsd", lr, 50, 10, 100, floor, decay_fraction=0.2) == lr
    assert launch.schedule_lr("wsd", lr, 90, 10, 100, floor, decay_fraction=0.2) == pytest.approx((lr + floor) / 2)
    assert launch.schedule_lr("wsd", lr, 100, 10, 100, floor, decay_fraction=0.2) == pytest.approx(floor)
    # cosine over a horizon longer than the run (paper: 2T-token schedule cut at 200B)
    half = launch.schedule_lr("cosine", lr, 510, 10, 100, floor, horizon=1010)
    assert half == pytest.approx((lr + floor) / 2)
    from litgpt.pretrain import get_lr

    for it in (0, 5, 10, 40, 99):
        assert launch.schedule_lr("cosine", lr, it, 10, 100, floor) == pytest.approx(get_lr(lr, it, 10, 100, floor))


def test_early_stopping_hook_stops_after_patience_and_keeps_complete_checkpoints(tmp_path, monkeypatch):
    import torch
    from fakefabric import FakeFabric, litgpt_save
    from litgpt import pretrain

    monkeypatch.setattr(pretrain, "validate", lambda fabric, model, loader, max_iters, verbose=True: losses.pop(0))
    monkeypatch.setattr(pretrain, "save_checkpoint", litgpt_save)
    monkeypatch.setattr(pretrain, "get_lr", pretrain.get_lr)
    monkeypatch.setattr(pretrain, "fit", pretrain.fit)
    monkeypatch.setenv("MIXER_RESUME_SECONDS", "0")  # a resume state at every step checkpoint
    log = tmp_path / "early_stopping.jsonl"
    launch.install({"early_stopping": {"patience": 2}}, log)
    fabric, model = FakeFabric(), torch.nn.Linear(2, 2)
    losses = [3.0, 2.0, 2.5, 1.9, 2.2, 2.1]
    with pytest.raises(launch.EarlyStop, match="step-00000006"):
        for step in range(1, 7):
            pretrain.validate(fabric, None, None, 1)
            pretrain.save_checkpoint(fabric, {"model": model, "iter_num": step, "step_count": step}, None,
                                     tmp_path / "out" / f"step-{step:08d}" / "lit_model.pth")
    # the stop comes after the save completes; the stopping checkpoint writes no resume state
    assert sorted(p.parent.name for p in (tmp_path / "out").glob("*/lit_model.pth")) == [
        f"step-{s:08d}" for s in range(1, 7)]
    assert [p.parent.name for p in (tmp_path / "out").glob("*/resume.pth")] == ["step-00000005"]
    rows = [json.loads(x) for x in log.read_text().splitlines()]
    assert [r["without_improvement"] for r in rows] == [0, 0, 1, 0, 1, 2]
    assert rows[-1]["best_loss"] == 1.9


def test_grid_points_and_bad_grids():
    """Running a grid and recording its best: tests/training/test_registry.py (any trainer)."""
    assert train_mod.parse_grid(["lr=1e-5,4e-5", "warmup=50,100"]) == {"lr": [1e-5, 4e-5], "warmup": [50, 100]}
    from mixer.errors import UsageError

    with pytest.raises(UsageError):
        train_mod.parse_grid(["momentum=1"])
    grid = {"lr": [1e-5, 4e-5], "warmup": [50, 100]}
    names = [n for n, _ in train_mod.grid_points(grid)]
    assert names == ["lr=1e-05,warmup=50", "lr=1e-05,warmup=100", "lr=4e-05,warmup=50", "lr=4e-05,warmup=100"]


def test_eval_of_a_litgpt_run_whose_mix_moved_is_one_line_naming_the_mix(mixes, tmp_path, capsys):
    import shutil

    mix = shutil.copytree(mixes["spt"], tmp_path / "mix")
    run = tmp_path / "parent"
    plan = api.pretrain_plan(mix, run, model="tiny")
    _fake_checkpoint(plan, run)
    (tmp_path / "mix").rename(tmp_path / "moved")
    code, _, err = cli(capsys, "eval", str(run))
    line = err.strip()
    assert code == 1 and len(line.splitlines()) == 1 and "internal error" not in line
    assert line.startswith(f"mixer: error: {mix / 'manifest.json'}: no manifest") and str(run / "run.json") in line


def test_sbatch_writes_the_same_command_as_a_slurm_job_and_trains_nothing(mixes, capsys, tmp_path):
    run = tmp_path / "my run"
    code, out, err = cli(capsys, "train", "pretrain", str(mixes["spt"]), "--model", "tiny", "--out", str(run),
                         "--tokens", "10K", "--sbatch", "--partition", "gpu", "--account=lab", "--time", "1:00:00",
                         "--sbatch-arg=--exclusive", "--threads", "1")
    assert code == 0, err
    script = run / "sbatch.sh"
    lines = script.read_text().splitlines()
    for line in ("#SBATCH --partition=gpu", "#SBATCH --account=lab", "#SBATCH --time=1:00:00", "#SBATCH --exclusive",
                 "#SBATCH --nodes=1", f"#SBATCH --output=\"{run.resolve()}/slurm-%j.out\""):
        assert line in lines, line
    job = lines[-1]
    assert job.startswith("exec ") and job.endswith(f"train pretrain {mixes['spt']} --model tiny --out '{run}' "
                                                    "--tokens 10K --threads 1")
    assert "--sbatch" not in job and "--partition" not in job and "--account" not in job
    assert f"sbatch '{script.resolve()}'" in out
    assert sorted(p.name for p in run.iterdir()) == ["sbatch.sh"]  # nothing trained, no run.json
    # the job's own `mixer train` accepts the folder Slurm and --sbatch filled, and nothing else
    (run / "slurm-4242.out").write_text("")
    api.pretrain_plan(mixes["spt"], run, model="tiny", tokens=10_000, threads=1)
    (run / "notes.txt").write_text("mine")
    with pytest.raises(Exception, match="exists and is not a run"):
        api.pretrain_plan(mixes["spt"], run, model="tiny", tokens=10_000, threads=1)


def test_sbatch_refuses_a_value_that_would_inject_a_command(mixes, capsys, tmp_path):
    code, out, err = cli(capsys, "train", "pretrain", str(mixes["spt"]), "--model", "tiny", "--out",
                         str(tmp_path / "r"), "--sbatch", "--partition", "gpu\ntouch INJECTED")
    assert code == 2 and "control character" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_sbatch_of_a_finetune_grid_writes_one_job_for_the_whole_grid(mixes, capsys, tmp_path):
    parent = _fake_parent(mixes, tmp_path)
    out = tmp_path / "ft"
    code, _, err = cli(capsys, "train", "finetune", str(mixes["ft"]), "--from", str(parent), "--out", str(out),
                       "--lr-ratio", "0.5,1", "--sbatch", "--qos=high")
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["sbatch.sh"]  # no grid point planned onto disk
    lines = (out / "sbatch.sh").read_text().splitlines()
    assert "#SBATCH --qos=high" in lines
    assert lines[-1].endswith(f"train finetune {mixes['ft']} --from {parent} --out {out} --lr-ratio 0.5,1")
