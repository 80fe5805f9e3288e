"""`mixer verify` checks a mix's sample sets (docs/formats.md, "Sample sets") against the
domain store: a changed file, record or store is named in one line."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from mixutil import build, make_stores, run_cli

from mixer.formats.atomic import write_json
from mixer.formats.checksum import checksum_file


@pytest.fixture(scope="module")
def mixes(tmp_path_factory):
    root = tmp_path_factory.mktemp("vsamples")
    stores = make_stores(root / "stores", general_docs=300, domain_docs=60)
    return {"root": root,
            "sub": build(stores, root / "sub", "--fraction", "0.1", "--tokens", "10K", "--seq-len", "32",
                         "--domain-subset", "2K"),
            "ft": build(stores, root / "ft", "--epochs", "2", "--seq-len", "32")}


def verify(capsys, mix) -> tuple[int, str]:
    code, _, err = run_cli(capsys, "verify", str(mix), "--quiet")
    return code, err.strip()


def test_a_built_mix_verifies_with_its_sample_sets(mixes, capsys):
    for name in ("sub", "ft"):
        m = json.loads((mixes[name] / "manifest.json").read_text())
        assert [r["purpose"] for r in m["sample_sets"]] == ["selection", "train_loss"]
        assert verify(capsys, mixes[name])[0] == 0
    assert json.loads((mixes["sub"] / "manifest.json").read_text())["sample_sets"][1]["drawn_from"] == "subset"


def _copy(mixes, tmp_path, name="sub"):
    return shutil.copytree(mixes[name], tmp_path / name)


def test_a_changed_sample_file_is_named(mixes, capsys, tmp_path):
    mix = _copy(mixes, tmp_path)
    f = mix / "eval" / "music-train-sample.bin"
    data = np.fromfile(f, dtype="<u2")
    data[3] = (data[3] + 1) % 127
    data.tofile(f)
    code, err = verify(capsys, mix)
    assert code == 1 and str(f) in err and len(err.splitlines()) == 1


def test_a_file_and_checksum_both_rewritten_still_differ_from_the_store(mixes, capsys, tmp_path):
    """The checksum alone proves nothing: the bytes are re-derived from the store."""
    mix = _copy(mixes, tmp_path)
    f = mix / "eval" / "music-val.bin"
    data = np.fromfile(f, dtype="<u2")
    data[::7] = 5
    data.tofile(f)
    m = json.loads((mix / "manifest.json").read_text())
    m["sample_sets"][0]["xxh3_128"] = checksum_file(f)
    write_json(mix / "manifest.json", m)
    code, err = verify(capsys, mix)
    assert code == 1 and "music-val" in err and "re-derived" in err


@pytest.mark.parametrize("key, value", [("digest", "000000000000"), ("seed", 1), ("drawn_from", "all"),
                                        ("documents", 3)])
def test_an_edited_record_is_named(mixes, capsys, tmp_path, key, value):
    mix = _copy(mixes, tmp_path)
    m = json.loads((mix / "manifest.json").read_text())
    m["sample_sets"][1][key] = value
    write_json(mix / "manifest.json", m)
    code, err = verify(capsys, mix)
    assert code == 1 and f"music-train-sample: {key}" in err and len(err.splitlines()) == 1


def test_a_dropped_record_is_named(mixes, capsys, tmp_path):
    mix = _copy(mixes, tmp_path, "ft")
    m = json.loads((mix / "manifest.json").read_text())
    m["sample_sets"] = m["sample_sets"][:1]
    write_json(mix / "manifest.json", m)
    code, err = verify(capsys, mix)
    assert code == 1 and "sample_sets lists 1, re-derived 2" in err
