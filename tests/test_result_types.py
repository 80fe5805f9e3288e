"""The typed results (TypedDicts) say exactly the keys the real results have, both ways: a key
added to a result without its type, or typed but never produced, fails here."""

from typing import get_type_hints

from mixer import api
from mixer.checks.verify import VerifiedSource, VerifyReport
from mixer.mixing.build import BuildStatus
from mixer.mixing.spec import FractionSummary, PlacedSummary, PlanSummary, SourceSummary
from tests.synth import make_store


def keys_fit(result: dict, typed: type, where: str) -> None:
    required, optional = set(typed.__required_keys__), set(typed.__optional_keys__)
    got = set(result)
    assert not required - got, f"{where}: typed in {typed.__name__} but missing: {sorted(required - got)}"
    assert not got - required - optional, f"{where}: not in {typed.__name__}: {sorted(got - required - optional)}"
    assert set(get_type_hints(typed)) == required | optional


def test_plan_build_and_verify_results_have_their_typed_keys(tmp_path):
    stores = tmp_path / "stores"
    make_store(stores, "prose", "general", n_docs=300, base=1, seed=1, max_len=80)
    make_store(stores, "music", "domain", n_docs=40, base=40_000, seed=2)
    make_store(stores, "proofs", "domain", n_docs=30, base=50_000, seed=3)
    fields = dict(mix={"music": 0.05, "proofs": 0.03}, general="prose", tokens=16_000, seq_len=16,
                  samples_per_shard=300)

    summary = api.plan(stores=stores, **fields)
    keys_fit(summary, PlanSummary, "plan")
    keys_fit(summary["fraction"], FractionSummary, "plan fraction")
    for s in summary["sources"]:
        keys_fit(s, SourceSummary, f"plan source {s['name']}")
    assert summary["placed"]
    for p in summary["placed"]:
        keys_fit(p, PlacedSummary, f"plan placed {p['source']}")

    partial = api.build(tmp_path / "mix", stores=stores, shards="0:1", **fields)
    assert partial["status"] == "partial"
    keys_fit({k: v for k, v in partial.items()}, BuildStatus, "build (partial)")
    done = api.build(tmp_path / "mix", stores=stores, **fields)
    assert done["status"] == "done" and "manifest" in done
    keys_fit(done, BuildStatus, "build (done)")

    report = api.verify(tmp_path / "mix")
    keys_fit(report, VerifyReport, "verify")
    for s in report["sources"]:
        keys_fit(s, VerifiedSource, f"verify source {s['name']}")
    assert any("max_window_deviation" in s for s in report["sources"])  # the placed sources' own bound
