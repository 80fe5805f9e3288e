from pathlib import Path

import pytest

from mixer.errors import MixerError, UsageError
from mixer.mixing.stages import build_recipe
from mixer.checks.verify import verify
from tests.synth import make_store

RECIPES = Path(__file__).resolve().parents[2] / "recipes" / "stages"
SMALL = {"domain": "music", "tokens": "40K", "seq_len": 16}


@pytest.fixture
def stores(tmp_path):
    make_store(tmp_path / "stores", "prose", "general", n_docs=300, base=1, seed=1, max_len=80)
    make_store(tmp_path / "stores", "music", "domain", n_docs=50, base=40_000, seed=2)
    return tmp_path / "stores"


@pytest.mark.parametrize("recipe", ["npt", "spt", "scpt", "replay", "compute-matched"])
def test_every_shipped_stage_recipe_builds_and_verifies(stores, tmp_path, recipe):
    r = build_recipe(RECIPES / f"{recipe}.toml", stores, tmp_path / recipe, SMALL, progress=False)
    assert [s["status"] for s in r["stages"]] == ["done", "done"]
    for s in r["stages"]:
        assert verify(s["out"], progress=False)["ok"]


def test_later_stage_records_total_exposure(stores, tmp_path):
    r = build_recipe(RECIPES / "spt.toml", stores, tmp_path / "spt", {**SMALL, "fraction": 0.05, "ft_epochs": 3}, progress=False)
    pre, ft = (s["exposure"]["documents_total_full_passes"] for s in r["stages"])
    assert sum(pre.values()) == sum(ft.values()) == 50
    # finetuning adds 2 or 3 full passes to every document on top of pretraining's
    assert min(map(int, ft)) >= min(map(int, pre)) + 2 and max(map(int, ft)) <= max(map(int, pre)) + 3


@pytest.mark.parametrize("lam", [0.0, 0.25, 0.5, 0.75])
def test_compute_matched_sees_each_document_once_in_total(stores, tmp_path, lam):
    r = build_recipe(RECIPES / "compute-matched.toml", stores, tmp_path / "cm", {**SMALL, "lam": lam}, progress=False)
    total = r["stages"][-1]["exposure"]["documents_total_full_passes"]
    assert set(total) <= {"0", "1"}
    assert total.get("0", 0) <= 2  # at most the documents cut at each stage's stream end
    pre = r["stages"][0]["exposure"]["documents_total_full_passes"]
    assert abs(pre.get("1", 0) / 50 - lam) < 0.15


def test_compute_matched_lambda_one_skips_posttraining(stores, tmp_path):
    r = build_recipe(RECIPES / "compute-matched.toml", stores, tmp_path / "cm", {**SMALL, "lam": 1.0}, progress=False)
    assert r["stages"][1]["status"] == "skipped"


def test_recipe_errors_are_one_line(stores, tmp_path):
    with pytest.raises(UsageError, match="not a var"):
        build_recipe(RECIPES / "spt.toml", stores, tmp_path / "x", {"nope": 1}, progress=False)
    bad = tmp_path / "bad.toml"
    bad.write_text('[[stage]]\nname = "a"\nfractoin = 0.1\n')
    with pytest.raises(MixerError, match=r"bad.toml \[\[stage\]\] a: unknown key 'fractoin'"):
        build_recipe(bad, stores, tmp_path / "y", progress=False)
    with pytest.raises(MixerError, match="no such recipe"):
        build_recipe(tmp_path / "missing.toml", stores, None, progress=False)
