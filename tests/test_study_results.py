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
LAW = ROOT / "docs" / "results" / "study-law"  # the revised design's law rows (--parts law)
LAW_MARK = "<!-- law table: recomputed by tests/test_study_results.py -->"
PAPER2 = ROOT / "docs" / "results" / "study-paper2"  # the revised design's paper 2 (--parts paper2)
PAPER2_MARK = "<!-- paper 2 table: recomputed by tests/test_study_results.py -->"


def _headline():
    spec = importlib.util.spec_from_file_location("headline", ROOT / "examples" / "headline.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["headline"] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def _shown_as_published(make_table, results: Path, mark: str, what: str) -> dict:
    """The table `make_table` recomputes from `results` is the README's between the two `mark`
    lines and the published headline.md; returns the data behind it."""
    md, data = make_table(results)
    readme = (ROOT / "README.md").read_text()
    assert readme.count(mark) == 2, f"README.md: the {what} table sits between two '{mark}' lines"
    assert readme.split(mark)[1].strip() == md.strip()
    assert (results / "headline.md").read_text().strip() == md.strip()
    return data


def test_readme_table_is_recomputed_from_the_published_runs():
    data = _shown_as_published(_headline().table, RESULTS, MARK, "study")
    # The runs behind it are all there: 3 seeds of NPT and of the best SPT fraction, the larger
    # model, and paper 2's five lambdas.
    rows = data["report"]["table"]
    assert max(len(e["seeds"]) for e in rows if e["setup"] == "NPT") >= 3
    assert max(len(e["seeds"]) for e in rows if e["setup"] != "NPT") >= 3
    assert {e["model"] for e in rows} >= {"tiny", "small"}
    assert sorted(e["lam"] for e in data["early_exposure"]["early_exposure"]) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert data["fit"]["law"] is not None and data["fit"]["holdout"]["points"] > 0
    # the published fits are what `mixer fit` gives on the published runs today
    for fit in data["fits"]:
        folder = "fit" if fit["domain"] == "music" else f"fit-{fit['domain']}"
        published = json.loads((RESULTS / folder / "fit.json").read_text())
        assert published["format"] == fit["format"]
        assert published["law"]["params"] == pytest.approx(fit["law"]["params"], rel=1e-6)
        assert published["holdout"]["test"] == pytest.approx(fit["holdout"]["test"], rel=1e-6)
        assert [w["kind"] for w in published["warnings"]] == [w["kind"] for w in fit["warnings"]]


def test_readme_law_table_is_recomputed_from_the_published_law_runs():
    """The revised design's law rows: music at 3 seeds, proofs at one, refitted from the
    published runs by `mixer fit`'s code, as the README and headline.md show them."""
    data = _shown_as_published(_headline().law_table, LAW, LAW_MARK, "law")
    music = data["fits"][0]
    assert music["domain"] == "music" and len(music["runs"]) == 18  # 6 fractions x 3 seeds
    for fit in data["fits"]:
        folder = "fit" if fit["domain"] == "music" else f"fit-{fit['domain']}"
        published = json.loads((LAW / folder / "fit.json").read_text())
        assert published["law"]["params"] == pytest.approx(fit["law"]["params"], rel=1e-6)
        assert published["holdout"]["test"] == pytest.approx(fit["holdout"]["test"], rel=1e-6)


def test_readme_paper2_table_is_recomputed_from_the_published_paper2_runs():
    """The revised design's paper 2: five lambdas at 3 full reseeds each, every three-stage
    chain's losses from the published runs by `mixer report`'s code."""
    data = _shown_as_published(_headline().paper2_table, PAPER2, PAPER2_MARK, "paper 2")
    rows = data["early_exposure"]["early_exposure"]
    assert sorted(e["lam"] for e in rows) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert all(e["seeds"] == [0, 1, 2] for e in rows)
    assert not data["early_exposure"]["table"]  # a paper-2 report shows no paper-1 rows


@pytest.mark.parametrize("results", [RESULTS, PAPER2], ids=["first design", "paper 2"])
def test_published_runs_find_every_parent_inside_the_published_folder(monkeypatch, results):
    """A fresh clone has no trace of the machine that ran the study: every finetune's parent
    is found among the published runs (or their grid points), never on disk elsewhere."""
    from mixer.formats import run as R

    runs = [R.load_run(p.parent) for p in sorted(results.glob("runs/**/run.json"))
            if not (p.parent.parent / "run.json").exists()]  # grid points load with their run
    monkeypatch.setattr(R, "load_run", lambda p: pytest.fail(f"{p}: read outside the published runs"))
    with_parent = [r for r in runs for r in R._with_grid_points(r) if r.parent]
    assert with_parent
    for r in with_parent:
        assert not Path(r.parent).is_absolute(), f"{r.path}/run.json: parent {r.parent} is an absolute path"
        parent = R.find_parent(r, runs)
        assert parent is not None and results in parent.path.parents, f"{r.path}: parent {r.parent} not found"


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
    files += sorted(LAW.rglob("*.json")) + sorted(PAPER2.rglob("*.json"))
    for f in files:
        absolute = [s for s in strings(json.loads(f.read_text())) if s.startswith("/")]
        assert not absolute, f"{f}: {absolute[:3]}"
