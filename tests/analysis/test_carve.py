"""The study's general data (examples/carve.py): a slice of a domain corpus carved out before
tokenizing, whole near-duplicate groups at a time, independent of the split's own hash."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))

import carve as C  # noqa: E402


def _write(path: Path, docs: list[dict]) -> None:
    import zstandard

    with zstandard.open(path, "wt") as f:
        for d in docs:
            f.write(json.dumps(d) + "\n")


def corpus(n: int = 400) -> list[dict]:
    """Distinct documents, each with a near copy (one word changed) and an exact copy (case)."""
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(500)]
    docs = []
    for i in range(n):
        text = " ".join(rng.choice(words, 60))
        near = text.split()
        near[30] = "changed"
        docs += [{"id": f"d{i}", "text": text}, {"id": f"d{i}-near", "text": " ".join(near)},
                 {"id": f"d{i}-upper", "text": text.upper()}]
    return docs


def test_whole_groups_are_carved_and_the_splits_stay_full(tmp_path):
    samples = tmp_path / "samples"
    samples.mkdir()
    docs = corpus()
    _write(samples / "music.jsonl.zst", docs)
    report = C.carve(samples, tmp_path / "out", {"music": 0.2}, seed=0)
    r = report["domains"]["music"]
    assert r["documents"] == len(docs) and r["groups"] == 400  # each text with its near and exact copy
    assert r["carved_documents"] == 3 * r["carved_groups"] and 40 < r["carved_groups"] < 120
    kept = {d["id"] for d in C._read(tmp_path / "out" / "music.jsonl.zst")}
    carved = {d["id"] for d in C._read(tmp_path / "out" / "slices.jsonl.zst")}
    assert not kept & {c.split("/", 1)[1] for c in carved} and len(kept) + len(carved) == len(docs)
    assert all(c.startswith("music/") for c in carved)
    for i in range(400):  # a group moves whole
        family = {f"d{i}", f"d{i}-near", f"d{i}-upper"}
        assert family <= kept or family <= {c.split("/", 1)[1] for c in carved}
    assert r["shared_text_hashes"] == 0 and r["shared_groups"] == 0
    # the split's test band (seed 0, 2%) is as full after the carve as before: independent hashes
    before, after = r["test_band_share"]
    assert after > 0.5 * before > 0
    # a second call with the same settings reads the carve back
    again = C.carve(samples, tmp_path / "out", {"music": 0.2}, seed=0)
    assert again == json.loads((tmp_path / "out" / "carve.json").read_text())


def test_the_carve_hash_is_not_the_split_hash():
    """With the split's own seed the carve would take exactly the test and validation bands."""
    from mixer.ingest.split import seeded_hash, threshold_for_fraction

    h = np.arange(1, 20001, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    test = seeded_hash(h, 0) < np.uint64(threshold_for_fraction(0.02))
    carved = seeded_hash(h, C.CARVE_SEED) < np.uint64(threshold_for_fraction(0.05))
    assert 0.03 < (test & carved).sum() / test.sum() < 0.08  # ~5% of the test band, as for any document
