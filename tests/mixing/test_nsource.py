"""N-source mixes: several placed sources, each exact per document and in every window."""

import json

import numpy as np
import pytest

from mixer.checks.verify import verify
from mixer.errors import UsageError
from mixer.mixing.build import build
from mixer.mixing.schedule import Layout
from mixer.mixing.spec import MixSpec, resolve
from tests.synth import EOS, doc_lengths, make_store
from tests.mixutil import run_cli

L = 16
BASES = {"prose": 1, "music": 40_000, "proofs": 50_000, "code": 60_000}


@pytest.fixture
def stores(tmp_path):
    make_store(tmp_path / "stores", "prose", "general", n_docs=300, base=1, seed=1, max_len=80)
    make_store(tmp_path / "stores", "music", "domain", n_docs=40, base=BASES["music"], seed=2)
    make_store(tmp_path / "stores", "proofs", "domain", n_docs=30, base=BASES["proofs"], seed=3)
    make_store(tmp_path / "stores", "code", "general", n_docs=200, base=BASES["code"], seed=4, max_len=60)
    return tmp_path / "stores"


def spec(stores, **kw):
    base = dict(stores=str(stores), domain="music", fraction=0.05, tokens=64_000, seq_len=L, seed=0,
                samples_per_shard=900, general="prose", extra=[("proofs", 0.03), ("code", 0.2)])
    base.update(kw)
    return MixSpec(**base)


def source_of(x: np.ndarray) -> np.ndarray:
    """Which source each sample came from, from its token values alone."""
    body = np.where(x == EOS, 0, x).max(axis=1)
    return np.select([body >= 60_000, body >= 50_000, body >= 40_000], [3, 2, 1], 0)


def test_layout_positions_partition_and_bounds():
    lay = Layout.make(10_000, [500, 300, 2000], (0.0, 1.0), seed=7)
    level, index = lay.positions(0, 10_000)
    for i, k in enumerate([500, 300, 2000]):
        assert np.array_equal(np.sort(index[level == i]), np.arange(k))  # each source's samples once, in order
        c = np.concatenate([[0], np.cumsum(level == i)])
        for w in (1, 7, 64, 1000):
            dev = np.abs((c[w:] - c[:-w]) - w * k / 10_000).max()
            assert dev < lay.bounds()[i]
    assert np.array_equal(np.sort(index[level == 3]), np.arange(10_000 - 2800))
    # shards compute the same positions alone
    a = lay.positions(1234, 5678)
    assert np.array_equal(a[0], level[1234:5678]) and np.array_equal(a[1], index[1234:5678])
    assert lay.bounds()[0] == 1.0 and 1.0 < lay.bounds()[2] < 1.5


def test_nsource_mix_exact_counts_fractions_and_verify(stores, tmp_path):
    build(spec(stores), tmp_path / "mix", progress=False)
    m = json.loads((tmp_path / "mix/manifest.json").read_text())
    x = np.concatenate([np.fromfile(tmp_path / "mix" / s["file"], dtype=m["dtype"]).reshape(-1, L + 1) for s in m["shards"]])
    prov = np.concatenate([np.load(tmp_path / "mix" / s["provenance"]) for s in m["shards"]])
    src = source_of(x)
    n = len(x)
    for sid, (name, f) in enumerate([("prose", None), ("music", 0.05), ("proofs", 0.03), ("code", 0.2)]):
        if f is None:
            continue
        assert (src == sid).sum() == round(f * n)
        # per-document repetition recounted from the bytes
        rows = x[src == sid]
        first = x[(src == sid) & (prov["offset"] == 0)][:, 0]  # the stream's first token (general rows are shuffled)
        targets = np.concatenate([first, rows[:, 1:].ravel()])
        counts = np.bincount(targets[targets != EOS] - BASES[name], minlength=len(doc_lengths(stores / name)))
        full = counts // (doc_lengths(stores / name) - 1)
        claim = next(s for s in m["sources"] if s["name"] == name)
        assert {str(k): int(v) for k, v in enumerate(np.bincount(full)) if v} == claim["documents_full_passes"]
    placed = {p["source"]: p for p in m["placed"]}
    assert set(placed) == {"music", "proofs", "code"}
    report = verify(tmp_path / "mix", progress=False)
    assert report["ok"] and "max_window_deviation" in next(s for s in report["sources"] if s["name"] == "proofs")


def test_two_source_mix_is_unchanged(stores, tmp_path):
    """Adding N-source placement must not move a byte of a two-source mix (checksums pinned
    from the release before it)."""
    s = MixSpec(stores=str(stores), domain="music", general="prose", fraction=0.1, tokens=48_000, seq_len=L,
                samples_per_shard=700)
    build(s, tmp_path / "mix", progress=False)
    m = json.loads((tmp_path / "mix/manifest.json").read_text())
    assert "extra" not in m["recipe"] and "placed" not in m
    assert [r["xxh3_128"] for r in m["shards"]][:2] == ["9422289cdc96a5cfbf13c162c77942f8", "c936ec6bc580d5409c5eb4a9cdd44ef4"]
    assert m["shards"][4]["provenance_xxh3_128"] == "331fa4be8e97de0908db118cfc3b6768"


def test_verify_catches_a_swapped_source(stores, tmp_path):
    build(spec(stores), tmp_path / "mix", progress=False)
    m = json.loads((tmp_path / "mix/manifest.json").read_text())
    m["placed"][1]["achieved"] += 0.001
    (tmp_path / "mix/manifest.json").write_text(json.dumps(m))
    with pytest.raises(Exception, match="proofs: achieved fraction"):
        verify(tmp_path / "mix", progress=False)


def test_cli_mix_flags(stores, tmp_path, capsys):
    code, out, err = run_cli(capsys, "plan", "--stores", str(stores), "--mix", "music=0.05", "--mix", "proofs=0.03",
                             "--general", "prose", "--tokens", "64K", "--seq-len", str(L), "--max-general-epochs", "5")
    assert code == 0 and "proofs share: requested 0.03" in out, err
    code, _, err = run_cli(capsys, "plan", "--stores", str(stores), "--mix", "music", "--tokens", "64K")
    assert code == 2 and "NAME=FRACTION" in err
    code, _, err = run_cli(capsys, "plan", "--stores", str(stores), "--mix", "music=0.5", "--mix", "proofs=0.6",
                           "--tokens", "64K", "--general", "prose")
    assert code == 2 and "add up to 1" in err
    code, _, err = run_cli(capsys, "plan", "--stores", str(stores), "--mix", "music=0.05", "--mix", "music=0.01",
                           "--tokens", "64K", "--general", "prose")
    assert code == 2 and "once" in err


def test_spec_rejects_extra_without_pretraining(stores):
    with pytest.raises(UsageError):
        resolve(spec(stores, fraction=None, epochs=2.0, tokens=None))
