"""Trainers by name: unknown or uninstalled ones fail in one line, and a second trainer
(tests/training/count_trainer.py, numpy only) runs the whole generic path: `mixer train`
pretrain, finetune and grid, `mixer eval`, with no LitGPT."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mixutil import build, make_stores, run_cli, spt_and_ft_mixes

from mixer.formats.run import best_eval, load_run, read_evals
from mixer.training import registry

HERE = Path(__file__).parent
ROOT = HERE.parents[1]


@pytest.fixture
def count(monkeypatch):
    """The count trainer registered for one test (the registry is left as it was)."""
    monkeypatch.setattr(registry, "TRAINERS", dict(registry.TRAINERS))
    monkeypatch.setattr(registry, "_loaded", {})
    registry.register("count", "count_trainer:TRAINER")
    return "count"


@pytest.fixture(scope="module")
def mixes(tmp_path_factory):
    return spt_and_ft_mixes(tmp_path_factory.mktemp("registry"))


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mixer: error: "), err
    return lines[0]


def test_unknown_trainer_is_one_line(mixes, capsys, tmp_path):
    code, _, err = run_cli(capsys, "train", "pretrain", str(mixes["spt"]), "--model", "tiny", "--trainer", "nosuch",
                           "--out", str(tmp_path / "r"), "--dry-run")
    assert code == 2 and "--trainer nosuch: unknown trainer" in one_line(err) and "litgpt" in err
    code, _, err = run_cli(capsys, "train", "pretrain", str(mixes["spt"]), "--model", "tiny", "--trainer", "No-Such",
                           "--out", str(tmp_path / "r"), "--dry-run")
    assert code == 2 and "not a trainer name" in one_line(err)


def test_a_trainer_whose_framework_is_missing_is_one_line(mixes, capsys, tmp_path, monkeypatch, count):
    (tmp_path / "needs_missing.py").write_text("import package_that_is_not_installed_xyz\nTRAINER = None\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry.register("needsdep", "needs_missing:TRAINER")
    code, _, err = run_cli(capsys, "train", "pretrain", str(mixes["spt"]), "--model", "bigram", "--trainer",
                           "needsdep", "--out", str(tmp_path / "r"), "--dry-run")
    assert code == 1 and "needs the package 'package_that_is_not_installed_xyz'" in one_line(err)
    (tmp_path / "not_a_trainer.py").write_text("TRAINER = object()\n")
    registry.register("hollow", "not_a_trainer:TRAINER")
    code, _, err = run_cli(capsys, "train", "pretrain", str(mixes["spt"]), "--model", "bigram", "--trainer",
                           "hollow", "--out", str(tmp_path / "r"), "--dry-run")
    assert code == 1 and "does not implement" in one_line(err)


def test_eval_of_a_run_whose_trainer_is_unknown_names_its_run_json(tmp_path, capsys):
    from runutil import write_run

    run = write_run(tmp_path, "r", [(100, 2.0, 2.0, 3.0)])
    meta = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**meta, "trainer": "gone"}))
    code, _, err = run_cli(capsys, "eval", str(run))
    assert code == 1 and f"{run / 'run.json'}: trainer gone: unknown trainer" in one_line(err)


def test_litgpt_resolves_by_its_entry_point_and_new_trainers_need_no_registry_edit(mixes, capsys, tmp_path,
                                                                                    monkeypatch):
    from mixer.training.trainer import Trainer

    # the installed package declares its adapter under mixer's namespace, in the entry point group
    assert registry.entry_points()["litgpt"] == "mixer_litgpt.trainer:TRAINER"
    litgpt = registry.get_trainer("litgpt")
    assert isinstance(litgpt, Trainer) and registry.get_trainer(None) is litgpt
    assert type(litgpt).__module__ == "mixer_litgpt.trainer"
    # a package mixer_<name> with trainer.py defining TRAINER (here a class) is found by name...
    (tmp_path / "pkgs" / "mixer_counting").mkdir(parents=True)
    (tmp_path / "pkgs" / "mixer_counting" / "__init__.py").write_text("")
    (tmp_path / "pkgs" / "mixer_counting" / "trainer.py").write_text("from count_trainer import CountTrainer as TRAINER")
    monkeypatch.syspath_prepend(str(tmp_path / "pkgs"))
    # ...and a third-party package's entry point names any module
    monkeypatch.setattr(registry, "entry_points", lambda: {"litgpt": "mixer_litgpt.trainer:TRAINER",
                                                          "plugged": "count_trainer:TRAINER"})
    monkeypatch.setattr(registry, "_loaded", {})
    assert "counting" not in registry.TRAINERS and {"plugged", "litgpt"} <= set(registry.known())
    for name in ("counting", "plugged"):
        code, out, err = run_cli(capsys, "train", "pretrain", str(mixes["spt"]), "--model", "bigram", "--trainer",
                                 name, "--out", str(tmp_path / name), "--checkpoints", "2")
        assert code == 0, err
        assert json.loads((tmp_path / name / "run.json").read_text())["trainer"] == name
        assert len(read_evals(tmp_path / name)) >= 2


def _train_count_pretrain(mixes, capsys, out: Path) -> Path:
    code, text, err = run_cli(capsys, "train", "pretrain", str(mixes["spt"]), "--model", "bigram", "--trainer", "count",
                              "--out", str(out), "--checkpoints", "4", "--json")
    assert code == 0, err
    return out


def test_a_second_trainer_runs_pretrain_finetune_and_eval_through_the_protocol(mixes, capsys, tmp_path, count):
    pre = _train_count_pretrain(mixes, capsys, tmp_path / "pre")
    meta = json.loads((pre / "run.json").read_text())
    assert meta["trainer"] == "count" and meta["status"] == "done" and meta["model_params"] == 128 ** 2
    rows = read_evals(pre)
    assert [r.checkpoint for r in rows] == [c.name for c in sorted((pre / "ckpt").glob("step-*"))] and len(rows) >= 4
    assert rows[-1].tokens == meta["tokens"] and all(r.train_loss is not None and r.lr == 1.0 for r in rows)
    assert rows[-1].general_val_loss < rows[0].general_val_loss  # counting learns the general chain

    # the finetune inherits the trainer from its parent's run.json; early stopping and best come through,
    # chosen on the domain validation split (written into the run, validated on alone) and reported on test
    code, _, err = run_cli(capsys, "train", "finetune", str(mixes["ft"]), "--from", str(pre), "--out",
                           str(tmp_path / "ft"), "--patience", "1", "--lr-ratio", "0.5")
    assert code == 0, err
    ft = json.loads((tmp_path / "ft" / "run.json").read_text())
    assert ft["trainer"] == "count" and ft["parent_checkpoint"] == str(pre / "ckpt" / rows[-1].checkpoint)
    assert ft["pretrain_tokens"] == meta["tokens"] and ft["select_on"] == "val"
    assert ft["hparams"]["lr"] == 0.5 and ft["hparams"]["reference_lr"] == 1.0  # smoothing 1.0 x 0.5
    config = json.loads((tmp_path / "ft" / "count.json").read_text())
    assert config["val_sets"] == [] and list(config["val_files"]) == ["music-val"]
    assert config["val_files"]["music-val"] == str(mixes["ft"] / "eval" / "music-val.bin")  # the mix's own split
    ft_rows = read_evals(tmp_path / "ft")
    chosen = best_eval(ft_rows, "val")
    assert all(r.domain_val_loss is not None for r in ft_rows)
    assert ft["best"] == {"checkpoint": chosen.checkpoint, "selected_on": "val",
                          "domain_val_loss": chosen.domain_val_loss, "domain_test_loss": chosen.domain_test_loss}
    assert chosen.domain_test_loss < rows[-1].domain_test_loss
    assert load_run(tmp_path / "ft").best_eval() == chosen

    # mixer eval: nothing new to do, then only the missing checkpoint
    before = (pre / "evals.jsonl").read_text()
    assert run_cli(capsys, "eval", str(pre))[0] == 0 and (pre / "evals.jsonl").read_text() == before
    (pre / "evals.jsonl").write_text(before.splitlines()[0] + "\n")
    code, out, err = run_cli(capsys, "eval", str(pre), "--json")
    assert code == 0, err
    assert (pre / "evals.jsonl").read_text() == before
    assert json.loads(out)[str(pre)] == [json.loads(x) for x in before.splitlines()]

    # another trainer cannot finetune (or resume) a count run
    code, _, err = run_cli(capsys, "train", "finetune", str(mixes["ft"]), "--from", str(pre), "--out",
                           str(tmp_path / "x"), "--trainer", "litgpt", "--dry-run")
    assert code == 2 and "was trained with count" in one_line(err)


def test_a_grid_of_a_second_trainer_records_the_best_grid_point(mixes, capsys, tmp_path, count):
    pre = _train_count_pretrain(mixes, capsys, tmp_path / "pre")
    code, _, err = run_cli(capsys, "train", "finetune", str(mixes["ft"]), "--from", str(pre), "--out",
                           str(tmp_path / "g"), "--patience", "0", "--grid", "lr=0.001,0.1,10")
    assert code == 0, err
    root = json.loads((tmp_path / "g" / "run.json").read_text())
    best = {p.name: best_eval(read_evals(p), "val") for p in (tmp_path / "g").iterdir() if p.is_dir()}
    assert sorted(best) == ["lr=0.001,warmup=0", "lr=0.1,warmup=0", "lr=10,warmup=0"]
    assert len({b.domain_val_loss for b in best.values()}) == 3  # smoothing matters
    winner = min(best, key=lambda n: best[n].domain_val_loss)
    assert root["best"] == {"run": winner, "checkpoint": best[winner].checkpoint, "selected_on": "val",
                            "domain_val_loss": best[winner].domain_val_loss,
                            "domain_test_loss": best[winner].domain_test_loss}
    assert root["trainer"] == "count" and root["select_on"] == "val"
    assert root["hparams"]["grid"] == {"lr": [0.001, 0.1, 10.0], "warmup": [0]}
    assert [(p["run"], p["lr"]) for p in root["hparams"]["points"]] == [
        ("lr=0.001,warmup=0", 0.001), ("lr=0.1,warmup=0", 0.1), ("lr=10,warmup=0", 10.0)]
    assert load_run(tmp_path / "g").best_eval() == best[winner]
    # `mixer eval` of the grid folder evaluates its grid points (all done already)
    code, out, err = run_cli(capsys, "eval", str(tmp_path / "g"), "--json")
    assert code == 0 and sorted(json.loads(out)) == sorted(str(tmp_path / "g" / n) for n in best)


def test_no_eval_leaves_the_scores_and_the_winner_to_mixer_eval(mixes, capsys, tmp_path, count):
    """--no-eval trains only; `mixer eval` then scores every checkpoint and records the winners
    that an evaluating run records (a grid's among its points)."""
    pre = _train_count_pretrain(mixes, capsys, tmp_path / "pre")
    args = ["train", "finetune", str(mixes["ft"]), "--from", str(pre), "--patience", "0", "--grid", "lr=0.001,10"]
    assert run_cli(capsys, *args, "--out", str(tmp_path / "now"))[0] == 0
    code, out, err = run_cli(capsys, *args, "--out", str(tmp_path / "later"), "--no-eval")
    assert code == 0 and "not evaluated (--no-eval)" in out, err
    later = json.loads((tmp_path / "later" / "run.json").read_text())
    assert later["best"] is None and later["evaluated"] is False
    assert not list((tmp_path / "later").glob("*/evals.jsonl"))
    point = json.loads((tmp_path / "later" / "lr=10,warmup=0" / "run.json").read_text())
    assert point["evaluated"] is False and point["time"]["evaluation"] is None and point["status"] == "done"
    assert run_cli(capsys, "eval", str(tmp_path / "later"))[0] == 0
    now, later = (json.loads((tmp_path / r / "run.json").read_text()) for r in ("now", "later"))
    assert later["best"] == now["best"] and later["best"] is not None and later["evaluated"] is True
    assert later["hparams"]["points"] == now["hparams"]["points"]
    for name in ("lr=0.001,warmup=0", "lr=10,warmup=0"):
        a, b = (json.loads((tmp_path / r / name / "run.json").read_text()) for r in ("now", "later"))
        assert a["best"] == b["best"] and b["evaluated"] is True
        assert (tmp_path / "now" / name / "evals.jsonl").read_text() == (tmp_path / "later" / name / "evals.jsonl").read_text()


def test_finetune_defaults_to_the_papers_rate_grid_relative_to_the_parent(mixes, capsys, tmp_path, count):
    """No flags: three grid points at 0.0256, 0.102 and 0.256 times the parent's final rate (1.0
    for the count trainer, whose rate is constant), chosen on val."""
    from mixer.training.schedules import PAPER_LR_RATIOS

    pre = _train_count_pretrain(mixes, capsys, tmp_path / "pre")
    code, out, err = run_cli(capsys, "train", "finetune", str(mixes["ft"]), "--from", str(pre), "--out",
                             str(tmp_path / "g"), "--patience", "1")
    assert code == 0, err
    root = json.loads((tmp_path / "g" / "run.json").read_text())
    assert root["hparams"]["grid"] == {"lr_ratio": list(PAPER_LR_RATIOS), "warmup": [0]}
    assert [p["run"] for p in root["hparams"]["points"]] == [
        "lr_ratio=0.025563,warmup=0", "lr_ratio=0.102252,warmup=0", "lr_ratio=0.25563,warmup=0"]
    assert [p["lr"] for p in root["hparams"]["points"]] == list(PAPER_LR_RATIOS)
    assert root["best"]["selected_on"] == "val" and "chosen on domain val loss" in out


def test_selecting_on_test_is_the_papers_protocol_and_a_store_without_val_needs_it(capsys, tmp_path, count):
    stores = make_stores(tmp_path / "stores", general_docs=300, domain_docs=30, domain_val=False)
    spt = build(stores, tmp_path / "spt", "--fraction", "0.1", "--tokens", "20K", "--seq-len", "32")
    ft = build(stores, tmp_path / "ft", "--epochs", "4", "--seq-len", "32")
    pre = _train_count_pretrain({"spt": spt}, capsys, tmp_path / "pre")
    code, _, err = run_cli(capsys, "train", "finetune", str(ft), "--from", str(pre), "--out", str(tmp_path / "a"),
                           "--lr-ratio", "0.5")
    assert code == 1 and "no domain validation split" in one_line(err) and "--select-on test" in err
    assert not (tmp_path / "a").exists()
    code, _, err = run_cli(capsys, "train", "finetune", str(ft), "--from", str(pre), "--out", str(tmp_path / "b"),
                           "--lr-ratio", "0.5", "--select-on", "test")
    assert code == 0, err
    meta = json.loads((tmp_path / "b" / "run.json").read_text())
    assert meta["select_on"] == "test" and meta["best"]["selected_on"] == "test"
    assert json.loads((tmp_path / "b" / "count.json").read_text())["val_sets"] == ["music-test"]
    rows = read_evals(tmp_path / "b")
    assert all(r.domain_val_loss is None for r in rows)
    assert meta["best"]["domain_test_loss"] == best_eval(rows, "test").domain_test_loss


def test_eval_of_a_run_whose_mix_moved_names_the_mix(mixes, capsys, tmp_path, count):
    root = tmp_path / "study"
    shutil.copytree(mixes["spt"], root / "mix")
    run = _train_count_pretrain({"spt": root / "mix"}, capsys, root / "run")
    (run / "evals.jsonl").unlink()
    (root / "mix").rename(root / "moved")
    code, _, err = run_cli(capsys, "eval", str(run))
    line = one_line(err)
    assert code == 1 and f"{root / 'mix' / 'manifest.json'}: no manifest" in line and str(run / "run.json") in line
    assert "internal error" not in line
    shutil.rmtree(root / "moved")
    assert run_cli(capsys, "eval", str(run))[0] == 1


def test_the_generic_path_imports_no_litgpt_and_no_torch(mixes, tmp_path):
    """In a fresh process: train and evaluate with the count trainer; LitGPT and torch stay unimported."""
    script = (
        "import sys\n"
        "from mixer.training.registry import register\n"
        "register('count', 'count_trainer:TRAINER')\n"
        "from mixer.cli import main\n"
        "for argv in ([\n"
        f"    'train', 'pretrain', {str(mixes['spt'])!r}, '--model', 'bigram', '--trainer', 'count',\n"
        f"    '--out', {str(tmp_path / 'run')!r}], ['eval', {str(tmp_path / 'run')!r}]):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit as e:\n"
        "        assert not e.code, e.code\n"
        "print(sorted(m for m in ('torch', 'litgpt', 'mixer_litgpt') if m in sys.modules))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(HERE), str(ROOT / "tests")])}
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().splitlines()[-1] == "[]"


def test_mixer_names_no_adapter_outside_the_registry():
    hits = [f"{p.relative_to(ROOT)}:{i}" for p in sorted((ROOT / "mixer").rglob("*.py"))
            for i, line in enumerate(p.read_text().splitlines(), 1)
            if ("trainer_adapters" in line or "mixer_litgpt" in line)
            and p.name != "registry.py"]
    assert hits == []


def test_the_python_api_trains_finetunes_and_evaluates_as_the_cli_does(mixes, capsys, tmp_path, count):
    """mixer.pretrain / finetune / evaluate are the commands' functions: the same run folders,
    byte for byte, as `mixer train` and `mixer eval` (the count trainer is deterministic)."""
    import mixer

    pre = mixer.pretrain(mixes["spt"], tmp_path / "api" / "pre", model="bigram", trainer="count", checkpoints=2)
    assert pre["status"] == "done"
    ft = mixer.finetune(mixes["ft"], tmp_path / "api" / "ft", tmp_path / "api" / "pre", lr_ratio="0.5,1", patience=1)
    assert ft["status"] == "done" and len(ft["hparams"]["points"]) == 2 and ft["best"]["run"]
    assert mixer.evaluate(tmp_path / "api" / "pre") == {
        str(tmp_path / "api" / "pre"): [e.as_row() for e in read_evals(tmp_path / "api" / "pre")]}

    cli = tmp_path / "cli"
    for argv in (["train", "pretrain", str(mixes["spt"]), "--model", "bigram", "--trainer", "count",
                  "--checkpoints", "2", "--out", str(cli / "pre")],
                 ["train", "finetune", str(mixes["ft"]), "--from", str(cli / "pre"), "--lr-ratio", "0.5,1",
                  "--patience", "1", "--out", str(cli / "ft")]):
        code, _, err = run_cli(capsys, *argv)
        assert code == 0, err
    points = sorted(p.name for p in (tmp_path / "api" / "ft").iterdir() if p.is_dir())
    assert len(points) == 2 and points == sorted(p.name for p in (cli / "ft").iterdir() if p.is_dir())
    for sub in ["pre", *(f"ft/{p}" for p in points)]:
        assert (tmp_path / "api" / sub / "evals.jsonl").read_bytes() == (cli / sub / "evals.jsonl").read_bytes(), sub


def test_typed_configs_plan_what_the_keywords_plan(mixes, tmp_path, count):
    """A PretrainConfig/FinetuneConfig plans the run its flat keywords plan; a misspelt
    setting, or a config and settings together, is a one-line error naming them."""
    import mixer
    from mixer.errors import UsageError

    cfg = mixer.PretrainConfig(model="bigram", checkpoints=2, seed=3, machine=mixer.Machine(trainer="count"))
    typed = mixer.pretrain_plan(mixes["spt"], tmp_path / "pre", cfg, dry_run=True)
    flat = mixer.pretrain_plan(mixes["spt"], tmp_path / "pre", model="bigram", checkpoints=2, seed=3, trainer="count",
                               dry_run=True)
    assert typed.meta == flat.meta and typed.spec == flat.spec and typed.meta["hparams"]["save_interval"] > 0
    with pytest.raises(UsageError, match="unknown setting.*checkpionts"):
        mixer.pretrain_plan(mixes["spt"], tmp_path / "pre", model="bigram", checkpionts=2)
    with pytest.raises(UsageError, match="not both"):
        mixer.pretrain_plan(mixes["spt"], tmp_path / "pre", cfg, seed=1)

    mixer.pretrain(mixes["spt"], tmp_path / "pre", cfg)
    grid = mixer.finetune_plan(mixes["ft"], tmp_path / "ft", tmp_path / "pre", mixer.FinetuneConfig(patience=1),
                               lr_ratio="0.5,1", dry_run=True)
    assert [p.meta["hparams"]["lr_ratio"] for _, p in grid.points()] == pytest.approx([0.5, 1.0])
    assert all(p.meta["hparams"]["patience"] == 1 for _, p in grid.points())
    with pytest.raises(UsageError, match="lr_ratio="):
        mixer.finetune_plan(mixes["ft"], tmp_path / "ft", tmp_path / "pre", mixer.FinetuneConfig(lr_ratio=0.5))
