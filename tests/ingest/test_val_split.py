"""Domain stores get a validation split besides train and test: duplicate-safe like the test
split, and the test split is the one stores had before (its hash band does not move)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from tests.tokutil import word_tokenizer
from mixer.cli import main
from mixer.formats.store import open_store
from mixer.ingest.split import TWO64, heldout_mask, val_mask

WORDS = [f"w{i}" for i in range(300)]


def test_the_validation_band_by_hand():
    t = 100
    h = np.array([0, 99, 100, 199, 200, TWO64 - 1], dtype=np.uint64)
    assert heldout_mask(h, t).tolist() == [True, True, False, False, False, False]
    assert val_mask(h, t).tolist() == [False, False, True, True, False, False]
    # a test band over half the hash space leaves the rest of it to validation, none past 2^64
    big = 3 << 62
    assert val_mask(np.array([big - 1, big, TWO64 - 2, TWO64 - 1], dtype=np.uint64), big).tolist() == [
        False, True, True, False]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Path:
    """A word-level tokenizer over WORDS (+ [UNK], <|endoftext|>), trained in memory (no network)."""
    return word_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer.json", WORDS)


def _tokenize(capsys, tokenizer: Path, data: Path, stores: Path, name: str, role: str, *more: str) -> int:
    try:
        main(["tokenize", "--source", name, "--role", role, "--input", str(data), "--tokenizer", str(tokenizer),
              "--stores", str(stores), "--test-fraction", "0.1", *more])
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    capsys.readouterr()
    return code


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """600 documents, each third one with exact, case and spacing copies under other ids."""
    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 40))) for _ in range(600)]
    records = []
    for i, t in enumerate(texts):
        records.append({"id": f"d{i}", "text": t})
        if i % 3 == 0:
            records += [{"id": f"d{i}-copy", "text": t}, {"id": f"d{i}-case", "text": t.upper()},
                        {"id": f"d{i}-space", "text": "  " + t.replace(" ", "   ") + "\n"}]
    data = tmp_path_factory.mktemp("val") / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    return data, {r["id"]: r["text"] for r in records}


def test_domain_stores_hold_train_val_test_and_copies_stay_together(tmp_path, capsys, tokenizer, corpus):
    data, texts = corpus
    assert _tokenize(capsys, tokenizer, data, tmp_path / "st", "dom", "domain") == 0
    store = open_store(tmp_path / "st", "dom")
    assert store.splits == ["train", "test", "val"]
    side = {i: split for split in store.splits for i in store.doc_ids(split)}
    assert sorted(side) == sorted(texts)  # every document in exactly one split
    for i in range(0, 600, 3):
        assert {side[f"d{i}{s}"] for s in ("", "-copy", "-case", "-space")} == {side[f"d{i}"]}
    split = store.meta["split"]
    # the validation band is as wide as the test band: about the same share of the tokens
    assert 0.05 < split["achieved_fraction"] < 0.15 and 0.05 < split["val_achieved_fraction"] < 0.15
    assert store.n_docs("val") > 20
    clusters = [json.loads(x) for x in (store.path / "near_duplicates.jsonl").read_text().splitlines()]
    assert {c["split"] for c in clusters} <= {"train", "test", "val"} and "val" in {c["split"] for c in clusters}


def test_the_test_split_is_what_it_was_before_validation_splits(tmp_path, capsys, tokenizer, corpus):
    """Same corpus, seed and fraction: a general store's held-out split is the hash band below
    the threshold, as a domain store's test split was and is."""
    data, _ = corpus
    assert _tokenize(capsys, tokenizer, data, tmp_path / "a", "dom", "domain") == 0
    assert _tokenize(capsys, tokenizer, data, tmp_path / "b", "dom", "general") == 0
    domain, general = open_store(tmp_path / "a", "dom"), open_store(tmp_path / "b", "dom")
    assert general.splits == ["train", "val"]
    assert domain.doc_ids("test") == general.doc_ids("val")
    assert sorted(domain.doc_ids("train") + domain.doc_ids("val")) == sorted(general.doc_ids("train"))


def test_a_domain_store_without_validation_split_is_not_up_to_date(tmp_path, capsys, tokenizer, corpus):
    data, _ = corpus
    assert _tokenize(capsys, tokenizer, data, tmp_path / "st", "dom", "domain") == 0
    meta_file = tmp_path / "st" / "dom" / "store.json"
    meta = json.loads(meta_file.read_text())
    del meta["splits"]["val"]  # as stores made before domain validation splits
    meta_file.write_text(json.dumps(meta))
    assert _tokenize(capsys, tokenizer, data, tmp_path / "st", "dom", "domain") == 1  # not "up to date"
    assert _tokenize(capsys, tokenizer, data, tmp_path / "st", "dom", "domain", "--force") == 0
    assert open_store(tmp_path / "st", "dom").splits == ["train", "test", "val"]
