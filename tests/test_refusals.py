"""Small holes found by trying mixer as an adversary would: each ends in one line naming the
file or flag and a non-zero exit (or a stated fix), never a traceback or a silent wrong result."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mixutil import build, make_stores, run_cli
from tests.tokutil import word_tokenizer

WORDS = [f"w{i}" for i in range(50)]


def _one_line(err: str) -> str:
    lines = [x for x in err.strip().splitlines() if x.startswith("mixer: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_set_without_a_recipe_is_refused(tmp_path, capsys):
    stores = make_stores(tmp_path / "stores", general_docs=200, domain_docs=20)
    code, _, err = run_cli(capsys, "build", "--stores", str(stores), "--domain", "music", "--fraction", "0.1",
                           "--tokens", "20K", "--seq-len", "64", "--set", "fraction=0.2", "--out", str(tmp_path / "m"))
    assert code == 2 and "--set fraction=0.2" in _one_line(err)
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("cmd", [["build", "--domain", "music", "--fraction", "0.1", "--tokens", "20K"],
                                 ["tokenize", "--source", "s", "--role", "domain", "--input", "x", "--tokenizer", "t"]])
def test_a_seed_out_of_range_is_a_usage_error(tmp_path, capsys, cmd):
    code, _, err = run_cli(capsys, *cmd, "--seed", str(2**70))
    assert code == 2 and "--seed" in _one_line(err)


def test_a_seed_out_of_range_in_a_recipe_or_the_api_is_one_line(tmp_path):
    from mixer.errors import UsageError
    from mixer.mixing.spec import MixSpec

    with pytest.raises(UsageError, match="--seed"):
        MixSpec(stores=tmp_path, domain="music", fraction=0.1, tokens=1000, seed=2**70).validate()


@pytest.mark.parametrize("name", ["manifest.json", "store.json"])
def test_json_records_that_are_not_utf8_name_the_file(tmp_path, capsys, name):
    stores = make_stores(tmp_path / "stores", general_docs=200, domain_docs=20)
    mix = build(stores, tmp_path / "mix", "--fraction", "0.1", "--tokens", "20K", "--seq-len", "64")
    target = mix / "manifest.json" if name == "manifest.json" else stores / "music" / "store.json"
    target.write_bytes(b'{"format": "\xff\xfe"}')
    code, _, err = run_cli(capsys, "verify", str(mix))
    line = _one_line(err)
    assert code == 1 and str(target) in line and "UTF-8" in line and "internal error" not in line


def test_tokenize_caps_its_tasks_at_the_input_files(tmp_path, capsys):
    tok = word_tokenizer(tmp_path / "tok" / "tokenizer.json", WORDS)
    data = tmp_path / "in.jsonl"
    data.write_text("".join(json.dumps({"text": " ".join(WORDS[(i + j) % 50] for j in range(6))}) + "\n"
                            for i in range(80)))
    code, out, err = run_cli(capsys, "tokenize", "--source", "s", "--role", "domain", "--input", str(data),
                             "--tokenizer", str(tok), "--stores", str(tmp_path / "stores"), "--tasks", "1000")
    assert code == 0, err
    assert "--tasks 1000: 1 input file(s), so 1 task(s)" in out
    assert (tmp_path / "stores" / "s" / "store.json").is_file()
