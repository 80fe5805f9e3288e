"""verify is independent of the build (issue 13, item 8): it imports none of
mixer/mixing/, so a logic error there is caught instead of repeated. Each `bug` below is
planted in the build's code and left in place while verify runs, as a real bug would be."""

import json
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

import mixer.checks.verify as verify_mod
from mixer.checks.verify import verify
from mixer.errors import MixerError
from mixer.formats.checksum import checksum_file
from mixer.mixing import spec as spec_mod
from mixer.mixing.build import build
from mixer.mixing.feistel import permute
from mixer.mixing.spec import MixSpec
from mixer.mixing.streams import SourceStream
from tests.synth import make_store

L = 16


@pytest.fixture
def stores(tmp_path):
    make_store(tmp_path / "stores", "prose", "general", n_docs=120, base=1, seed=1, max_len=60)
    make_store(tmp_path / "stores", "music", "domain", n_docs=25, base=40_000, seed=2)
    return tmp_path / "stores"


def spec(stores, **kw):
    # 3.3 general epochs and ~6 domain epochs: epochs and general blocks both matter
    # the small general store repeats ~10 epochs: several permutations for verify to re-derive
    base = dict(stores=str(stores), domain="music", fraction=0.1, tokens=64_000, seq_len=L, samples_per_shard=600,
                max_general_epochs=20)
    base.update(kw)
    return MixSpec(**base)


def test_verify_imports_nothing_of_the_build(stores, tmp_path):
    build(spec(stores), tmp_path / "mix", progress=False)
    code = ("import sys; from mixer.checks.verify import verify; verify(sys.argv[1], progress=False); "
            "print(sorted(m for m in sys.modules if m.startswith('mixer.mixing')))")
    p = subprocess.run([sys.executable, "-c", code, str(tmp_path / "mix")], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[]"


def _same_order_every_epoch(monkeypatch):
    # the build draws each epoch's order once, into its plan files (mixer/mixing/plan_cache.py)
    from mixer.mixing.streams import source_key

    def same(self, epoch):
        dtype = self._perm_dtype()
        perm = np.random.default_rng([self.seed, source_key(self.name), 0]).permutation(self.n_docs).astype(dtype)
        with self.files.create(f"e{epoch:05d}.perm", dtype, (self.n_docs,)) as w:
            w.append(perm)
            w.close()
    monkeypatch.setattr(SourceStream, "_make_permutation", same)


def _shuffle_across_epochs(monkeypatch):
    monkeypatch.setattr(SourceStream, "general_order",
                        lambda self, index, n: permute(np.asarray(index, dtype=np.int64), n, 12345))


def _round_down_domain_samples(monkeypatch):
    real = spec_mod.solve_counts

    def solve(**kw):
        c = real(**kw)
        return type(c)(c.samples, c.domain_samples - 1, c.general_samples + 1, c.seq_len, c.window)
    monkeypatch.setattr(spec_mod, "solve_counts", solve)


def _histogram_off_by_one(monkeypatch):
    real = SourceStream.pass_histogram

    def hist(self, stream_tokens):
        h, cut = real(self, stream_tokens)
        return {k: v + (1 if i == 0 else -1) for i, (k, v) in enumerate(h.items())} if len(h) == 2 else h, cut
    monkeypatch.setattr(SourceStream, "pass_histogram", hist)


def _epoch_starts_off_by_one(monkeypatch):
    real = spec_mod.epoch_start_samples
    monkeypatch.setattr(spec_mod, "epoch_start_samples", lambda *a: [s + (i > 0) for i, s in enumerate(real(*a))])


def _gather_drops_a_token(monkeypatch):
    real = SourceStream.gather

    def gather(self, samples, out=None, rows=None, reuse=1):
        out = real(self, samples, out=out, rows=rows, reuse=reuse)
        if rows is not None and len(rows):
            out[rows[0], 3] = out[rows[0], 4]
        return out
    monkeypatch.setattr(SourceStream, "gather", gather)


BUGS = {
    "every epoch reads the documents in epoch 0's order": (_same_order_every_epoch, "differs from the store|passes"),
    "general samples shuffled across epochs": (_shuffle_across_epochs, "block"),
    "one domain sample too few": (_round_down_domain_samples, "fraction.achieved|samples"),
    "pass histogram off by one": (_histogram_off_by_one, "documents_full_passes"),
    "epoch starts off by one": (_epoch_starts_off_by_one, "epoch_start_samples"),
    "a token copied twice": (_gather_drops_a_token, "differs from the store"),
}


@pytest.mark.parametrize("bug", list(BUGS))
def test_a_logic_error_of_the_build_is_caught(stores, tmp_path, monkeypatch, bug):
    plant, named = BUGS[bug]
    plant(monkeypatch)
    build(spec(stores), tmp_path / "mix", progress=False)
    with pytest.raises(MixerError, match=named):
        verify(tmp_path / "mix", progress=False)


def _forge(mix: Path, k: int, at: int) -> None:
    """Change one token of shard k and fix its checksum in the manifest (a consistent forgery)."""
    f = mix / f"shard-{k:05d}.bin"
    x = np.fromfile(f, dtype="<u2")
    x[at] ^= 1
    x.tofile(f)
    m = json.loads((mix / "manifest.json").read_text())
    m["shards"][k]["xxh3_128"] = checksum_file(f)
    (mix / "manifest.json").write_text(json.dumps(m))


@pytest.mark.parametrize("min_run", [0, 10**9], ids=["store runs", "token index"])
def test_both_ways_of_building_samples_agree_and_catch(stores, tmp_path, monkeypatch, min_run):
    monkeypatch.setattr(verify_mod, "SLICE_MIN_RUN", min_run)
    monkeypatch.setattr(verify_mod, "CHUNK_TOKENS", 40 * (L + 1))  # several chunks per shard
    build(spec(stores), tmp_path / "mix", progress=False)
    assert verify(tmp_path / "mix", progress=False)["ok"]
    assert verify(tmp_path / "mix", progress=False, workers=3)["ok"]
    _forge(tmp_path / "mix", 2, 5 * (L + 1) + 16)  # the overlap token of sample 5
    verify(tmp_path / "mix", quick=True, progress=False)  # a consistent forgery: only the tokens tell
    with pytest.raises(MixerError, match=r"shard-00002.bin: sample 5 \(source"):
        verify(tmp_path / "mix", progress=False)


def test_formats_md_rules_rebuild_the_mix(stores, tmp_path):
    """docs/formats.md ("Streams and counts") is enough to rebuild every sample: a naive
    reading of it, one document at a time, against a built mix."""
    s = spec(stores, window=(0.2, 0.9), fraction=0.15, domain_subset_tokens=300, subset_seed=3)
    build(s, tmp_path / "mix", progress=False)
    m = json.loads((tmp_path / "mix" / "manifest.json").read_text())
    x = np.concatenate([np.fromfile(tmp_path / "mix" / r["file"], dtype="<u2").reshape(-1, L + 1) for r in m["shards"]])
    prov = np.concatenate([np.load(tmp_path / "mix" / r["provenance"]) for r in m["shards"]])

    def docs_of(name):
        ends = np.fromfile(stores / name / "train.ds.index", dtype="<u8").astype(np.int64)
        toks = np.fromfile(stores / name / "train.ds", dtype="<u2")
        return [toks[a:b] for a, b in zip(np.concatenate([[0], ends[:-1]]), ends)]

    n = 64_000 // L
    w0, w1 = round(0.2 * n), round(0.9 * n)
    for sid, name in enumerate(["prose", "music"]):
        docs = docs_of(name)
        if name == "music":  # step 1: the seeded subset
            order = np.random.default_rng([3, zlib.crc32(b"music"), 0x5B5E7]).permutation(len(docs))
            keep = int(np.searchsorted(np.cumsum([len(docs[i]) for i in order]), 300, side="left")) + 1
            docs = [docs[i] for i in sorted(order[:keep])]
        n_d = round(0.15 * (w1 - w0))
        count = n_d if name == "music" else n - n_d
        stream, e = [], 0
        while len(stream) < count * L + 1:
            for i in np.random.default_rng([0, zlib.crc32(name.encode()), e]).permutation(len(docs)):
                stream.extend(docs[i].tolist())
            e += 1
        rows = np.flatnonzero(prov["source"] == sid)
        assert len(rows) == count
        for r in rows:
            k = int(prov["offset"][r]) // L
            assert x[r].tolist() == stream[k * L : k * L + L + 1]
        if name == "music":
            assert not np.any((prov["source"] == 1)[:w0]) and not np.any((prov["source"] == 1)[w1:])
            assert [int(o) // L for o in prov["offset"][rows]] == list(range(count))  # stream order
    assert verify(tmp_path / "mix", progress=False)["ok"]

