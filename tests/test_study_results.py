"""The README's results table is recomputed from the published study (docs/results/study/):
every run's run.json and evals.jsonl (grid points included), through the same code `mixer
report` and `mixer fit` run (the laws are refitted from the runs, and the published fit.json
files must say the same). A number edited by hand in the README, or a published file that no
longer gives it, fails here."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "results" / "study"
MARK = "<!-- study table: recomputed by tests/test_study_results.py -->"


def _headline():
    spec = importlib.util.spec_from_file_location("headline", ROOT / "examples" / "headline.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["headline"] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_readme_table_is_recomputed_from_the_published_runs():
    md, data = _headline().table(RESULTS)
    readme = (ROOT / "README.md").read_text()
    assert readme.count(MARK) == 2, f"README.md: the results table sits between two '{MARK}' lines"
    assert readme.split(MARK)[1].strip() == md.strip()
    assert (RESULTS / "headline.md").read_text().strip() == md.strip()
    # The runs behind it are all there: every fraction at 3 full reseeds (NPT and SPT, each
    # finetuned), the larger model, the second law sweep and paper 2's five lambdas at 3 seeds.
    rows = data["report"]["table"]
    fractions = {e["setup"] for e in rows if e["model"] == "tiny"}
    assert fractions == {"NPT", "SPT 2%", "SPT 5%", "SPT 10%", "SPT 15%", "SPT 20%"}
    assert all(len(e["seeds"]) == 3 for e in rows if e["model"] == "tiny" and e["finetune"] == "FT"
               and e["pretrain_tokens"] == max(x["pretrain_tokens"] for x in rows if x["setup"] == e["setup"]))
    assert {e["model"] for e in rows} >= {"tiny", "small"}
    music, proofs = data["fits"]
    assert music["domain"] == "music" and len(music["runs"]) == 18  # 6 fractions x 3 seeds
    assert proofs["domain"] == "proofs" and len(proofs["runs"]) == 6
    ee = data["early_exposure"]
    assert sorted(e["lam"] for e in ee["early_exposure"]) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert all(e["seeds"] == [0, 1, 2] for e in ee["early_exposure"])
    assert not ee["table"]  # paper 2's report shows no paper-1 rows
    assert data["fit"]["law"] is not None and data["fit"]["holdout"]["points"] > 0
    # the published fits are what `mixer fit` gives on the published runs today
    for fit in data["fits"]:
        folder = "fit" if fit["domain"] == "music" else f"fit-{fit['domain']}"
        published = json.loads((RESULTS / folder / "fit.json").read_text())
        assert published["format"] == fit["format"]
        assert published["law"]["params"] == pytest.approx(fit["law"]["params"], rel=1e-6)
        assert published["holdout"]["test"] == pytest.approx(fit["holdout"]["test"], rel=1e-6)
        assert [w["kind"] for w in published["warnings"]] == [w["kind"] for w in fit["warnings"]]


def test_published_runs_find_every_parent_inside_the_published_folder(monkeypatch):
    """A fresh clone has no trace of the machine that ran the study: every finetune's parent
    is found among the published runs (or their grid points), never on disk elsewhere."""
    from mixer.formats import run as R

    runs = [R.load_run(p.parent) for p in sorted(RESULTS.glob("runs/**/run.json"))
            if not (p.parent.parent / "run.json").exists()]  # grid points load with their run
    monkeypatch.setattr(R, "load_run", lambda p: pytest.fail(f"{p}: read outside the published runs"))
    with_parent = [r for r in runs for r in R._with_grid_points(r) if r.parent]
    assert with_parent
    for r in with_parent:
        assert not Path(r.parent).is_absolute(), f"{r.path}/run.json: parent {r.parent} is an absolute path"
        parent = R.find_parent(r, runs)
        assert parent is not None and RESULTS in parent.path.parents, f"{r.path}: parent {r.parent} not found"


def test_no_published_file_holds_an_absolute_path():
    """The published runs, reports and fits name runs, mixes and recipes by paths relative to
    themselves: nothing in them points at the machine that ran the study."""
    import json

    def strings(x):
        if isinstance(x, dict):
            return [s for v in x.values() for s in strings(v)]
        if isinstance(x, list):
            return [s for v in x for s in strings(v)]
        return [x] if isinstance(x, str) else []

    files = sorted(RESULTS.rglob("*.json"))
    assert len(files) > 100
    for f in files:
        absolute = [s for s in strings(json.loads(f.read_text())) if s.startswith("/")]
        assert not absolute, f"{f}: {absolute[:3]}"
