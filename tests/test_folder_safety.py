"""mixer never deletes, replaces or fills a folder it did not write, with or without --force;
and it never writes through a symbolic link inside a mix or a store."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from mixutil import build, make_stores, run_cli
from runutil import write_run
from tests.tokutil import word_tokenizer

WORDS = [f"w{i}" for i in range(50)]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Path:
    return word_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer.json", WORDS)


def _corpus(path: Path, docs: int = 60) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": " ".join(WORDS[(i * 7 + j) % 50] for j in range(5 + i % 9))}) + "\n"
                            for i in range(docs)))
    return path


def _tokenize(capsys, tokenizer: Path, stores: Path, source: str, inp: Path, *more: str):
    return run_cli(capsys, "tokenize", "--source", source, "--role", "domain", "--input", str(inp),
                   "--tokenizer", str(tokenizer), "--stores", str(stores), *more)


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("force", [False, True])
def test_tokenize_refuses_a_store_path_that_holds_the_users_files(tmp_path, tokenizer, capsys, force):
    """The user's corpus sits in data/music; `--stores data --source music` would make data/music the store."""
    corpus = _corpus(tmp_path / "data" / "music" / "corpus.jsonl")
    (tmp_path / "data" / "music" / "thesis.tex").write_text("years of work\n")
    before = _tree(tmp_path / "data")
    code, _, err = _tokenize(capsys, tokenizer, tmp_path / "data", "music", corpus, *(["--force"] if force else []))
    assert code == 1
    assert len(err.strip().splitlines()) == 1 and "not a mixer store" in err and str(tmp_path / "data" / "music") in err
    assert _tree(tmp_path / "data") == before  # nothing deleted, nothing written (no .work either)


def test_force_replaces_a_mixer_store_but_not_one_holding_foreign_files(tmp_path, tokenizer, capsys):
    corpus = _corpus(tmp_path / "in" / "corpus.jsonl")
    code, _, err = _tokenize(capsys, tokenizer, tmp_path / "stores", "music", corpus)
    assert code == 0, err
    code, _, err = _tokenize(capsys, tokenizer, tmp_path / "stores", "music", corpus, "--test-fraction", "0.3", "--force")
    assert code == 0, err  # a mixer store: replaced
    assert json.loads((tmp_path / "stores" / "music" / "store.json").read_text())["split"]["test_fraction"] == 0.3
    (tmp_path / "stores" / "music" / "notes.txt").write_text("mine\n")
    code, _, err = _tokenize(capsys, tokenizer, tmp_path / "stores", "music", corpus, "--test-fraction", "0.2", "--force")
    assert code == 1 and "notes.txt" in err and "did not write" in err
    assert (tmp_path / "stores" / "music" / "notes.txt").read_text() == "mine\n"


def test_report_and_fit_refuse_an_out_folder_of_someone_else(tmp_path, capsys):
    run = write_run(tmp_path / "runs", "npt", [(1000, 3.0, 2.9, 3.1), (2000, 2.8, 2.7, 3.0)])
    for cmd in ("report", "fit"):
        mine = tmp_path / f"my-{cmd}"
        mine.mkdir()
        (mine / "paper.md").write_text("draft\n")
        code, _, err = run_cli(capsys, cmd, str(run), "--out", str(mine))
        assert code == 1 and "not a mixer" in err, err
        assert [p.name for p in mine.iterdir()] == ["paper.md"]
    code, _, err = run_cli(capsys, "report", str(run), "--out", str(tmp_path / "rep"))
    assert code == 0, err
    code, _, err = run_cli(capsys, "report", str(run), "--out", str(tmp_path / "rep"))
    assert code == 0, err  # its own folder: rewritten


def test_audit_work_folder_must_be_new_empty_or_the_audits_own(tmp_path, capsys):
    stores = make_stores(tmp_path / "stores", general_docs=200, domain_docs=20)
    mix = build(stores, tmp_path / "mix", "--fraction", "0.1", "--tokens", "20K", "--seq-len", "64")
    mine = tmp_path / "work"
    mine.mkdir()
    (mine / "results.csv").write_text("1,2\n")
    code, _, err = run_cli(capsys, "audit", str(mix), "--work", str(mine))
    assert code == 1 and "not a mixer audit work" in err, err
    assert [p.name for p in mine.iterdir()] == ["results.csv"]
    fresh = tmp_path / "fresh"
    for _ in range(2):  # created, then resumed in its own folder
        code, _, err = run_cli(capsys, "audit", str(mix), "--work", str(fresh))
        assert code == 0, err


def test_build_never_writes_through_a_link_inside_the_mix(tmp_path, capsys):
    stores = make_stores(tmp_path / "stores", general_docs=200, domain_docs=20)
    outside = tmp_path / "outside"
    outside.mkdir()
    mix = tmp_path / "mix"
    flags = ("--stores", str(stores), "--domain", "music", "--fraction", "0.1", "--tokens", "20K", "--seq-len", "64")
    code, _, err = run_cli(capsys, "build", *flags, "--out", str(mix))
    assert code == 0, err
    (mix / "manifest.json").unlink()  # an interrupted build: the resume writes eval/ and the manifest
    for f in (mix / "eval").iterdir():
        f.unlink()
    (mix / "eval").rmdir()
    os.symlink(outside, mix / "eval")
    code, _, err = run_cli(capsys, "build", *flags, "--out", str(mix))
    assert code == 1 and "symbolic link" in err and str(mix / "eval") in err, err
    assert list(outside.iterdir()) == []
