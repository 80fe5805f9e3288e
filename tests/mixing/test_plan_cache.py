"""The plan on disk (.build/plan/): computed once, mapped by every task, never a wrong byte."""

import gc
import os
import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from mixer.formats.checksum import checksum_file
from mixer.mixing import plan_cache
from mixer.mixing import streams as streams_module
from mixer.mixing.build import WriteShards, build
from mixer.mixing.shards import shard_samples
from mixer.mixing.spec import MixSpec, resolve
from mixer.mixing.streams import SourceStream
from mixer.errors import MixerError
from mixer.formats.store import open_store
from tests.synth import make_store, naive_stream

L = 16


def spec(stores, **kw):
    base = dict(stores=str(stores), domain="music", fraction=0.1, tokens=48_000, seq_len=L, seed=0, samples_per_shard=700)
    base.update(kw)
    return MixSpec(**base)


def mix_files(mix: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(mix.rglob("*")) if p.is_file() and ".build" not in p.parts}


def plan_files(mix: Path) -> dict:
    """Every array of the plan: (inode, mtime) tells a reused file from one written again."""
    return {str(p.relative_to(mix)): (p.stat().st_ino, p.stat().st_mtime_ns) for p in (mix / ".build/plan").rglob("*.npy")}


def forbid_planning(monkeypatch):
    def fail(*a, **k):
        raise AssertionError("the plan was computed again")

    monkeypatch.setattr(SourceStream, "_make_permutation", fail)
    monkeypatch.setattr(SourceStream, "_make_order", fail)


def count_planning(monkeypatch) -> list:
    calls = []
    make = SourceStream._make_permutation

    def counted(self, epoch):
        calls.append((self.name, epoch))
        return make(self, epoch)

    monkeypatch.setattr(SourceStream, "_make_permutation", counted)
    return calls


def test_plan_is_computed_once_and_reused_by_tasks_and_a_resume(stores, tmp_path, monkeypatch):
    build(spec(stores), tmp_path / "ref", progress=False)
    mix = tmp_path / "mix"
    r = build(spec(stores), mix, shards="0:1", progress=False)
    assert r["status"] == "partial" and r["shards_total"] >= 4
    record = json.loads((mix / ".build/plan/plan.json").read_text())
    assert record["format"] == "mixer-plan/1" and {s["source"] for s in record["streams"]} == {"prose", "music"}
    assert set(record) == {"format", "build", "streams", "files"} and set(record["streams"][0]) == {"source", "dir", "key", "epochs"}
    assert record["files"] == {str(p.relative_to(mix / ".build/plan")): checksum_file(p)
                               for p in sorted((mix / ".build/plan").glob("*/*.npy"))}  # what a resume proves
    music = next(s for s in record["streams"] if s["source"] == "music")
    stream = json.loads((mix / ".build/plan" / music["dir"] / "stream.json").read_text())
    assert set(stream["key"]) == {"format", "source", "seed", "documents", "tokens", "index", "subset"}
    assert stream["key"] == music["key"] and music["dir"] == f"music-{plan_cache.key_digest(music['key'])}"
    assert music["epochs"] > 1 and (mix / ".build/plan" / music["dir"] / "e00000.perm.npy").is_file()
    before = plan_files(mix)
    assert len(before) == 4 * sum(s["epochs"] for s in record["streams"])

    forbid_planning(monkeypatch)
    build(spec(stores), mix, shards="1:2", progress=False)  # a second task (another --shards range)
    list(WriteShards(spec(stores).to_json(), str(mix), [2]).run())  # a task of another executor, alone
    assert (mix / "shard-00002.json").is_file()
    r = build(spec(stores), mix, progress=False)  # the resume: the rest and the manifest
    assert r["status"] == "done"
    assert plan_files(mix) == before
    assert mix_files(mix) == mix_files(tmp_path / "ref")


def test_bytes_are_the_same_with_and_without_the_plan_folder(stores, tmp_path):
    """A build's shards (arrays in .build/plan/) equal shards computed with a private,
    temporary plan, and the permutation on disk is numpy's in-memory shuffle."""
    s = spec(stores, window=(0.2, 0.9), seed=3)
    build(s, tmp_path / "mix", progress=False)
    transient = resolve(s)
    m = json.loads((tmp_path / "mix/manifest.json").read_text())
    for k, rec in enumerate(m["shards"]):
        samples, prov = shard_samples(transient, k)
        assert samples.tobytes() == (tmp_path / "mix" / rec["file"]).read_bytes()
        assert np.array_equal(prov, np.load(tmp_path / "mix" / rec["provenance"]))
    stream = SourceStream(open_store(stores, "prose"), seed=3, seq_len=L)
    for epoch in range(3):
        perm = np.arange(stream.n_docs, dtype=np.int32)
        np.random.default_rng([3, streams_module.source_key("prose"), epoch]).shuffle(perm)
        assert np.array_equal(stream.permutation(epoch), perm)


def test_damaged_or_foreign_plan_files_are_computed_again(stores, tmp_path, monkeypatch):
    build(spec(stores), tmp_path / "ref", progress=False)
    mix = tmp_path / "mix"
    build(spec(stores), mix, shards="0:1", progress=False)
    plan = mix / ".build/plan"
    record = json.loads((plan / "plan.json").read_text())
    prose = plan / next(s["dir"] for s in record["streams"] if s["source"] == "prose")
    music = plan / next(s["dir"] for s in record["streams"] if s["source"] == "music")
    with open(prose / "e00000.offsets.npy", "r+b") as f:  # truncated by a crash
        f.truncate(200)
    np.save(music / "e00001.perm.npy", np.arange(5, dtype=np.int32))  # the wrong shape
    np.save(music / "e00002.starts.npy", np.zeros(40, dtype=np.float64))  # the wrong type
    (music / "e00003.coarse.npy").write_bytes(b"not an array")
    calls = count_planning(monkeypatch)
    build(spec(stores), mix, shards="1:2", progress=False)
    assert calls == [("music", 1)]  # only the damaged permutation is drawn again
    assert np.load(prose / "e00000.offsets.npy").shape == (301,)
    assert np.load(music / "e00002.starts.npy").dtype == np.int64

    # stream.json of other inputs: the folder is not trusted, its arrays are computed again
    key = json.loads((music / "stream.json").read_text())
    key["key"]["seed"] = 99
    (music / "stream.json").write_text(json.dumps(key))
    calls.clear()
    build(spec(stores), mix, shards="2:3", progress=False)
    epochs = next(s["epochs"] for s in record["streams"] if s["source"] == "music")
    assert calls == [("music", e) for e in range(epochs)]

    # a plan.json of another build identity: the whole folder goes
    record["build"] = "0" * 32
    (plan / "plan.json").write_text(json.dumps(record))
    (plan / "stale-0123456789abcdef").mkdir()
    calls.clear()
    build(spec(stores), mix, progress=False)
    assert not (plan / "stale-0123456789abcdef").exists() and {c[0] for c in calls} == {"prose", "music"}
    assert mix_files(mix) == mix_files(tmp_path / "ref")


def test_a_private_plan_folder_is_removed_with_its_plan(stores):
    plan = resolve(spec(stores))
    plan.summary()
    folder = plan.sources[0].stream.plan.path
    assert any(folder.rglob("*.perm.npy"))
    del plan
    gc.collect()
    assert not folder.exists()


def test_heap_does_not_grow_with_general_documents(tmp_path, monkeypatch):
    """Peak of Python-visible allocations (numpy's included; mapped plan files are not heap)
    of a build task that plans, writes one shard and summarizes, at 40k and 320k general
    documents. Before the plan went to disk, lengths, permutations and stream offsets
    (~20-45 bytes per document) made the larger one 3.5x higher."""
    monkeypatch.setattr(plan_cache, "CHUNK", 4096)
    peaks = []
    for n in (40_000, 320_000):
        root = tmp_path / str(n)
        make_store(root / "stores", "web", "general", n_docs=n, base=1, seed=n, min_len=1, max_len=4)
        make_store(root / "stores", "music", "domain", n_docs=40, base=40_000, seed=2)
        tokens = int(open_store(root / "stores", "web").n_tokens("train") * 0.9)
        s = MixSpec(stores=str(root / "stores"), domain="music", fraction=0.02, tokens=tokens, seq_len=64,
                    samples_per_shard=256)
        tracemalloc.start()
        build(s, root / "mix", shards="3:4", progress=False)
        resolve(s, root / "mix/.build/plan").summary()
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert (root / "mix/shard-00003.bin").stat().st_size == 256 * 65 * 2
    assert peaks[1] < 1.3 * peaks[0], peaks


def _stream_and_naive(tmp_path, min_len, max_len, seq_len):
    make_store(tmp_path, "s", "general", n_docs=300, base=1, min_len=min_len, max_len=max_len)
    store = open_store(tmp_path, "s")
    stream = SourceStream(store, seed=5, seq_len=seq_len)
    return stream, naive_stream(store, stream, epochs=3)


def _cold(monkeypatch) -> list[tuple]:
    """Every page reads as not cached (RWF_NOWAIT fails); returns the readahead requests made."""
    requests = []
    fadvise = os.posix_fadvise
    monkeypatch.setattr(streams_module, "_read_cached", lambda fd, buf, offset: 0)

    def record(fd, offset, length, advice):
        if advice == os.POSIX_FADV_WILLNEED:
            requests.append((offset, length))
        return fadvise(fd, offset, length, advice)

    monkeypatch.setattr(os, "posix_fadvise", record)
    return requests


@pytest.mark.parametrize("cache", ["warm", "cold", "cold sparse"])
@pytest.mark.parametrize("min_len,max_len,seq_len", [(200, 900, 64), (1, 3000, 128), (60, 70, 40)])
def test_concurrent_sorted_reads_match_a_naive_stream(tmp_path, monkeypatch, min_len, max_len, seq_len, cache):
    """Long pieces are read by several threads, sorted by store offset over the whole call,
    copied from the page cache where it holds them, else read (with readahead of the
    whole range where the pieces are dense): the tokens are those of a stream materialized
    naively, in any order of samples."""
    monkeypatch.setattr(streams_module, "_MIN_GROUP", 4)
    monkeypatch.setattr(streams_module, "_CHUNK_TOKENS", 40 * (seq_len + 1))
    monkeypatch.setattr(streams_module, "_WINDOW", 4096)
    monkeypatch.setattr(streams_module, "_DENSE_GAP", 1 if cache == "cold sparse" else 1 << 30)
    requests = _cold(monkeypatch) if cache.startswith("cold") else []
    stream, naive = _stream_and_naive(tmp_path, min_len, max_len, seq_len)
    n = (len(naive) - 1) // seq_len
    samples = np.random.default_rng(1).permutation(n)[:700]
    out = np.full((900, seq_len + 1), 7, dtype=stream.store.dtype)
    rows = np.sort(np.random.default_rng(2).choice(900, 700, replace=False))
    stream.gather(samples, out=out, rows=rows)
    for row, k in zip(rows, samples):
        assert np.array_equal(out[row], naive[k * seq_len : k * seq_len + seq_len + 1])
    assert (out[np.setdiff1d(np.arange(900), rows)] == 7).all()
    assert bool(requests) == (cache == "cold") or max_len < 100  # short documents: a per-token index


def test_a_cold_dense_range_is_requested_in_order_ahead_of_its_reads(tmp_path, monkeypatch):
    """One reading thread, cold pages, dense pieces: the kernel is asked for the range from
    the first piece to the last in ascending windows, each piece's bytes requested before it
    is read, at most _AHEAD past it; the reads ascend over the whole call, not per chunk."""
    seq_len = 64
    monkeypatch.setattr(streams_module, "READ_THREADS", 1)
    monkeypatch.setattr(streams_module, "_CHUNK_TOKENS", 40 * (seq_len + 1))  # ~18 chunks
    monkeypatch.setattr(streams_module, "_WINDOW", 4096)
    monkeypatch.setattr(streams_module, "_AHEAD", 4 * 4096)
    monkeypatch.setattr(streams_module, "_DENSE_GAP", 1 << 30)
    requests = _cold(monkeypatch)
    reads = []
    preadv = os.preadv

    def record(fd, buffers, offset, *flags):
        reads.append((offset, sum(len(b) for b in buffers), len(requests)))
        return preadv(fd, buffers, offset, *flags)

    monkeypatch.setattr(os, "preadv", record)
    stream, naive = _stream_and_naive(tmp_path, 200, 900, seq_len)
    samples = np.random.default_rng(3).permutation((len(naive) - 1) // seq_len)[:700]
    got = stream.gather(samples)
    for row, k in zip(got, samples):
        assert np.array_equal(row, naive[k * seq_len : k * seq_len + seq_len + 1])
    offsets = [r[0] for r in reads]
    assert offsets == sorted(offsets) and len(reads) > 700
    starts = [o for o, _ in requests]
    assert starts == sorted(starts) and all(n == 4096 for _, n in requests)
    assert starts == list(range(starts[0], starts[-1] + 1, 4096))  # no window skipped, none twice
    for offset, n, asked in reads:
        done = requests[:asked]
        assert done[-1][0] + 4096 >= offset + n  # requested before it was read
        assert done[-1][0] < offset + n + 4 * 4096 + 4096  # and not far past it


def test_cached_pieces_are_copied_without_readahead(tmp_path, monkeypatch):
    """A store in the page cache (just written): every piece comes from one RWF_NOWAIT copy,
    no readahead is requested and no piece is read twice."""
    seq_len = 64
    monkeypatch.setattr(streams_module, "_DENSE_GAP", 1 << 30)
    stream, naive = _stream_and_naive(tmp_path, 200, 900, seq_len)
    try:
        os.preadv(stream._fd, [bytearray(1)], 0, os.RWF_NOWAIT)
    except (AttributeError, OSError):
        pytest.skip("this platform or file system cannot read without waiting (RWF_NOWAIT)")
    requests = []
    fadvise = os.posix_fadvise
    monkeypatch.setattr(os, "posix_fadvise",
                        lambda fd, o, n, a: requests.append(a) or fadvise(fd, o, n, a))
    calls = []
    preadv = os.preadv
    monkeypatch.setattr(os, "preadv", lambda fd, b, o, *f: calls.append(f) or preadv(fd, b, o, *f))
    samples = np.random.default_rng(4).permutation((len(naive) - 1) // seq_len)[:700]
    got = stream.gather(samples)
    for row, k in zip(got, samples):
        assert np.array_equal(row, naive[k * seq_len : k * seq_len + seq_len + 1])
    assert os.POSIX_FADV_WILLNEED not in requests
    assert calls and all(f == (os.RWF_NOWAIT,) for f in calls)


@pytest.mark.parametrize("max_len", [80, 3000])  # a per-token index, and reads
def test_a_store_shorter_than_its_index_is_one_line(tmp_path, max_len):
    make_store(tmp_path, "prose", "general", n_docs=300, base=1, min_len=max_len // 2, max_len=max_len)
    plan = resolve(MixSpec(stores=str(tmp_path), general="prose", tokens=20_000, seq_len=128))
    shard_samples(plan, 0)  # the store is open (reads: a descriptor), then it shrinks
    with open(tmp_path / "prose/train.ds", "r+b") as f:
        f.truncate(100)
    for p in (plan, resolve(plan.spec)):  # while open, and opened afterwards
        with pytest.raises(MixerError, match=r"prose/train.ds: ends before token \d+ that its index names .* --force"):
            shard_samples(p, 0)


_KEPT = []  # a worker keeps its plan until it exits, as verify's workers cache theirs


def _plan_in_worker(stores: str) -> str:
    plan = resolve(spec(Path(stores)))
    plan.summary()
    _KEPT.append(plan)
    return str(plan.sources[0].stream.plan.path)


def test_private_plan_folders_do_not_outlive_their_process(stores, tmp_path, monkeypatch):
    """Forked pool workers leave with os._exit (no atexit): their folders go all the same; a folder
    of a process that was killed is removed by the next process that makes one."""
    import socket
    import subprocess
    import sys
    import tempfile
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    with ProcessPoolExecutor(2, mp_context=get_context("fork")) as pool:
        made = list(pool.map(_plan_in_worker, [str(stores)] * 4))
    assert all(Path(p).parent == scratch for p in made) and not list(scratch.iterdir())

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = socket.gethostname()
    orphan = scratch / f"mixer-plan-{host}-{int(dead.stdout)}-abc123"
    alive = scratch / f"mixer-plan-{host}-{os.getpid()}-def456"
    elsewhere = scratch / f"mixer-plan-another-host-{int(dead.stdout)}-ghi789"
    for d in (orphan, alive, elsewhere):
        (d / "prose-0").mkdir(parents=True)
    plan = resolve(spec(stores))
    plan.summary()
    assert not orphan.exists() and alive.exists() and elsewhere.exists()
    assert plan.sources[0].stream.plan.path.name.startswith(f"mixer-plan-{host}-{os.getpid()}-")


def test_pages_read_ahead_for_later_shards_only_while_they_fit_in_memory(tmp_path, monkeypatch):
    """Pieces twice too sparse to read their range ahead for one call are dense enough for
    a call that 3 more will follow (`reuse`), unless the range exceeds half the memory."""
    seq_len = 64
    monkeypatch.setattr(streams_module, "_WINDOW", 4096)
    stream, naive = _stream_and_naive(tmp_path, 200, 900, seq_len)
    samples = np.random.default_rng(5).permutation((len(naive) - 1) // seq_len)[:700]
    seen = []
    read_pieces = SourceStream._read_pieces
    monkeypatch.setattr(SourceStream, "_read_pieces", lambda self, flat, d, s, n, reuse=1:
                        seen.append((int((s + n).max() - s.min()) * flat.itemsize, len(s))) or read_pieces(self, flat, d, s, n, reuse))
    stream.gather(samples)
    span, pieces = seen[0]
    monkeypatch.setattr(streams_module, "_DENSE_GAP", span // pieces // 2 + 1)  # mean gap ~2x the limit
    requests = _cold(monkeypatch)
    asked = {}
    for reuse, memory in ((1, 1 << 40), (4, 1 << 40), (4, span)):
        monkeypatch.setattr(streams_module, "_memory", lambda memory=memory: memory)
        requests.clear()
        got = stream.gather(samples, reuse=reuse)
        for row, k in zip(got, samples):
            assert np.array_equal(row, naive[k * seq_len : k * seq_len + seq_len + 1])
        asked[reuse, memory] = len(requests)
    assert asked == {(1, 1 << 40): 0, (4, 1 << 40): asked[4, 1 << 40], (4, span): 0} and asked[4, 1 << 40] > 0


def test_a_build_tells_each_shard_how_many_the_task_has_left(stores, tmp_path, monkeypatch):
    from mixer.mixing import build as build_module

    calls = []
    samples = build_module.shard_samples
    monkeypatch.setattr(build_module, "shard_samples",
                        lambda plan, k, reuse=1, **kw: calls.append((k, reuse)) or samples(plan, k, reuse, **kw))
    build(spec(stores, samples_per_shard=100), tmp_path / "mix", shards="1:6", progress=False)
    assert calls == [(1, 5), (2, 4), (3, 3), (4, 2), (5, 1)]
