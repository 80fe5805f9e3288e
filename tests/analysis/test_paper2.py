"""Paper 2's three-stage pipeline: the recipe builds pretrain -> post-train -> new-task mixes,
`mixer train`/`eval` run and score the chain (the count trainer: no torch), and `mixer report`
gives L_im, L_ft, L_ret, L_pre and both frontiers, each checked against hand-picked values."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mixutil import make_stores, markov_docs, run_cli, write_store

from mixer.analysis.metrics import stage_losses
from mixer.analysis.report import build_report, format_report, write_report
from mixer.formats.run import load_run, load_runs, read_evals
from mixer.training import registry
from runutil import write_run

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "stages" / "early-exposure.toml"


def test_stage_losses_by_hand():
    post = {"music-test": 2.0, "prose-val": 3.0}
    ft = {"proofs-test": 1.5, "music-test": 2.4, "prose-val": 3.3}
    s = stage_losses(post, ft, "music-test", "proofs-test", "prose-val")
    assert (s.L_im, s.L_ft, s.L_ret, s.L_pre) == (2.0, 1.5, 2.4, 3.3)
    assert s.retention_loss == pytest.approx(0.4)
    assert stage_losses(post, {"proofs-test": 1.5}, "music-test", "proofs-test", None).to_dict() == {
        "L_im": 2.0, "L_ft": 1.5, "L_ret": None, "L_pre": None, "retention_loss": None}


@pytest.fixture
def count(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "training"))  # count_trainer.py
    monkeypatch.setattr(registry, "TRAINERS", dict(registry.TRAINERS))
    monkeypatch.setattr(registry, "_loaded", {})
    registry.register("count", "count_trainer:TRAINER")


def test_the_three_stage_pipeline_end_to_end(tmp_path, capsys, count):
    stores = make_stores(tmp_path / "stores", general_docs=400, domain_docs=80)
    write_store(stores, "proofs", "domain", {"train": markov_docs(60, 7, table_seed=300),
                                             "val": markov_docs(20, 8, table_seed=300),
                                             "test": markov_docs(20, 9, table_seed=300)})
    from mixer.mixing.stages import build_recipe

    built = build_recipe(RECIPE, stores, tmp_path / "mixes",
                         {"tokens": "20K", "seq_len": 32, "lam": 0.5, "ft_epochs": 3}, progress=False)
    assert [(s["stage"], s["status"]) for s in built["stages"]] == [
        ("pretrain", "done"), ("posttrain", "done"), ("finetune", "done")]
    # compute-matched: after post-training every D_post document has been seen once in total
    assert set(built["stages"][1]["exposure"]["documents_total_full_passes"]) <= {"0", "1"}
    mixes, runs = tmp_path / "mixes", tmp_path / "runs"

    def mixer(*args: str) -> None:
        code, _, err = run_cli(capsys, *args)
        assert code == 0, err

    mixer("train", "pretrain", str(mixes / "pretrain"), "--model", "bigram", "--trainer", "count",
          "--out", str(runs / "pre"), "--checkpoints", "2")
    mixer("train", "finetune", str(mixes / "posttrain"), "--from", str(runs / "pre"), "--out", str(runs / "post"),
          "--lr-ratio", "0.5", "--patience", "2")
    mixer("train", "finetune", str(mixes / "finetune"), "--from", str(runs / "post"), "--out", str(runs / "ft"),
          "--lr-ratio", "0.5", "--patience", "2")
    post, ft = load_run(runs / "post"), load_run(runs / "ft")
    # one pass of post-training data is still evaluated often enough to stop early on D_post's val split
    assert len(post.evals) >= 4 and post.select_on == "val"
    assert post.meta["stage"]["vars"]["lam"] == 0.5 and load_run(runs / "pre").meta["domain_epochs"] > 0
    # stage 3 starts from the post-training winner, and is scored on every test set of the chain
    assert Path(ft.meta["parent_checkpoint"]).name == post.best_eval().checkpoint
    assert all(set(e.heldout) == {"proofs-test", "prose-val", "music-test"} for e in read_evals(runs / "ft"))
    assert all(e.domain_test_loss == e.heldout["proofs-test"] for e in ft.evals)

    rep = build_report(load_runs([runs / "pre", runs / "post", runs / "ft"]))
    (chain,) = rep["early_exposure_runs"]
    chosen, im = ft.best_eval(), post.best_eval()
    assert (chain["setup"], chain["post_domain"], chain["ft_domain"]) == ("lambda 0.5", "music", "proofs")
    assert chain["L_im"] == im.domain_test_loss == im.heldout["music-test"]
    assert chain["L_ft"] == chosen.heldout["proofs-test"] and chain["L_ret"] == chosen.heldout["music-test"]
    assert chain["L_pre"] == chosen.heldout["prose-val"]
    # neither post-training (L_im) nor stage 3 is a paper-1 finetune: no paper-1 rows for this chain
    assert rep["finetune_runs"] == [] and rep["table"] == []
    files = write_report(rep, load_runs([runs / "pre", runs / "post", runs / "ft"]), tmp_path / "rep")
    assert {"frontier_ret_ft.png", "frontier_pre_ret.png"} <= {f.name for f in files}
    assert "L_ret - L_im" in (tmp_path / "rep" / "report.md").read_text()


def _stage3(root: Path, name: str, parent: Path, rows: list[tuple], domain: str = "proofs", **kw) -> Path:
    """A finetune on the new task: rows (tokens, proofs-test, music-test, prose-val, val)."""
    evals = [{"tokens": t, "domain_test_loss": ft, "domain_val_loss": v, "domain_train_loss": None,
              "general_val_loss": g, "heldout": {"proofs-test": ft, "music-test": ret, "prose-val": g}}
             for t, ft, ret, g, v in rows]
    run = write_run(root, name, evals, kind="finetune", fraction=1.0, parent=parent, domain=domain, **kw)
    meta = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps(meta | {"select_on": "val"}))
    return run


def test_early_exposure_table_and_frontiers_from_hand_built_chains(tmp_path):
    """Two seeds at lambda 0.5 and a lambda-1 chain (no post-training: D_ft finetunes the
    pretrained model): the losses are read at the checkpoints validation chose."""
    r = tmp_path / "runs"
    chains = []
    for seed, (im, ft, ret, pre) in enumerate([(2.0, 1.5, 2.4, 3.3), (2.2, 1.7, 2.3, 3.1)]):
        p = write_run(r, f"pre-{seed}", [(100, 2.5, None, 3.0)], fraction=0.05, seed=seed)
        meta = json.loads((p / "run.json").read_text())
        (p / "run.json").write_text(json.dumps(meta | {"stage": {"name": "pretrain", "vars": {"lam": 0.5}}}))
        post_rows = [{"tokens": 10, "domain_test_loss": im + 0.3, "domain_val_loss": 2.9, "domain_train_loss": None,
                      "general_val_loss": 3.1},
                     {"tokens": 20, "domain_test_loss": im, "domain_val_loss": 2.5, "domain_train_loss": None,
                      "general_val_loss": 3.2}]
        post = write_run(r, f"post-{seed}", post_rows, kind="finetune", fraction=1.0, parent=p, seed=seed)
        meta = json.loads((post / "run.json").read_text())
        (post / "run.json").write_text(json.dumps(meta | {"select_on": "val"}))
        # validation picks the first checkpoint (val 1.0), though the second has the lower test loss
        chains.append(_stage3(r, f"ft-{seed}", post, [(10, ft, ret, pre, 1.0), (20, ft - 0.2, ret + 0.5, pre, 1.1)],
                              parent_checkpoint="step-00000002"))
        chains += [p, post]
    p1 = write_run(r, "pre-lam1", [(100, 1.9, None, 3.0)], fraction=0.1)
    meta = json.loads((p1 / "run.json").read_text())
    (p1 / "run.json").write_text(json.dumps(meta | {"stage": {"name": "pretrain", "vars": {"lam": 1.0}}}))
    chains += [p1, _stage3(r, "ft-lam1", p1, [(10, 1.4, 2.6, 3.4, 1.0)], parent_checkpoint="step-00000001",
                           pretrain_tokens=100)]
    rep = build_report(load_runs(chains))
    rows = {e["setup"]: e for e in rep["early_exposure"]}
    half = rows["lambda 0.5"]
    assert half["seeds"] == [0, 1]
    assert half["L_im"]["mean"] == pytest.approx(2.1) and half["L_ft"]["mean"] == pytest.approx(1.6)
    assert half["L_ret"]["mean"] == pytest.approx(2.35) and half["L_pre"]["mean"] == pytest.approx(3.2)
    assert half["retention_loss"]["mean"] == pytest.approx(0.25)  # (0.4 + 0.1) / 2
    one = rows["lambda 1"]
    assert (one["L_im"]["mean"], one["L_ft"]["mean"], one["L_ret"]["mean"]) == (1.9, 1.4, 2.6)
    # the post-training stages are paper 2's L_im, not a paper-1 comparison of pretraining setups:
    # the report shows no paper-1 rows (no gains, no multipliers) for these runs
    assert rep["table"] == [] and rep["compute_multiplier"] == [] and rep["finetune_runs"] == []
    assert "lambda 0.5" in format_report(rep) and "rel. gain" not in format_report(rep)
    files = {f.name for f in write_report(rep, load_runs(chains), tmp_path / "out")}
    assert {"frontier_ret_ft.png", "frontier_pre_ret.png"} <= files


def test_a_stage3_run_not_started_from_the_post_training_winner_is_noted(tmp_path):
    r = tmp_path / "runs"
    p = write_run(r, "pre", [(100, 2.5, None, 3.0)], fraction=0.05)
    post = write_run(r, "post", [(10, 2.0, None, 3.1), (20, 2.1, None, 3.2)], kind="finetune", fraction=1.0,
                     parent=p)
    ft = _stage3(r, "ft", post, [(10, 1.5, 2.4, 3.3, 1.0)], parent_checkpoint="step-00000002")
    rep = build_report(load_runs([p, post, ft]))
    assert any("not the post-training winner step-00000001" in n for n in rep["notes"])


def test_lambda_one_with_a_subset_skips_post_training(tmp_path):
    """lambda = 1 puts every document of a D_post subset into pretraining: post-training has
    nothing left, even though most of the store's documents were never in the subset."""
    stores = make_stores(tmp_path / "stores", general_docs=400, domain_docs=80)
    write_store(stores, "proofs", "domain", {"train": markov_docs(60, 7, table_seed=300),
                                             "val": markov_docs(20, 8, table_seed=300),
                                             "test": markov_docs(20, 9, table_seed=300)})
    from mixer.mixing.stages import build_recipe

    built = build_recipe(RECIPE, stores, tmp_path / "mixes", {"tokens": "20K", "seq_len": 32, "lam": 1,
                                                             "ft_epochs": 3, "post_subset": "2K"}, progress=False)
    assert [(s["stage"], s["status"]) for s in built["stages"]] == [
        ("pretrain", "done"), ("posttrain", "skipped"), ("finetune", "done")]
    half = build_recipe(RECIPE, stores, tmp_path / "half", {"tokens": "20K", "seq_len": 32, "lam": 0.5,
                                                            "ft_epochs": 3, "post_subset": "2K"}, progress=False)
    post = json.loads((tmp_path / "half" / "posttrain" / "manifest.json").read_text())
    pre = json.loads((tmp_path / "half" / "pretrain" / "manifest.json").read_text())
    assert half["stages"][1]["status"] == "done" and post["samples"] > 0 and pre["samples"] > 0
