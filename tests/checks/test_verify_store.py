"""`mixer verify STORE`: every file against store.json's checksums, then the format's
promises from the bytes (re-sealed corruptions, as a forger who fixed the checksums
would leave them, must still be caught)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mixer.checks.verify_store import verify_store
from mixer.errors import MixerError
from mixer.formats.store import seal_store
from tests.synth import EOS, make_store


@pytest.fixture
def store(tmp_path) -> Path:
    return make_store(tmp_path / "stores", "music", "domain", n_docs=40, base=40_000, seed=2)


def cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mixer", *map(str, args)], capture_output=True, text=True, timeout=60)


def test_a_sound_store_verifies(store):
    r = verify_store(store)
    assert r["ok"] and r["files"] == 6 and r["splits"]["train"]["documents"] == 40
    p = cli("verify", store)
    assert p.returncode == 0 and p.stdout.startswith(f"OK {store} (music, domain): 6 files match"), p.stderr


@pytest.mark.parametrize("name", ["train.ds", "train.ds.index", "train.ids", "test.ds", "test.ds.index", "test.ids"])
def test_a_flipped_byte_in_any_file_is_named(store, name):
    f = store / name
    data = bytearray(f.read_bytes())
    data[2] ^= 0x10
    f.write_bytes(bytes(data))
    with pytest.raises(MixerError, match=rf"music/{name}: checksum mismatch"):
        verify_store(store)
    p = cli("verify", store)
    assert p.returncode == 1 and p.stderr.count("\n") == 1 and f"{name}: checksum mismatch" in p.stderr


def test_an_edited_store_json_is_caught(store):
    meta = json.loads((store / "store.json").read_text())
    meta["tokenizer"]["eos_id"] = 7
    (store / "store.json").write_text(json.dumps(meta))
    with pytest.raises(MixerError, match="store.json: its content does not match its checksum"):
        verify_store(store)


def _tamper(store: Path, name: str, change) -> None:
    f = store / name
    dtype = "<u8" if name.endswith(".index") else "<u2"
    a = np.fromfile(f, dtype=dtype)
    change(a)
    a.tofile(f)
    seal_store(store)  # the checksums now agree: only the format checks can tell


def test_index_that_does_not_rise_is_caught(store):
    def swap(a):
        a[[3, 4]] = a[[4, 3]]

    _tamper(store, "train.ds.index", swap)
    with pytest.raises(MixerError, match=r"train.ds.index: entry 4 does not rise"):
        verify_store(store)


def test_document_without_eos_is_caught(store):
    ends = np.fromfile(store / "train.ds.index", dtype="<u8")

    def drop_eos(a):
        a[int(ends[5]) - 1] = 40_005

    _tamper(store, "train.ds", drop_eos)
    with pytest.raises(MixerError, match=r"train.ds: document 5 does not end with EOS"):
        verify_store(store)


def test_index_that_stops_short_of_the_tokens_is_caught(store):
    def shorten(a):
        a[-1] -= 1

    _tamper(store, "test.ds.index", shorten)
    with pytest.raises(MixerError, match=r"test.ds(.index)?: .*(ends at token|does not end with EOS)"):
        verify_store(store)


def test_token_outside_the_vocabulary_is_caught(store):
    meta = json.loads((store / "store.json").read_text())
    meta["tokenizer"]["vocab_size"] = 40_010  # documents 10 and on (ids 40,010 and up) no longer fit
    meta["tokenizer"]["eos_id"] = 0
    (store / "store.json").write_text(json.dumps(meta))
    first = int(np.fromfile(store / "train.ds.index", dtype="<u8")[9])  # where document 10 starts

    def eos_zero(a):
        a[a == EOS] = 0

    _tamper(store, "train.ds", eos_zero)
    _tamper(store, "test.ds", eos_zero)
    with pytest.raises(MixerError, match=rf"train.ds: token {first} is id 40010, not below vocab_size 40010"):
        verify_store(store)


def test_id_count_is_checked(store):
    (store / "train.ids").write_text((store / "train.ids").read_text() + "extra\n")
    seal_store(store)
    with pytest.raises(MixerError, match=r"train.ids: 41 ids, store.json says 40 documents"):
        verify_store(store)


def test_store_without_checksums_says_how_to_fix(store):
    meta = json.loads((store / "store.json").read_text())
    del meta["checksums"]
    (store / "store.json").write_text(json.dumps(meta))
    p = cli("verify", store)
    assert p.returncode == 1 and "re-run `mixer tokenize --force` for source 'music'" in p.stderr
    assert p.stderr.count("\n") == 1
