"""The merge (parts -> store): pinned bytes, and memory that does not grow with documents."""

from __future__ import annotations

import gzip
import hashlib
import json
import random
from pathlib import Path

import pytest

from mixer.ingest.sources import SourceSpec
from mixer.ingest.tokenize import RunOptions, tokenize_source

WORDS = [f"w{i}" for i in range(300)]


def word_tokenizer(folder: Path) -> Path:
    """A word-level tokenizer with an explicit vocabulary: its JSON (and ids) never vary."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[UNK]": 0, "<|endoftext|>": 1} | {w: i + 2 for i, w in enumerate(WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    path = folder / "words" / "tokenizer.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))
    return path


def texts(seed: int, n: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 40))) for _ in range(n)]


def pinned_corpus(folder: Path) -> Path:
    """Seven files of uneven sizes: ids of every style, a missing id, an empty file, near-copies."""
    folder.mkdir(parents=True)
    long = " ".join(random.Random(99).choice(WORDS) for _ in range(80)).split()
    changed = long[:40] + ["w7"] + long[41:]
    extra = {
        1: [{"text": " ".join(long), "id": "original"}],
        2: [{"text": "  " + " ".join(long).upper(), "id": "case-copy"}, {"text": " \n"}],
        4: [{"text": " ".join(changed), "id": "near-copy"}, {"text": " ".join(changed[:79] + ["w8"])}],
    }
    for k in range(6):
        records = []
        for i, t in enumerate(texts(k, 20 + 37 * k)):
            rec: dict = {"text": t}
            if i % 5 == 1:
                rec["id"] = f"<urn:uuid:{k:08x}-0000-4000-8000-{i:012x}>"
            elif i % 5 == 2:
                rec["id"] = i * 1000 + k
            elif i % 5 == 3:
                rec["id"] = f"dokument-{k}-{i}-\u00e9\u4e2d"
            elif i % 5 == 4:
                rec["id"] = f"{k}-{i}"
            records.append(rec)  # i % 5 == 0: no id, the default file:line id
        records += extra.get(k, [])
        data = "".join(json.dumps(r) + "\n" for r in records).encode()
        name = f"f{k}.jsonl"
        if k == 3:
            data, name = gzip.compress(data, mtime=0), name + ".gz"
        (folder / name).write_bytes(data)
    (folder / "f6.jsonl").write_bytes(b"")
    return folder


def digests(store: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()[:16] for p in sorted(store.iterdir())
            if p.name != "store.json"}


SPECS = {
    "domain": dict(name="dom", role="domain", test_fraction=0.2, seed=3),
    "general": dict(name="gen", role="general", test_tokens=900),
    "general-fraction": dict(name="genf", role="general", test_fraction=0.1, seed=5),
    "domain-tokens": dict(name="domt", role="domain", test_tokens=2000, seed=1),
}

# Computed with the merge as it was before it streamed (commit 58a23ec: every id a Python string,
# np.lexsort over the whole corpus); the streaming merge must write the very same bytes.
PINNED = {
    "domain": (
        {
            "near_duplicates.jsonl": "1997e45bc3123af2", "test.ds": "d593fd9b669a259a", "test.ds.index": "899491c811492128",
            "test.ids": "8300a14722cbd3f3", "train.ds": "1215905e23440c08", "train.ds.index": "4778e7374ade19e5",
            "train.ids": "5b682458ab2aead9",
        },
        {"train": [552, 11528], "test": [127, 2928]},
        {"threshold": "0x3333333333333400", "achieved_fraction": 0.20254565578306585, "near_duplicate_clusters": 1, "near_duplicate_documents": 4, "near_duplicate_moved": 2},
    ),
    "general": (
        {
            "train.ds": "540af007060008e4", "train.ds.index": "bbb9eadb29eb27e8", "train.ids": "5034d1233fc94e84",
            "val.ds": "8b0107fdc432d2cb", "val.ds.index": "d4bda287a4709c32", "val.ids": "43cebec31814b876",
        },
        {"train": [641, 13555], "val": [38, 901]},
        {"threshold": "0x10e8badb184a5040", "achieved_fraction": 0.062327061427780855},
    ),
    "general-fraction": (
        {
            "train.ds": "7e06fc7ed596659f", "train.ds.index": "678525e5d2bab799", "train.ids": "7b19f522abf30425",
            "val.ds": "63917961dbcd5bda", "val.ds.index": "2e83f4a851212925", "val.ids": "75ca2c2b4d35e758",
        },
        {"train": [619, 13260], "val": [60, 1196]},
        {"threshold": "0x1999999999999a00", "achieved_fraction": 0.08273381294964029},
    ),
    "domain-tokens": (
        {
            "near_duplicates.jsonl": "0c90026b5ba570a2", "test.ds": "c20069556cafa626", "test.ds.index": "fd6e6e2677188a02",
            "test.ids": "52d3ba1c437a35b9", "train.ds": "e82233b48119e979", "train.ds.index": "1ad28949fdbf480a",
            "train.ids": "97e5ede522a8bb01",
        },
        {"train": [586, 12427], "test": [93, 2029]},
        {"threshold": "0x2a4747824d2bae67", "achieved_fraction": 0.14035694521306033, "near_duplicate_clusters": 1, "near_duplicate_documents": 4, "near_duplicate_moved": 2},
    ),
}


@pytest.mark.parametrize("tasks", [1, 4])
@pytest.mark.parametrize("key", list(SPECS))
def test_store_bytes_are_pinned(tmp_path, key, tasks):
    tok = word_tokenizer(tmp_path)
    data = pinned_corpus(tmp_path / "data")
    spec = SourceSpec(inputs=[str(data)], tokenizer=str(tok), **SPECS[key])
    meta = tokenize_source(spec, tmp_path / "st", RunOptions(tasks=tasks, workers=1))
    files, splits, record = PINNED[key]
    assert digests(tmp_path / "st" / spec.name) == files
    assert {k: [v["documents"], v["tokens"]] for k, v in meta["splits"].items()} == splits
    assert {k: meta["split"][k] for k in record} == record
