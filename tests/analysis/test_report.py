"""`mixer report` and `mixer fit` on synthetic RUN folders: known metrics, files, and errors."""

import json
from pathlib import Path

import numpy as np
import pytest

from mixer.formats.report import load_report
from mixer.cli import main
from mixer.analysis.forecast import forecast
from mixer.analysis.report import build_report, describe_protocol, format_report, write_report
from mixer.formats.run import load_runs
from runutil import law_runs, write_run


def cli(args, capsys):
    """Run the CLI in-process; (exit code, stdout, stderr)."""
    try:
        main(args)
        code = 0
    except SystemExit as e:
        code = e.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


def finetune(root, name, parent, best, seed_general=3.0, pretrain_tokens=200, ckpt="step-00000002", **kw):
    """A finetune run: at 0 tokens the pretrained model, then best, then a worse checkpoint."""
    rows = [(0, best + 0.5, None, seed_general), (10, best, None, seed_general + 0.2), (20, best + 0.1, None, seed_general + 0.3)]
    return write_run(root, name, rows, kind="finetune", fraction=1.0, parent=parent, pretrain_tokens=pretrain_tokens,
                     parent_checkpoint=ckpt, **kw)


@pytest.fixture
def study(tmp_path):
    """NPT and SPT 2% with two seeds, a larger NPT model, an early SPT finetune, a grid, a replay, an SCPT."""
    r = tmp_path / "runs"
    pre = lambda name, f, seed=0, dom="music", **kw: write_run(  # noqa: E731
        r, name, [(100, None if dom is None else 2.6, None, 3.1), (200, None if dom is None else 2.5, None, 3.0)],
        fraction=f, seed=seed, domain=dom, **kw)
    npt0, npt1 = pre("npt-s0", 0.0, dom=None), pre("npt-s1", 0.0, 1, dom=None)
    spt0, spt1 = pre("spt2-s0", 0.02), pre("spt2-s1", 0.02, 1)
    big = pre("npt-base", 0.0, dom=None, model="base", model_params=5000)
    scpt = pre("scpt1", 0.01, window=[0.9, 1.0])
    finetune(r, "ft-npt-s0", npt0, 2.0, domain="music")
    grid = write_run(r, "ft-npt-s1", [], kind="finetune", fraction=1.0, parent=npt1, pretrain_tokens=200)
    (grid / "evals.jsonl").unlink()  # a grid parent: its evaluations live in the grid points
    finetune(grid, "lr=1e-05", npt1, 2.3, domain="music")
    finetune(grid, "lr=4e-05", npt1, 2.2, domain="music")
    finetune(r, "ft-spt-s0", spt0, 1.96, domain="music")
    finetune(r, "ft-spt-s1", spt1, 2.09, domain="music")
    finetune(r, "ft-spt-early", spt0, 2.15, pretrain_tokens=100, ckpt="step-00000001", domain="music")
    finetune(r, "ft-big", big, 1.9, domain="music", model="base", model_params=5000)
    finetune(r, "ft-scpt", scpt, 2.05, domain="music")
    write_run(r, "replay-spt-s0", [(0, 2.5, None, 3.0), (10, 1.99, None, 3.05)], kind="replay", fraction=0.9,
              parent=spt0, pretrain_tokens=200)
    return r


def test_metrics_from_hand_built_runs(study):
    rep = build_report(load_runs(sorted(study.iterdir())))
    rows = {(e["model"], e["setup"], e["finetune"], e["pretrain_tokens"]): e for e in rep["table"]}
    npt = rows[("tiny", "NPT", "FT", 200)]
    assert npt["post_ft_loss"]["mean"] == pytest.approx(2.1) and npt["seeds"] == [0, 1]  # grid best 2.2, not 2.3
    spt = rows[("tiny", "SPT 2%", "FT", 200)]
    # Per seed: 100 (2.0 - 1.96) / 2.0 = 2%, 100 (2.2 - 2.09) / 2.2 = 5%.
    assert spt["relative_gain_pct"]["mean"] == pytest.approx(3.5)
    assert spt["relative_gain_pct"]["std"] == pytest.approx(np.std([2.0, 5.0], ddof=1))
    assert spt["forgetting"]["mean"] == pytest.approx(0.2)  # general 3.0 at 0 tokens -> 3.2 at the best
    scpt = rows[("tiny", "SCPT 1% @0.9-1", "FT", 200)]
    assert scpt["relative_gain_pct"]["mean"] == pytest.approx(100 * (2.0 - 2.05) / 2.0)  # paired with NPT seed 0
    assert rows[("tiny", "SPT 2%", "replay 10%", 200)]["relative_gain_pct"] is None  # no NPT replay to compare
    m = next(x for x in rep["compute_multiplier"] if x["setup"] == "SPT 2%" and x["finetune"] == "FT")
    # SPT after FT: 2.15 at 100 tokens, 2.025 at 200; NPT reaches 2.1 at 200. Crossing at 100 * 2**0.4.
    assert m["bound"] == "=" and m["value"] == pytest.approx(200 / (100 * 2**0.4))
    g = next(x for x in rep["gap_closed"] if x["setup"] == "SPT 2%")
    assert (g["small"], g["large"]) == ("tiny", "base")
    assert g["gap_closed_pct"] == pytest.approx(100 * (2.1 - 2.025) / (2.1 - 1.9))
    # Per seed: only seed 0 has an SPT curve of two points (2.15 at 100, 1.96 at 200) against its
    # own NPT 2.0: crossing at 100 * 2**(0.15 / 0.19). Seed 1 has one SPT point (2.09 <= 2.2): a bound.
    per = {x["seed"]: x for x in m["per_seed"]}
    assert per[0]["bound"] == "=" and per[0]["value"] == pytest.approx(200 / (100 * 2 ** (0.15 / 0.19)))
    assert per[1]["bound"] == ">=" and per[1]["value"] == pytest.approx(1.0)
    assert m["over_seeds"]["n"] == 2 and m["bounds_over_seeds"] == ["=", ">="]
    # Gap per seed against the large model's 1.9: (2.0 - 1.96) / 0.1 and (2.2 - 2.09) / 0.3.
    gaps = {x["seed"]: x["gap_closed_pct"] for x in g["per_seed"]}
    assert gaps == pytest.approx({0: 40.0, 1: 100 * 0.11 / 0.3})
    assert "per seed" in format_report(rep)


def test_report_writes_markdown_json_and_plots(study, tmp_path, capsys):
    out = tmp_path / "rep"
    code, stdout, err = cli(["report", *map(str, sorted(study.iterdir())), "--out", str(out)], capsys)
    assert code == 0, err
    assert "SPT 2%" in stdout and "compute multiplier" in stdout and "gap closed" in stdout
    for f in ("domain_loss_vs_tokens.png", "post_ft_vs_fraction.png", "frontier.png", "post_ft_vs_tokens.png"):
        assert (out / f).read_bytes()[:4] == b"\x89PNG"
    md = (out / "report.md").read_text()
    assert "![frontier](frontier.png)" in md and "rel. gain" in md
    assert load_report(out / "report.json")["format"] == "mixer-report/1"
    code, stdout, _ = cli(["report", *map(str, sorted(study.iterdir())), "--out", str(out), "--json"], capsys)
    assert code == 0 and json.loads(stdout)["table"]


def test_plots_have_one_panel_per_domain(study, tmp_path, capsys):
    """Two domains' losses differ by nats: each gets its own panel (and its own Pareto front)."""
    import matplotlib.image

    def widths(out):
        return {f: matplotlib.image.imread(out / f).shape[1]
                for f in ("domain_loss_vs_tokens.png", "post_ft_vs_fraction.png", "frontier.png")}

    one = tmp_path / "one"
    assert cli(["report", *map(str, sorted(study.iterdir())), "--out", str(one)], capsys)[0] == 0
    pre = write_run(study, "spt-proofs", [(100, 4.6, None, 3.1), (200, 4.5, None, 3.0)], fraction=0.05, domain="proofs")
    finetune(study, "ft-spt-proofs", pre, 4.2, domain="proofs")
    two = tmp_path / "two"
    assert cli(["report", *map(str, sorted(study.iterdir())), "--out", str(two)], capsys)[0] == 0
    w1, w2 = widths(one), widths(two)
    assert all(w2[f] > 1.4 * w1[f] for f in w1), (w1, w2)


def test_cli_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, _, err = cli(["report", str(tmp_path / "empty")], capsys)
    assert code == 1 and err.count("\n") == 1 and "run.json: missing" in err
    run = write_run(tmp_path, "noevals", [(10, 2.0, 2.0, 3.0)])
    (run / "evals.jsonl").unlink()
    code, _, err = cli(["fit", str(run)], capsys)
    assert code == 1 and err.count("\n") == 1 and "evals.jsonl: missing" in err and "mixer eval" in err
    (run / "evals.jsonl").write_text("")
    code, _, err = cli(["report", str(run)], capsys)
    assert code == 1 and "no evaluated checkpoints" in err
    (run / "evals.jsonl").write_text('{"tokens": 1}\n{oops\n')
    code, _, err = cli(["report", str(run)], capsys)
    assert code == 1 and "evals.jsonl:2: not valid JSON" in err
    (run / "run.json").write_text(json.dumps({"format": "mixer-run/1", "kind": "pretrain", "fraction": 2}))
    code, _, err = cli(["report", str(run)], capsys)
    assert code == 1 and "fraction 2 must be a number in [0, 1]" in err
    code, _, err = cli(["report"], capsys)
    assert code == 2 and "RUN folders" in err
    code, _, err = cli(["fit", str(tmp_path / "empty"), "--holdout", "5"], capsys)
    assert code == 2 and "fraction in (0, 1]" in err


def test_fit_on_a_tiny_study_degrades_and_still_writes_fit_json(tmp_path, capsys):
    """Two fractions and three checkpoints: per-fraction curves only, said plainly."""
    runs = law_runs(tmp_path / "runs", [0.0, 0.02], np.array([1e6, 2e6, 4e6]), noise=0.0)
    out = tmp_path / "fit"
    code, stdout, err = cli(["fit", *map(str, runs), "--out", str(out)], capsys)
    assert code == 0, err
    assert "not fitted: joint law" in stdout
    fit = json.loads((out / "fit.json").read_text())
    assert fit["law"] is None and fit["units"]["fraction"].startswith("fraction")
    assert all(p["train"] is not None for p in fit["per_fraction"])
    assert (out / "fit.png").exists()
    r = forecast(fit, 4 * 10**6)
    # at 4M tokens (4 token units) the law puts 2% below NPT (2.49 vs 2.68 nats, before the
    # gain), and both gain 5 T^-0.1 + 0.02
    from runutil import TRUE_LAW
    from mixer.analysis.scaling import law

    truth = {d: float(law(TRUE_LAW, 4e6, d, 1e6)["test"]) - (5.0 * 4e6**-0.1 + 0.02) for d in (0.0, 0.02)}
    assert truth[0.02] < truth[0.0] - 0.15
    assert r["source"] == "per-fraction curves" and r["recommended"]["fraction"] == 0.02
    assert r["recommended"]["post_ft_loss"] == pytest.approx(truth[0.02], rel=0.01)
    # mixer plan --fit: inside the measured tokens by default, beyond them only when asked, and said
    code, _, err = cli(["plan", "--fit", str(out / "fit.json"), "--tokens", "40M"], capsys)
    assert code == 2 and "10x the largest measured checkpoint" in err and "--extrapolate" in err
    assert err.count("\n") == 1
    code, stdout, err = cli(["plan", "--fit", str(out / "fit.json"), "--tokens", "40M", "--extrapolate",
                             "--plot", str(tmp_path / "f.png")], capsys)
    assert code == 0, err
    assert "extrapolated in tokens: the budget 40M is 10x the largest measured checkpoint (4M)" in stdout
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"
    code, _, err = cli(["plan", "--domain", "music", "--fraction", "0.1", "--tokens", "1M", "--extrapolate"], capsys)
    assert code == 2 and "--extrapolate: only with --fit" in err
    code, _, err = cli(["fit", *map(str, runs), "--out", str(out), "--holdout", "0.1"], capsys)
    assert code == 2 and "no pretraining runs at that fraction" in err


def test_fit_with_holdout_on_law_runs(tmp_path, capsys):
    tokens = np.logspace(8.5, 11.3, 16).astype(np.int64)
    runs = law_runs(tmp_path / "runs", [0.0, 0.001, 0.01, 0.02, 0.05, 0.1], tokens, noise=0.001)
    out = tmp_path / "fit"
    code, stdout, err = cli(["fit", *map(str, runs), "--out", str(out), "--holdout", "0.1"], capsys)
    assert code == 0, err
    fit = json.loads((out / "fit.json").read_text())
    assert fit["holdout"]["test"]["mean_abs_rel_error_pct"] < 1.0
    assert [g["kind"] for g in fit["finetune_gain"]] == ["power"] * 6
    assert fit["finetune_gain"][3]["b"] == pytest.approx(-0.1, abs=0.02)
    assert "held-out fraction 0.1" in stdout
    r = forecast(fit, 10**12, domain_tokens=300_000_000, extrapolate=True)
    assert r["source"] == "joint law" and r["extrapolation"]["tokens"] == pytest.approx(10**12 / tokens.max())


def test_fit_needs_one_model_and_domain(study, capsys):
    code, stdout, err = cli(["fit", *map(str, sorted(Path(study).iterdir())), "--out", str(study.parent / "fit")], capsys)
    assert code == 0, err  # NPT runs without a domain join the one model/domain present
    assert "not fitted: joint law" in stdout and "late window" in stdout  # SCPT is outside the law
    code, _, err = cli(["fit", *map(str, sorted(Path(study).iterdir())), "--domain", "chem"], capsys)
    assert code == 2 and "model/domain in these runs: tiny/music" in err
    write_run(study, "chem-spt", [(100, 2.0, 1.9, 3.0)], fraction=0.02, domain="chem")
    code, _, err = cli(["fit", *map(str, sorted(Path(study).iterdir()))], capsys)
    assert code == 2 and "choose one with --model and --domain" in err


def _set_meta(run: Path, **fields) -> Path:
    meta = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps(meta | fields))
    return run


def _ft_rows(val_test: list[tuple[float, float]], general: float = 3.0) -> list[dict]:
    return [{"tokens": 10 * (i + 1), "domain_val_loss": v, "domain_test_loss": t, "domain_train_loss": None,
             "general_val_loss": general} for i, (v, t) in enumerate(val_test)]


def test_post_ft_loss_is_the_test_loss_where_validation_chose(tmp_path, capsys):
    """Selected on val, reported on test: the reported loss is not the lowest test loss."""
    r = tmp_path / "runs"
    npt = write_run(r, "npt", [(100, 2.6, None, 3.1)], fraction=0.0)
    spt = write_run(r, "spt", [(100, 2.5, None, 3.1)], fraction=0.02)
    # NPT: val picks the second checkpoint (test 2.10) though the third has test 2.00
    _set_meta(write_run(r, "ft-npt", _ft_rows([(2.3, 2.2), (2.1, 2.1), (2.2, 2.0)]), kind="finetune", fraction=1.0,
                        parent=npt, pretrain_tokens=100), select_on="val")
    # SPT: a grid of two points; the val winner is point b's first checkpoint (val 1.90, test 1.995)
    grid = _set_meta(write_run(r, "ft-spt", [], kind="finetune", fraction=1.0, parent=spt, pretrain_tokens=100),
                     select_on="val", hparams={"grid": {"lr_ratio": [0.1, 0.2], "warmup": [5]}, "reference_lr": 1e-3,
                                               "points": [{"run": "a", "lr": 1e-4, "lr_ratio": 0.1, "warmup": 5},
                                                          {"run": "b", "lr": 2e-4, "lr_ratio": 0.2, "warmup": 5}]})
    (grid / "evals.jsonl").unlink()
    for name, rows, lr in (("a", [(1.95, 1.90), (1.92, 1.93)], 1e-4), ("b", [(1.90, 1.995), (1.99, 1.85)], 2e-4)):
        _set_meta(write_run(grid, name, _ft_rows(rows), kind="finetune", fraction=1.0, parent=spt, pretrain_tokens=100),
                  select_on="val", hparams={"lr": lr, "lr_ratio": lr / 1e-3, "warmup": 5, "schedule": "constant"})
    rep = build_report(load_runs([npt, spt, r / "ft-npt", grid]))
    rows = {e["setup"]: e for e in rep["table"]}
    assert rows["NPT"]["post_ft_loss"]["mean"] == pytest.approx(2.1)  # the old code reported 2.0
    assert rows["SPT 2%"]["post_ft_loss"]["mean"] == pytest.approx(1.995)  # the old code reported 1.85
    assert rows["SPT 2%"]["relative_gain_pct"]["mean"] == pytest.approx(100 * (2.1 - 1.995) / 2.1)
    spt_row = next(x for x in rep["finetune_runs"] if x["setup"] == "SPT 2%")
    assert spt_row["chosen"]["run"] == "b" and spt_row["chosen"]["lr_ratio"] == pytest.approx(0.2)
    assert spt_row["selected_on"] == "val" and spt_row["selection_loss"] == pytest.approx(1.90)
    lines = [describe_protocol(p) for p in rep["finetuning"]]
    assert ("finetuning (1 run(s)): constant rate after warmup, grid of 2: lr {0.1, 0.2} x the parent's rate x "
            "warmup {5} steps; checkpoint and configuration chosen on the domain validation split, test split "
            "reported; the winner is 1 of 1 at its highest rate (the best rate may lie beyond the grid)") in lines
    out = tmp_path / "rep"
    write_report(rep, load_runs([npt, spt, r / "ft-npt", grid]), out)
    md = (out / "report.md").read_text()
    assert "chosen on the domain validation split" in md and "LR/warmup grid" not in md


def test_selecting_on_test_is_said_to_be_the_papers_protocol(tmp_path):
    r = tmp_path / "runs"
    npt = write_run(r, "npt", [(100, 2.6, None, 3.1)], fraction=0.0)
    _set_meta(write_run(r, "ft", _ft_rows([(2.3, 2.2), (2.1, 2.1), (2.2, 2.0)]), kind="finetune", fraction=1.0,
                        parent=npt, pretrain_tokens=100), select_on="test")
    rep = build_report(load_runs([npt, r / "ft"]))
    assert rep["table"][0]["post_ft_loss"]["mean"] == pytest.approx(2.0)
    assert "(--select-on test: the paper's protocol" in format_report(rep)


def test_multiplier_against_every_npt_budget_flags_saturation_and_capped_finetunes(tmp_path):
    """NPT finetuned at 100, 200 and 400 tokens (two seeds) flattens out: 2.20 -> 2.10 -> 2.099,
    while its seeds disagree by 0.02 at 400: saturated there, not at 200. SPT's finetune at 200
    tokens is still improving at its cap (best at its last evaluation)."""
    r = tmp_path / "runs"

    def pre(name, f, seed):
        return write_run(r, name, [(t, 2.5, None, 3.0) for t in (100, 200, 400)], fraction=f, seed=seed)

    def ft(name, parent, tokens, best, capped=False):
        """Start, then three checkpoints: the best in the middle, or (capped) at the end."""
        losses = [best + 0.05, best + 0.02, best] if capped else [best + 0.05, best, best + 0.1]
        rows = [(0, best + 0.5, None, 3.0)] + [(10 * (i + 1), x, None, 3.1 + 0.1 * i) for i, x in enumerate(losses)]
        return write_run(r, name, rows, kind="finetune", fraction=1.0, parent=parent, pretrain_tokens=tokens)

    npt_loss = {100: (2.20, 2.20), 200: (2.09, 2.11), 400: (2.085, 2.113)}
    spt_loss = {100: 2.15, 200: 2.05, 400: 2.0}
    for seed in (0, 1):
        n, s = pre(f"npt-s{seed}", 0.0, seed), pre(f"spt-s{seed}", 0.05, seed)
        for t in (100, 200, 400):
            ft(f"ft-npt-{t}-s{seed}", n, t, npt_loss[t][seed])
            ft(f"ft-spt-{t}-s{seed}", s, t, spt_loss[t] + 0.001 * seed, capped=(t == 200))
    rep = build_report(load_runs(sorted(p for p in r.iterdir())))
    m = next(x for x in rep["compute_multiplier"] if x["setup"] == "SPT 5%")
    assert [ref["npt_tokens"] for ref in m["references"]] == [400, 200, 100]
    top, mid, low = m["references"]
    assert m["value"] == top["value"] and m["npt_tokens"] == 400
    # at 400: NPT mean 2.099, improved 0.001 per doubling from 2.10, seed std 0.0198: saturated
    assert top["saturation"]["saturated"] and top["saturation"]["gain_per_doubling"] == pytest.approx(0.001)
    assert "saturated" in top["note"] and "plateau" in top["note"]
    assert mid["saturation"]["saturated"] is False and low["saturation"] is None
    # SPT (2.1505 at 100, 2.0505 at 200) reaches NPT's 2.099 between 100 and 200, on a capped finetune
    assert top["crossing_rests_on"] == [100.0, 200.0] and top["spt_at_cap"] == [200.0]
    assert "still improving at their cap" in top["note"]
    assert top["value"] == pytest.approx(400 / (100 * 2 ** ((2.1505 - 2.099) / 0.1)))
    assert all(x["at_cap"] == [200.0] for x in top["per_seed"])
    text = format_report(rep)
    assert "vs NPT at 400 tokens" in text and "  and: " in text and "vs NPT at 200 tokens" in text
    rows = [x for x in rep["finetune_runs"] if x["pretrain_tokens"] == 200 and x["setup"] == "SPT 5%"]
    assert all(x["at_cap"] for x in rows)
    assert "were still improving when their data ran out" in text
