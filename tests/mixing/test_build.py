"""Pins the invariants of docs/design.md (1-7) on synthetic stores whose tokens name their document."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mixer.executors import Executor
from mixer.mixing.build import build
from mixer.errors import MixerError, UsageError
from mixer.mixing.spec import MixSpec
from mixer.checks.verify import verify
from tests.synth import EOS, doc_lengths, make_store

L = 16
DOMAIN_BASE = 40_000  # domain tokens are >= this; general tokens below


def spec(stores, **kw):
    base = dict(stores=str(stores), domain="music", fraction=0.1, tokens=48_000, seq_len=L, seed=0, samples_per_shard=700)
    base.update(kw)
    return MixSpec(**base)


def read_mix(mix: Path):
    """Read a mix with numpy alone (what a user who never heard of mixer would do)."""
    m = json.loads((mix / "manifest.json").read_text())
    shards = [np.fromfile(mix / s["file"], dtype=m["dtype"]).reshape(-1, m["seq_len"] + 1) for s in m["shards"]]
    return m, np.concatenate(shards)


def mix_bytes(mix: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(mix.rglob("*")) if p.is_file() and ".build" not in p.parts}


def test_exact_repetition_counts_recounted_from_bytes(stores, tmp_path):
    build(spec(stores), tmp_path / "mix", progress=False)
    m, x = read_mix(tmp_path / "mix")
    # Every training target is x[:, 1:]; the stream's very first token is x[0, 0] of each source.
    is_dom = np.any((x >= DOMAIN_BASE) & (x != EOS), axis=1)
    dom = x[is_dom]
    targets = np.concatenate([dom[:1, 0], dom[:, 1:].ravel()])
    counts = np.bincount(targets[targets != EOS] - DOMAIN_BASE, minlength=40)
    lengths = doc_lengths(stores / "music") - 1  # tokens per doc without its EOS
    full = counts // lengths
    src = next(s for s in m["sources"] if s["name"] == "music")
    E = src["stream_tokens"] / src["train_tokens"]
    assert set(np.unique(full)) <= {int(E), int(E) + 1}
    hist = {str(k): int(v) for k, v in enumerate(np.bincount(full)) if v}
    assert hist == src["documents_full_passes"]


def test_fraction_in_every_window_from_bytes(stores, tmp_path):
    build(spec(stores, fraction=0.13), tmp_path / "mix", progress=False)
    m, x = read_mix(tmp_path / "mix")
    is_dom = np.any((x >= DOMAIN_BASE) & (x != EOS), axis=1).astype(np.int64)
    assert is_dom.sum() == next(s["samples"] for s in m["sources"] if s["role"] == "domain")
    f = m["fraction"]["achieved"]
    assert abs(f - 0.13) <= 1 / (2 * len(x)) + 1e-12
    c = np.concatenate([[0], np.cumsum(is_dom)])
    for w in range(1, len(x) + 1):
        assert np.abs((c[w:] - c[:-w]) - w * f).max() < 1, w


def test_late_window_puts_every_domain_sample_inside(stores, tmp_path):
    build(spec(stores, fraction=0.5, window=(0.9, 1.0)), tmp_path / "mix", progress=False)
    m, x = read_mix(tmp_path / "mix")
    is_dom = np.any((x >= DOMAIN_BASE) & (x != EOS), axis=1)
    w0 = round(0.9 * len(x))
    assert not is_dom[:w0].any()
    assert abs(is_dom[w0:].mean() - 0.5) < 1 / (len(x) - w0)
    verify(tmp_path / "mix", progress=False)


def test_samples_overlap_by_one_token_and_budget_is_exact(stores, tmp_path):
    build(spec(stores), tmp_path / "mix", progress=False)
    m, x = read_mix(tmp_path / "mix")
    assert m["tokens"] == len(x) * L == 48_000
    prov = np.concatenate([np.load(tmp_path / "mix" / s["provenance"]) for s in m["shards"]])
    dom = x[prov["source"] == 1][np.argsort(prov["offset"][prov["source"] == 1])]
    assert np.array_equal(dom[1:, 0], dom[:-1, -1])


@pytest.mark.parametrize("busy", [False, True], ids=["forked tasks", "datatrove tasks"])
def test_determinism_across_tasks_workers_and_executors(stores, tmp_path, busy):
    """Local tasks are forked processes of the command; a caller already running a thread
    (a fork could copy a held lock) gets datatrove's local executor, which keeps logs."""
    import threading

    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    if busy:
        other.start()
    try:
        build(spec(stores), tmp_path / "a", progress=False)
        build(spec(stores), tmp_path / "b", executor=Executor(tasks=3, workers=1), progress=False)
        build(spec(stores), tmp_path / "c", executor=Executor(tasks=2, workers=2), progress=False)
    finally:
        stop.set()
    a = mix_bytes(tmp_path / "a")
    assert len([k for k in a if k.endswith(".bin")]) > 3
    assert a == mix_bytes(tmp_path / "b") == mix_bytes(tmp_path / "c")
    for mix in ("b", "c"):
        assert bool(list((tmp_path / mix / ".build").glob("logs-local-*"))) == busy


def test_interrupted_build_resumes_to_identical_bytes(stores, tmp_path, monkeypatch):
    build(spec(stores), tmp_path / "ref", progress=False)
    import mixer.mixing.build as b

    real, calls = b.persist_shard, []

    def crash_after_two(plan, k, out, *arrays):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(k)
        return real(plan, k, out, *arrays)

    monkeypatch.setattr(b, "persist_shard", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        build(spec(stores), tmp_path / "mix", progress=False)
    assert not (tmp_path / "mix" / "manifest.json").exists()
    assert not [p for p in (tmp_path / "mix").iterdir() if "tmp" in p.name]
    monkeypatch.setattr(b, "persist_shard", real)
    r = build(spec(stores), tmp_path / "mix", progress=False)
    assert r["shards_skipped"] == 2
    assert mix_bytes(tmp_path / "mix") == mix_bytes(tmp_path / "ref")


def test_a_failing_forked_task_stops_the_build_which_then_resumes(stores, tmp_path, monkeypatch):
    build(spec(stores), tmp_path / "ref", progress=False)
    import mixer.mixing.build as b

    real = b.shard_samples

    def fail_on_three(plan, k, **kw):
        if k == 3:
            raise MixerError("shard 3: the store changed under the build")
        return real(plan, k, **kw)

    monkeypatch.setattr(b, "shard_samples", fail_on_three)  # the forked tasks inherit it
    with pytest.raises(MixerError, match="shard 3: the store changed") as e:
        build(spec(stores), tmp_path / "mix", executor=Executor(tasks=2, workers=2), progress=False)
    assert e.value.__cause__ is None  # one line, not a worker's traceback
    assert not (tmp_path / "mix" / "manifest.json").exists()
    assert not [p for p in (tmp_path / "mix").iterdir() if "tmp" in p.name]
    monkeypatch.setattr(b, "shard_samples", real)
    r = build(spec(stores), tmp_path / "mix", executor=Executor(tasks=2, workers=2), progress=False)
    assert r["status"] == "done" and r["shards_skipped"] >= 1
    assert mix_bytes(tmp_path / "mix") == mix_bytes(tmp_path / "ref")


def test_shard_subsets_then_the_rest(stores, tmp_path):
    r = build(spec(stores), tmp_path / "mix", shards="0:2", progress=False)
    assert r["status"] == "partial" and not (tmp_path / "mix" / "manifest.json").exists()
    r = build(spec(stores), tmp_path / "mix", progress=False)
    assert r["status"] == "done" and r["shards_skipped"] == 2
    build(spec(stores), tmp_path / "ref", progress=False)
    assert mix_bytes(tmp_path / "mix") == mix_bytes(tmp_path / "ref")


def test_another_seed_changes_order_not_counts(stores, tmp_path):
    build(spec(stores), tmp_path / "a", progress=False)
    build(spec(stores, seed=1), tmp_path / "b", progress=False)
    ma, xa = read_mix(tmp_path / "a")
    mb, xb = read_mix(tmp_path / "b")
    assert not np.array_equal(xa, xb)
    assert [s["samples"] for s in ma["sources"]] == [s["samples"] for s in mb["sources"]]
    dom_a = np.any((xa >= DOMAIN_BASE) & (xa != EOS), axis=1)
    dom_b = np.any((xb >= DOMAIN_BASE) & (xb != EOS), axis=1)
    assert dom_a.sum() == dom_b.sum()
    src = lambda m: next(s for s in m["sources"] if s["role"] == "domain")  # noqa: E731
    assert src(ma)["documents_full_passes"] == src(mb)["documents_full_passes"]


def test_second_different_build_into_one_directory_is_refused(stores, tmp_path):
    build(spec(stores), tmp_path / "mix", progress=False)
    with pytest.raises(MixerError, match="different build"):
        build(spec(stores, seed=5), tmp_path / "mix", progress=False)


def test_finetune_mix_is_domain_only_with_epoch_boundaries(stores, tmp_path):
    r = build(spec(stores, fraction=None, tokens=None, epochs=3), tmp_path / "ft", progress=False)
    m = r["manifest"]
    assert m["kind"] == "finetune"
    dom = next(s for s in m["sources"] if s["role"] == "domain")
    assert dom["documents_full_passes"].keys() <= {"2", "3"} and len(dom["epoch_start_samples"]) == 3
    _, x = read_mix(tmp_path / "ft")
    assert ((x >= DOMAIN_BASE) | (x == 0)).all()
    assert {e["split"] for e in m["eval"]} == {"test", "val"}  # general val kept for forgetting
    verify(tmp_path / "ft", progress=False)


def test_replay_mix_has_the_general_share(stores, tmp_path):
    r = build(spec(stores, fraction=None, tokens=None, epochs=2, replay=0.2), tmp_path / "rp", progress=False)
    m = r["manifest"]
    assert m["kind"] == "replay"
    assert abs(m["fraction"]["achieved"] - 0.8) < 2 / m["samples"]
    verify(tmp_path / "rp", progress=False)


def test_domain_subset_for_dataset_size_studies(stores, tmp_path):
    full = doc_lengths(stores / "music").sum()
    r = build(spec(stores, domain_subset_tokens=int(full // 4)), tmp_path / "sub", progress=False)
    dom = next(s for s in r["manifest"]["sources"] if s["role"] == "domain")
    assert full // 4 <= dom["train_tokens"] < full // 4 + 40 and dom["documents"] == "subset"
    verify(tmp_path / "sub", progress=False)


def test_small_general_source_repeats_with_a_warning(stores, tmp_path):
    with pytest.raises(MixerError, match=r"general tokens would repeat 11.4 epochs \(> --max-general-epochs 4\)"):
        build(spec(stores, tokens=160_000), tmp_path / "big", progress=False)
    assert not (tmp_path / "big").exists()
    r = build(spec(stores, tokens=160_000, max_general_epochs=12), tmp_path / "big", progress=False)
    assert any("repeats" in w for w in r["manifest"]["warnings"])
    assert r["manifest"]["recipe"]["max_general_epochs"] == 12  # a raised limit is part of the build's record


@pytest.mark.parametrize("kw,exc,match", [
    (dict(fraction=1.5), UsageError, "fraction"),
    (dict(tokens=8), UsageError, "below one sample"),
    (dict(fraction=0.9, tokens=10_000_000), MixerError, r"epochs .*--window 0.9:1.0"),
    (dict(window=(0.5, 0.2)), UsageError, "window"),
])
def test_limits_give_clear_errors(stores, tmp_path, kw, exc, match):
    with pytest.raises(exc, match=match):
        build(spec(stores, **kw), tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists()


def test_stores_with_different_tokenizers_are_refused(tmp_path):
    make_store(tmp_path, "prose", "general", 50, base=1, sha="tok-a")
    make_store(tmp_path, "music", "domain", 20, base=DOMAIN_BASE, sha="tok-b")
    with pytest.raises(MixerError, match="tokenized with"):
        build(spec(tmp_path), tmp_path / "x", progress=False)


@pytest.fixture
def built(stores, tmp_path):
    build(spec(stores), tmp_path / "mix", progress=False)
    return tmp_path / "mix"


def _rewrite_checksum(mix, rec_index, field, path):
    from mixer.formats.checksum import checksum_file

    m = json.loads((mix / "manifest.json").read_text())
    m["shards"][rec_index][field] = checksum_file(path)
    (mix / "manifest.json").write_text(json.dumps(m))


def test_verify_catches_a_flipped_byte(built):
    f = built / "shard-00001.bin"
    data = bytearray(f.read_bytes())
    data[(L + 1) * 2 * 5 + 3] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(MixerError, match="shard-00001.bin: checksum mismatch"):
        verify(built, progress=False)
    _rewrite_checksum(built, 1, "xxh3_128", f)  # a forger who also fixed the checksum
    with pytest.raises(MixerError, match=r"shard-00001.bin: sample 5 \(source"):
        verify(built, progress=False)


def test_verify_catches_a_truncated_shard(built):
    f = built / "shard-00000.bin"
    f.write_bytes(f.read_bytes()[:-10])
    with pytest.raises(MixerError, match="shard-00000.bin: .* bytes, manifest says"):
        verify(built, progress=False)


def test_verify_catches_an_edited_provenance(built):
    f = built / "shard-00002.prov.npy"
    prov = np.load(f)
    prov["offset"][[3, 4]] = prov["offset"][[4, 3]]
    np.save(f, prov)
    with pytest.raises(MixerError, match="provenance"):
        verify(built, quick=True, progress=False)
    _rewrite_checksum(built, 2, "provenance_xxh3_128", f)
    with pytest.raises(MixerError, match="shard-00002.bin: sample"):
        verify(built, progress=False)


def test_cli_build_verify_plan_end_to_end(stores, tmp_path):
    run = lambda *a: subprocess.run([sys.executable, "-m", "mixer", *a], capture_output=True, text=True, cwd=tmp_path)  # noqa: E731
    p = run("plan", "--stores", str(stores), "--domain", "music", "--fraction", "0.1", "--tokens", "48K", "--seq-len", "16", "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["samples"] == 3000
    b = run("build", "--stores", str(stores), "--domain", "music", "--fraction", "0.1", "--tokens", "48K", "--seq-len", "16", "--quiet")
    assert b.returncode == 0, b.stderr
    v = run("verify", "mixes/music-f0.1-48K", "--quiet")
    assert v.returncode == 0 and v.stdout.startswith("OK"), v.stderr
    bad = run("build", "--stores", str(stores), "--domain", "music", "--fraction", "2", "--tokens", "48K")
    assert bad.returncode == 2 and bad.stderr.startswith("mixer: error: --fraction") and "Traceback" not in bad.stderr
    missing = run("verify", "nowhere")
    assert missing.returncode == 1 and "nowhere/manifest.json" in missing.stderr


@pytest.mark.ray
def test_ray_executor_writes_identical_bytes(stores, tmp_path):
    pytest.importorskip("ray", reason="ray is in the dev extra; CI installs it")
    # A child process: Ray's runtime lingers after shutdown and slowed later tests in this one.
    script = f"""
import ray
from pathlib import Path
from mixer.executors import Executor
from mixer.mixing.build import build
from mixer.mixing.spec import MixSpec
ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
build(MixSpec.from_json({spec(stores).to_json()!r}), Path({str(tmp_path / "ray")!r}),
      executor=Executor("ray", tasks=2, workers=2), progress=False)
ray.shutdown()
"""
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    build(spec(stores), tmp_path / "ref", progress=False)
    assert mix_bytes(tmp_path / "ray") == mix_bytes(tmp_path / "ref")


@pytest.mark.parametrize("busy", [False, True], ids=["processes", "threads"])
def test_verify_with_two_workers_agrees_and_catches(built, tmp_path, monkeypatch, busy):
    """Two workers are two forked processes; a caller that already runs a thread gets threads
    (a fork then could copy a held lock). Either way the report is the one-worker report and
    a damaged shard is named."""
    import threading

    from mixer.checks import verify as verify_mod

    seen = tmp_path / "pids"
    seen.mkdir()
    check = verify_mod._check_shard

    def spy(*a):
        (seen / str(os.getpid())).touch()
        return check(*a)

    monkeypatch.setattr(verify_mod, "_check_shard", spy)
    from mixer import forks

    at_fork = []  # whether a fork was safe when it happened (not after verify started its threads)
    recording = [True]
    os.register_at_fork(before=lambda: recording[0] and at_fork.append(forks.fork_safe()))
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    if busy:
        other.start()
    try:
        one, two = verify(built, progress=False, workers=1), verify(built, progress=False, workers=2)
        pids = {int(p.name) for p in seen.iterdir()}
        assert pids == {os.getpid()} if busy else (len(pids) == 3 and os.getpid() in pids)
        assert at_fork == ([] if busy else [True, True])
        assert {k: v for k, v in one.items() if k not in ("seconds", "mb_per_s")} == \
            {k: v for k, v in two.items() if k not in ("seconds", "mb_per_s")}
        f = built / "shard-00003.bin"
        data = bytearray(f.read_bytes())
        data[7] ^= 1
        f.write_bytes(bytes(data))
        with pytest.raises(MixerError, match="shard-00003.bin: checksum mismatch") as e:
            verify(built, progress=False, workers=2)
        assert e.value.__cause__ is None  # one line, not a worker's traceback
    finally:
        stop.set()
        recording[0] = False
