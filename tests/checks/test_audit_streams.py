"""The audit's training streams: mix shards stitched back into their sources' streams
through the provenance sidecars, units that scan every document exactly once whatever the
task count, and one-line errors for provenance that does not describe its shard."""

from __future__ import annotations

import numpy as np
import pytest
from audit_synth import random_docs, stream_of, write_stitched

from mixer.checks.train_streams import Reader, TrainFile, build_streams, describe, make_units
from mixer.errors import MixerError

SEQ = 64


def shard_files(pairs) -> list[TrainFile]:
    return [TrainFile(str(b), "<u2", SEQ + 1, str(p)) for b, p in pairs]


@pytest.fixture
def two_sources(tmp_path):
    rng = np.random.default_rng(0)
    streams = {0: stream_of(random_docs(rng, 40)), 3: stream_of(random_docs(rng, 25))}
    files = shard_files(write_stitched(tmp_path, streams, SEQ, shards=4))
    return streams, files, tmp_path


def test_reader_reassembles_each_source_stream_from_shuffled_samples(two_sources):
    streams, files, folder = two_sources
    built = build_streams(files, folder)
    assert [(s.kind, s.source) for s in built] == [("stitched", 0), ("stitched", 3)]
    reader = Reader(files, built, folder)
    rng = np.random.default_rng(1)
    for i, s in enumerate(built):
        want = streams[s.source]
        (a, b), = s.stretches
        assert a == 0 and b >= len(want)
        got = reader.read(i, 0, len(want))
        assert np.array_equal(got, want)
        for _ in range(50):  # any range, across sample edges
            x, y = sorted(rng.integers(0, len(want), 2).tolist())
            assert np.array_equal(reader.read(i, x, y + 1), want[x : y + 1])
    reader.close()


def test_a_missing_sample_cuts_the_stream_into_stretches(tmp_path):
    rng = np.random.default_rng(2)
    t = stream_of(random_docs(rng, 30))
    files = shard_files(write_stitched(tmp_path, {1: t}, SEQ, shards=3, drop={1: [5]}))
    (s,) = build_streams(files, tmp_path)
    assert s.stretches[0] == (0, 5 * SEQ + 1) and s.stretches[1][0] == 6 * SEQ
    reader = Reader(files, [s], tmp_path)
    assert np.array_equal(reader.read(0, 0, 5 * SEQ + 1), t[: 5 * SEQ + 1])
    with pytest.raises(MixerError, match="missing sample"):
        reader.read(0, 5 * SEQ - 3, 5 * SEQ + 10)


def test_locations_name_the_shard_sample_and_token(two_sources):
    streams, files, folder = two_sources
    built = build_streams(files, folder)
    for i, s in enumerate(built):
        for pos in (0, 1, SEQ - 1, SEQ, 5 * SEQ + 7, len(streams[s.source]) - 1):
            text = describe(files, built, folder, (i << 40) | pos)
            name, _, sample, _, token = text.split(" ")[:5]
            row = np.fromfile(folder / name, dtype="<u2").reshape(-1, SEQ + 1)[int(sample)]
            assert row[int(token)] == streams[s.source][pos], text


def test_units_deal_every_stretch_once_to_any_number_of_tasks(two_sources):
    _, files, folder = two_sources
    built = build_streams(files, folder)
    for world in (1, 2, 3, 7):
        units = make_units(built, world, chunk=100)
        covered = sorted((u.stream, u.start, u.stop) for us in units for u in us)
        for i, s in enumerate(built):
            mine = [(a, b) for j, a, b in covered if j == i]
            assert mine[0][0] == 0 and mine[-1][1] == s.stretches[0][1]
            assert all(b == c for (_, b), (c, _) in zip(mine, mine[1:]))  # contiguous, no overlap
        assert make_units(built, world, chunk=100) == units  # deterministic


def test_flat_and_unstitched_sample_files_are_their_own_streams(tmp_path):
    t = stream_of(random_docs(np.random.default_rng(3), 10))
    t.tofile(tmp_path / "flat.bin")
    t[: (len(t) // (SEQ + 1)) * (SEQ + 1)].tofile(tmp_path / "rows.bin")
    built = build_streams([TrainFile(str(tmp_path / "flat.bin"), "<u2", None),
                           TrainFile(str(tmp_path / "rows.bin"), "<u2", SEQ + 1)], None)
    assert [(s.kind, s.stretches) for s in built] == [("flat", ((0, len(t)),)), ("rows", ())]


def test_provenance_that_does_not_describe_its_shard_is_one_line(tmp_path):
    t = stream_of(random_docs(np.random.default_rng(4), 20))
    (b, p), = write_stitched(tmp_path, {0: t}, SEQ, shards=1)
    prov = np.load(p)
    cases = {
        "not a multiple of seq_len": lambda q: q["offset"].__setitem__(0, 5),
        "appears twice": lambda q: q["offset"].__setitem__(1, q["offset"][0]),
    }
    for want, edit in cases.items():
        q = prov.copy()
        edit(q)
        np.save(p, q)
        with pytest.raises(MixerError, match=want) as e:
            build_streams(shard_files([(b, p)]), None)
        assert "\n" not in str(e.value) and str(p) in str(e.value)
    np.save(p, prov[:-1])
    with pytest.raises(MixerError, match="provenance rows for"):
        build_streams(shard_files([(b, p)]), None)
    p.write_bytes(b"garbage")
    with pytest.raises(MixerError, match="cannot read provenance"):
        build_streams(shard_files([(b, p)]), None)
    np.save(p, np.zeros(3, dtype=np.int64))
    with pytest.raises(MixerError, match="not a provenance file"):
        build_streams(shard_files([(b, p)]), None)
