"""One reader per format as training sees it: mixes (mixer.formats.mix) and runs
(mixer.formats.run); their errors are one line on every CLI path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mixutil import build, make_stores, run_cli
from runutil import write_run

from mixer.errors import MixerError
from mixer.formats.mix import MixFileError, MixFiles, load_manifest
from mixer.formats.run import Eval, append_eval, load_run, mix_domain_tokens, read_evals, read_run_meta


@pytest.fixture(scope="module")
def mix(tmp_path_factory):
    root = tmp_path_factory.mktemp("readers")
    return build(make_stores(root / "stores", general_docs=200, domain_docs=30), root / "mix", "--fraction", "0.2",
                 "--tokens", "10K", "--seq-len", "32")


def test_the_mix_reader_is_load_manifest_and_fails_as_a_mixer_error(mix, tmp_path, capsys):
    assert MixFiles.open(mix).manifest == load_manifest(mix)
    (tmp_path / ".build").mkdir()
    (tmp_path / ".build" / "spec.json").write_text("{}")
    with pytest.raises(MixFileError, match="the build is unfinished") as e:
        MixFiles.open(tmp_path)
    assert isinstance(e.value, MixerError) and e.value.exit_code == 1
    (tmp_path / "manifest.json").write_text("[1, 2]")
    for read in (MixFiles.open, load_manifest):
        with pytest.raises(MixFileError, match=r"not a mixer-mix/1 manifest \(format='list'\)"):
            read(tmp_path)
    code, _, err = run_cli(capsys, "train", "pretrain", str(tmp_path), "--model", "tiny", "--out",
                           str(tmp_path / "run"), "--dry-run")
    assert code == 1 and err.strip() == f"mixer: error: {tmp_path / 'manifest.json'}: not a mixer-mix/1 manifest " \
                                        "(format='list')"


def test_mix_domain_tokens_comes_from_the_manifest_and_is_none_when_the_mix_is_gone(mix, tmp_path):
    run = load_run(write_run(tmp_path, "r", [(100, 2.0, 2.0, 3.0)], mix=str(mix)))
    assert mix_domain_tokens(run) == MixFiles.open(mix).source("domain")["train_tokens"] > 0
    gone = load_run(write_run(tmp_path, "g", [(100, 2.0, 2.0, 3.0)], mix=str(tmp_path / "nowhere")))
    assert mix_domain_tokens(gone) is None


def test_evals_round_trip_through_append_and_read(tmp_path):
    rows = [Eval("step-2", 2, 64, 2.5, 2.4, 3.1, train_loss=2.6, lr=1e-3),
            Eval("step-1", 1, 32, 3.0, None, 3.2),
            Eval("final", 2, 64, 2.5, 2.4, 3.1)]
    for r in rows:
        append_eval(tmp_path, r)
    assert read_evals(tmp_path) == [rows[1], rows[0], rows[2]]  # training order; final after its step
    assert json.loads((tmp_path / "evals.jsonl").read_text().splitlines()[0]) == {
        "checkpoint": "step-2", "step": 2, "tokens": 64, "domain_test_loss": 2.5, "domain_train_loss": 2.4,
        "general_val_loss": 3.1, "train_loss": 2.6, "lr": 1e-3, "domain_val_loss": None,
        "domain_train_sample": None, "heldout": None}
    append_eval(tmp_path, Eval("step-1", 1, 32, 2.9, None, 3.2))
    assert read_evals(tmp_path)[0].domain_test_loss == 2.9  # a later line for a checkpoint wins
    with open(tmp_path / "evals.jsonl", "a") as f:
        f.write('{"checkpoint": "x", "tokens": 1, "lr": "fast"}\n')
    with pytest.raises(MixerError, match=r"evals.jsonl:5: lr is 'fast'"):
        read_evals(tmp_path)
    assert read_evals(tmp_path / "nothing") == []


def test_run_meta_is_checked_where_it_is_read(tmp_path, capsys):
    run = write_run(tmp_path, "r", [(100, 2.0, 2.0, 3.0)])
    assert read_run_meta(run)["kind"] == "pretrain"
    meta = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**meta, "format": "other/1"}))
    with pytest.raises(MixerError, match="not a mixer-run/1 run"):
        read_run_meta(run)
    code, _, err = run_cli(capsys, "eval", str(run))
    assert code == 1 and "not a mixer-run/1 run" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(capsys, "train", "finetune", str(tmp_path), "--from", str(tmp_path / "nowhere"),
                           "--out", str(tmp_path / "ft"), "--dry-run")
    assert code == 1 and "not a run folder (no such directory)" in err


def _run(path, kind, parent=None, seed=0):
    path.mkdir(parents=True)
    (path / "run.json").write_text(json.dumps({"format": "mixer-run/1", "kind": kind, "model": "tiny", "seed": seed,
                                              "fraction": 0.0, "parent": parent}))
    (path / "evals.jsonl").write_text(json.dumps({"checkpoint": "final", "step": 1, "tokens": 128,
                                                  "domain_test_loss": 3.0}) + "\n")
    return path


def test_find_parent_in_a_moved_study_folder_matches_the_longest_path_tail(tmp_path):
    """Published results are a copy of the study's runs: each finetune's recorded parent path
    no longer exists, and every seed has a run named `npt`; the tail of the path decides."""
    from mixer.formats.run import find_parent, load_runs

    old = "/gone/study/runs/music"
    paths = []
    for s in (0, 1):
        paths.append(_run(tmp_path / "runs" / "music" / f"s{s}" / "npt", "pretrain", seed=s))
        paths.append(_run(tmp_path / "runs" / "music" / f"s{s}" / "npt-ft", "finetune", f"{old}/s{s}/npt", seed=s))
    runs = load_runs(paths)
    for s in (0, 1):
        ft = next(r for r in runs if r.path == tmp_path / "runs" / "music" / f"s{s}" / "npt-ft")
        assert find_parent(ft, runs).path == tmp_path / "runs" / "music" / f"s{s}" / "npt"
    # Only the folder name in common with two pretraining runs: ambiguous, no parent.
    lone = load_runs([_run(tmp_path / "other" / "ft", "finetune", "/gone/npt")])[0]
    assert find_parent(lone, runs) is None


def test_find_parent_matches_a_grid_point_of_a_moved_study_and_reads_nothing_outside(tmp_path, monkeypatch):
    """Paper 2's finetunes start from the chosen grid point of a post-training run. In a copy
    of the study that grid point is found among the copy's grid points, by a relative parent
    (`relocate`) or by the tail of the old absolute one; the old place is never read."""
    from mixer.formats import run as R

    old = "/gone/study/runs/ee/lam0.5"
    pre = _run(tmp_path / "ee" / "lam0.5" / "pretrain", "pretrain")
    post = tmp_path / "ee" / "lam0.5" / "posttrain"
    _run(post, "finetune", f"{old}/pretrain")
    for lr in ("lr=1", "lr=2"):
        _run(post / lr, "finetune", f"{old}/pretrain")
    ft_abs = _run(tmp_path / "ee" / "lam0.5" / "finetune", "finetune", f"{old}/posttrain/lr=2")
    ft_rel = _run(tmp_path / "ee" / "lam0.5" / "finetune-rel", "finetune", "../posttrain/lr=1")
    runs = R.load_runs([pre, post, ft_abs, ft_rel])
    monkeypatch.setattr(R, "load_run", lambda p: pytest.fail(f"read {p} from disk"))
    by = {r.path.name: r for r in runs}
    assert R.find_parent(by["finetune"], runs).path == post / "lr=2"
    assert R.find_parent(by["finetune-rel"], runs).path == post / "lr=1"
    assert R.find_parent(by["posttrain"], runs).path == pre


def test_relocate_writes_parents_relative_to_the_run():
    from mixer.formats.run import relocate, run_path

    meta = {"parent": "/s/runs/ee/post/lr=2", "parent_checkpoint": "/s/runs/ee/post/lr=2/out/step-1", "kind": "finetune",
            "mix": "/s/mixes/ee/ft", "stage": {"recipe": "/repo/recipes/stages/ee.toml", "name": "finetune"}}
    out = relocate(meta, Path("/s/runs/ee/ft"))
    assert out == {"parent": "../post/lr=2", "parent_checkpoint": "../post/lr=2/out/step-1", "kind": "finetune",
                   "mix": "../../../mixes/ee/ft", "stage": {"recipe": "../../../../repo/recipes/stages/ee.toml",
                                                             "name": "finetune"}}
    assert relocate({"parent": None}, Path("/x")) == {"parent": None}
    # read back against the run folder, wherever the copy lies
    assert run_path(Path("/copy/runs/ee/ft"), out["mix"]) == Path("/copy/runs/ee/ft/../../../mixes/ee/ft")
    assert run_path(Path("/copy/runs/ee/ft"), "/abs/mix") == Path("/abs/mix")


@pytest.mark.parametrize("content", ["[1, 2]", '"text"', '{"format": "other/1"}', "{}"])
def test_every_versioned_reader_refuses_a_file_that_is_not_its_format_in_one_line(tmp_path, content):
    """store.json, manifest.json, run.json and fit.json: a JSON value of another shape or
    format is a MixerError naming the file, never an AttributeError."""
    from mixer.errors import MixerError
    from mixer.formats.fit import load_fit
    from mixer.formats.mix import load_manifest
    from mixer.formats.run import read_run_meta
    from mixer.formats.store import open_store

    for name, read in (("store.json", lambda d: open_store(d.parent, d.name)), ("manifest.json", load_manifest),
                       ("run.json", read_run_meta), ("fit.json", lambda d: load_fit(d / "fit.json"))):
        folder = tmp_path / name.split(".")[0]
        folder.mkdir(exist_ok=True)
        (folder / name).write_text(content)
        with pytest.raises(MixerError, match=rf"{folder / name}: not a mixer-\w+/\d"):
            read(folder)


def test_the_format_writers_refuse_content_their_readers_would_refuse(tmp_path):
    import numpy as np

    from mixer.formats.fit import write_fit
    from mixer.formats.mix import PROV_DTYPE, write_manifest, write_shard_files
    from mixer.formats.report import write_report_json
    from mixer.formats.run import write_run_meta
    from mixer.formats.store import write_store_meta

    for write, content in ((write_run_meta, {"format": "mixer-run/1", "kind": "nope"}),
                           (write_run_meta, {"format": "mixer-run/0", "kind": "pretrain"}),
                           (write_manifest, {"format": "mixer-mix/0"}), (write_fit, {"format": "x"}),
                           (write_store_meta, {}), (write_report_json, {"format": "mixer-fit/2"})):
        with pytest.raises(ValueError, match="not a mixer-"):
            write(tmp_path, content)
    assert not any(tmp_path.iterdir())
    samples = np.arange(12, dtype=np.uint16).reshape(3, 4)
    with pytest.raises(ValueError, match="provenance must be 3 rows"):
        write_shard_files(tmp_path, "shard-00000", samples, np.zeros(2, PROV_DTYPE), {"0": 3})
    record = write_shard_files(tmp_path, "shard-00000", samples, np.zeros(3, PROV_DTYPE), {"0": 3})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shard-00000.bin", "shard-00000.json", "shard-00000.prov.npy"]
    assert json.loads((tmp_path / "shard-00000.json").read_text()) == record and record["samples"] == 3
