"""Source recipes: [[source]] tables -> validated SourceSpecs (docs/formats.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mixer.errors import MixerError, UsageError
from mixer.ingest.sources import SourceSpec, expand_vars, load_sources, select_source

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str, name: str = "r.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_expansion_defaults_and_relative_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("CORPUS", "/data/corpus")
    monkeypatch.delenv("MIXER_CACHE", raising=False)
    monkeypatch.delenv("UNSET_VAR", raising=False)
    r = write(tmp_path, """
[[source]]
name = "music"
role = "domain"
inputs = ["${CORPUS}/a.jsonl", "rel/*.jsonl.zst", "${UNSET_VAR:-fallback}/b.parquet"]
tokenizer = "${MIXER_CACHE}/tokenizers/gpt2/tokenizer.json"
test_tokens = 1000
seed = 3
near_duplicates = false

[[source]]
name = "prose"
role = "general"
inputs = "docs"
tokenizer = "tok.json"
[[stage]]
name = "ignored here: stages are parsed by the build"
""")
    music, prose = load_sources(r)
    assert music.inputs == ["/data/corpus/a.jsonl", str(tmp_path / "rel/*.jsonl.zst"), str(tmp_path / "fallback/b.parquet")]
    assert music.tokenizer == str(Path("~/.cache/mixer").expanduser() / "tokenizers/gpt2/tokenizer.json")
    assert (music.test_tokens, music.heldout_fraction, music.seed, music.use_near_duplicates) == (1000, None, 3, False)
    assert prose.inputs == [str(tmp_path / "docs")] and prose.tokenizer == str(tmp_path / "tok.json")
    # defaults: 1% held out, near-duplicates follow the role (off for general sources)
    assert (prose.heldout_fraction, prose.use_near_duplicates, prose.text_key, prose.id_key) == (0.01, False, "text", "id")
    assert SourceSpec("d", "domain", ["x"], "t").use_near_duplicates is True
    assert select_source([music, prose], "prose", r) == [prose]


def test_mixer_cache_env_wins(monkeypatch):
    monkeypatch.setenv("MIXER_CACHE", "/cache")
    assert expand_vars("${MIXER_CACHE}/x", "here") == "/cache/x"


@pytest.mark.parametrize(
    "body, message",
    [
        ('name="m"\nrole="domain"\ninputs=["a"]\ntokenizer="t"\ntest_fraktion=0.1', "unknown key 'test_fraktion'"),
        ('name="m"\nrole="domain"\ninputs=["a"]', "missing required key 'tokenizer'"),
        ('name="m"\nrole="web"\ninputs=["a"]\ntokenizer="t"', "role: 'web' is not one of domain, general"),
        ('name="m"\nrole="domain"\ninputs=["a"]\ntokenizer="t"\ntest_fraction=1.5', "test_fraction: 1.5 must be between 0 and 1"),
        ('name="m"\nrole="domain"\ninputs=["a"]\ntokenizer="t"\ntest_fraction=0.1\ntest_tokens=5', "not both"),
        ('name="m"\nrole="domain"\ninputs=["a"]\ntokenizer="t"\ntest_tokens=-5', "test_tokens: -5 must be a positive"),
        ('name="m"\nrole="domain"\ninputs=["${NOPE_NOT_SET}"]\ntokenizer="t"', "${NOPE_NOT_SET} is not set"),
        ('name="a b"\nrole="domain"\ninputs=["a"]\ntokenizer="t"', "is not a store name"),
        ('name="m"\nrole="domain"\ninputs=[]\ntokenizer="t"', "needs at least one file"),
        ('name="m"\nrole="domain"\ninputs=["a"]\ntokenizer="t"\non_bad_record="ignore"', "on_bad_record: 'ignore'"),
    ],
)
def test_invalid_source_names_file_and_field(tmp_path, monkeypatch, body, message):
    monkeypatch.delenv("NOPE_NOT_SET", raising=False)
    r = write(tmp_path, "[[source]]\n" + body + "\n")
    with pytest.raises(MixerError) as e:
        load_sources(r)
    assert str(r) in str(e.value) and message in str(e.value)


def test_recipe_file_problems(tmp_path):
    with pytest.raises(UsageError, match="no such recipe file"):
        load_sources(tmp_path / "missing.toml")
    with pytest.raises(MixerError, match="not valid TOML"):
        load_sources(write(tmp_path, "[[source]\nname="))
    with pytest.raises(MixerError, match=r"no \[\[source\]\] tables"):
        load_sources(write(tmp_path, 'description = "stages only"\n'))
    twice = '[[source]]\nname="m"\nrole="domain"\ninputs=["a"]\ntokenizer="t"\n'
    with pytest.raises(MixerError, match="'m' is defined 2 times"):
        load_sources(write(tmp_path, twice * 2))
    with pytest.raises(UsageError, match="--source nope: not in"):
        select_source(load_sources(write(tmp_path, twice)), "nope", tmp_path / "r.toml")


def test_flag_built_spec_names_the_flag():
    with pytest.raises(UsageError, match=r"^--test-fraction: 0 must be between"):
        SourceSpec("m", "domain", ["a"], "t", test_fraction=0).validate()


def test_shipped_recipes_load(monkeypatch):
    monkeypatch.setenv("MIXER_CACHE", "/cache")
    specs = load_sources(REPO / "recipes" / "samples.toml")
    assert {s.name for s in specs} >= {"music", "prose"}
    assert all(s.tokenizer.startswith("/cache/") for s in specs)


def test_unknown_recipe_through_the_cli(tmp_path):
    r = subprocess.run([sys.executable, "-m", "mixer.cli", "tokenize", "--recipe", str(tmp_path / "nope.toml")],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith(f"mixer: error: --recipe {tmp_path / 'nope.toml'}: no such recipe file")
