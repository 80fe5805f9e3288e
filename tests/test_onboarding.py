"""From a lab's disk to a store without a guide: recipes that say what to download, tokenizers
as labs name them, recipe overrides on the command line, hub snapshot folders, quiet output,
and refusals that name the next step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mixutil import make_stores, run_cli
from tests.tokutil import word_tokenizer

WORDS = [f"w{i}" for i in range(60)]


def _docs(path: Path, n: int, long_every: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        k = 400 if long_every and i % long_every == 0 else 4 + i % 11
        lines.append(json.dumps({"text": " ".join(WORDS[(i * 7 + j) % 60] for j in range(k))}) + "\n")
    path.write_text("".join(lines))
    return path


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A mixer cache holding a tokenizer named `labtok`, and an empty hub cache."""
    root = tmp_path / "cache"
    word_tokenizer(root / "tokenizers" / "labtok" / "tokenizer.json", WORDS)
    monkeypatch.setenv("MIXER_CACHE", str(root))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    return root


def test_recipes_show_says_what_to_download_and_where_to_point(capsys, monkeypatch):
    monkeypatch.delenv("MUSICPILE_DIR", raising=False)
    code, out, err = run_cli(capsys, "recipes", "show", "musicpile")
    assert code == 0, err
    assert "huggingface-cli download m-a-p/MusicPile" in out and "MUSICPILE_DIR (not set)" in out
    assert "data/*.parquet" in out and "mixer tokenize --recipe musicpile" in out
    monkeypatch.setenv("MUSICPILE_DIR", "/data/mp")
    code, out, _ = run_cli(capsys, "recipes", "show", "musicpile", "--json")
    info = json.loads(out)
    assert {"name": "MUSICPILE_DIR", "set": True, "value": "/data/mp"}.items() <= info["vars"][0].items()
    assert info["fetch"]["from"].startswith("https://huggingface.co/datasets/m-a-p/MusicPile")


@pytest.mark.parametrize("recipe", ["musicpile", "proofpile", "chempile", "dolma", "samples"])
def test_every_shipped_source_recipe_says_how_to_get_its_data(capsys, recipe):
    code, out, _ = run_cli(capsys, "recipes", "show", recipe, "--json")
    info = json.loads(out)
    assert code == 0 and info["fetch"]["command"] and info["fetch"]["from"] and info["fetch"]["size"]
    assert all(v["means"] for v in info["vars"]), info["vars"]  # every variable the recipe uses is explained


def test_a_missing_store_names_the_next_two_steps(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, "build", "--domain", "musicpile", "--fraction", "0.02", "--tokens", "200B")
    assert code == 1
    assert "`mixer recipes show musicpile`" in err and "`mixer tokenize --recipe musicpile`" in err
    code, _, err = run_cli(capsys, "plan", "--domain", "mydata", "--fraction", "0.02", "--tokens", "1M")
    assert code == 1 and "mixer tokenize --source mydata" in err


def test_an_unset_recipe_variable_points_at_recipes_show(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MUSICPILE_DIR", raising=False)
    code, _, err = run_cli(capsys, "tokenize", "--recipe", "musicpile", "--stores", str(tmp_path / "s"))
    assert code == 1 and "${MUSICPILE_DIR} is not set" in err and "mixer recipes show musicpile" in err


@pytest.mark.parametrize("how", ["name", "folder", "hub"])
def test_tokenizer_as_a_file_a_folder_or_a_cached_name(tmp_path, capsys, cache, how):
    data = _docs(tmp_path / "in.jsonl", 80)
    if how == "name":
        tok = "labtok"
    elif how == "folder":
        tok = str(cache / "tokenizers" / "labtok")
    else:  # a hub cache's layout: models--org--name/snapshots/<rev>/tokenizer.json, refs/main naming the rev
        repo = tmp_path / "hub" / "models--lab--tok"
        word_tokenizer(repo / "snapshots" / "abc123" / "tokenizer.json", WORDS)
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text("abc123")
        tok = "lab/tok"
    code, _, err = run_cli(capsys, "tokenize", "--source", "d", "--role", "domain", "--input", str(data),
                           "--tokenizer", tok, "--stores", str(tmp_path / "stores"))
    assert code == 0, err
    meta = json.loads((tmp_path / "stores" / "d" / "store.json").read_text())
    assert meta["tokenizer"]["name"] == {"name": "labtok", "folder": "labtok", "hub": "lab/tok"}[how]
    code, _, err = run_cli(capsys, "tokenize", "--source", "e", "--role", "domain", "--input", str(data),
                           "--tokenizer", "no-such-tokenizer", "--stores", str(tmp_path / "stores"))
    assert code == 2 and "no tokenizer of that name in the local caches" in err


def test_recipe_overrides_for_tokenizer_inputs_and_split_are_recorded(tmp_path, capsys, cache):
    data = _docs(tmp_path / "mine" / "docs.jsonl", 300)
    recipe = tmp_path / "lab.toml"
    recipe.write_text('[[source]]\nname = "d"\nrole = "domain"\ninputs = ["${LAB_DIR}/*.jsonl"]\n'
                      'tokenizer = "elsewhere/tokenizer.json"\ntest_fraction = 0.05\n')
    code, _, err = run_cli(capsys, "tokenize", "--recipe", str(recipe), "--tokenizer", "labtok", "--input",
                           str(data), "--set", "test_tokens=400", "--stores", str(tmp_path / "stores"))
    assert code == 0, err
    meta = json.loads((tmp_path / "stores" / "d" / "store.json").read_text())
    assert meta["recipe"]["path"] == str(recipe)
    assert meta["recipe"]["overrides"] == {"test_tokens": 400, "inputs": [str(data)],
                                           "tokenizer": str(cache / "tokenizers" / "labtok" / "tokenizer.json")}
    assert meta["split"]["test_tokens"] == 400 and meta["split"]["test_fraction"] is None
    code, _, err = run_cli(capsys, "tokenize", "--recipe", str(recipe), "--text-key", "body")
    assert code == 2 and "--text-key: not with --recipe" in err
    code, _, err = run_cli(capsys, "tokenize", "--source", "d", "--role", "domain", "--input", str(data),
                           "--tokenizer", "labtok", "--set", "test_tokens=1")
    assert code == 2 and "--set test_tokens=1" in err


def test_a_hub_snapshot_folder_skips_its_card_and_licence_with_a_note(tmp_path, capsys, cache):
    snap = tmp_path / "snapshot"
    _docs(snap / "data" / "train-00000.jsonl", 120)
    (snap / "README.md").write_text("---\nlicense: cc-by-4.0\n---\n# A dataset card\n")
    (snap / "LICENSE").write_text("Creative Commons\n")
    (snap / ".gitattributes").write_text("*.parquet filter=lfs\n")
    code, out, err = run_cli(capsys, "tokenize", "--source", "d", "--role", "domain", "--input", str(snap),
                             "--tokenizer", "labtok", "--stores", str(tmp_path / "stores"))
    assert code == 0, err
    assert "skipped 2 repository file(s), not documents: LICENSE, README.md" in out
    assert json.loads((tmp_path / "stores" / "d" / "store.json").read_text())["input_files"] == 1


def test_a_heldout_split_far_from_its_request_warns(tmp_path, capsys, cache):
    data = _docs(tmp_path / "in.jsonl", 200, long_every=1)  # documents of 400 words: any one is 20x the request
    code, out, err = run_cli(capsys, "tokenize", "--source", "d", "--role", "domain", "--input", str(data),
                             "--tokenizer", "labtok", "--test-tokens", "20", "--stores", str(tmp_path / "stores"))
    assert code == 0, err
    assert "warning: the test split holds" in out and "the 20 asked for" in out


def test_tokenize_is_quiet_by_default_and_keeps_the_task_logs(tmp_path, capsys, cache):
    data = _docs(tmp_path / "in.jsonl", 80)
    args = ["tokenize", "--source", "d", "--role", "domain", "--input", str(data), "--tokenizer", "labtok",
            "--stores", str(tmp_path / "stores")]
    code, out, err = run_cli(capsys, *args)
    assert code == 0, err
    assert "Stats" not in err and "PIPELINE" not in err and "| INFO" not in err, err
    logs = tmp_path / "stores" / ".logs" / "d"
    assert "PIPELINE" in (logs / "task_00000.log").read_text() and (logs / "stats.json").is_file()
    code, out, err = run_cli(capsys, *args, "--force", "--seed", "3", "--verbose")
    assert code == 0 and "Stats" in err


def test_general_repetition_has_a_limit(tmp_path, capsys):
    stores = make_stores(tmp_path / "stores", general_docs=100, domain_docs=20)
    flags = ["plan", "--stores", str(stores), "--domain", "music", "--fraction", "0.1", "--tokens", "60K",
             "--seq-len", "32"]
    code, _, err = run_cli(capsys, *flags)
    assert code == 1 and "general tokens would repeat" in err and "--max-general-epochs 4" in err
    code, _, err = run_cli(capsys, *flags, "--max-general-epochs", "20")
    assert code == 0, err


def test_json_errors_are_json_on_stdout(tmp_path, capsys):
    code, out, err = run_cli(capsys, "verify", str(tmp_path / "nothing"), "--json")
    assert code == 1 and json.loads(out) == {"error": err.strip().removeprefix("mixer: error: "), "exit_code": 1}


def test_recipe_builds_name_their_output_from_the_vars_that_changed(tmp_path, capsys, monkeypatch):
    from mixer.mixing.stages import default_name

    spt = Path(__file__).resolve().parents[1] / "recipes" / "stages" / "spt.toml"
    assert default_name(spt, {"fraction": 0.02, "tokens": "4M"}, {"fraction": 0.02}) == "spt"
    assert default_name(spt, {"fraction": 0.02, "tokens": "4M"}, {"fraction": 0.05, "tokens": "8M"}) == \
        "spt-fraction0.05-tokens8M"
    stores = make_stores(tmp_path / "stores", general_docs=3000, domain_docs=60)
    monkeypatch.chdir(tmp_path)
    for f in ("0.05", "0.1"):
        code, _, err = run_cli(capsys, "build", "--recipe", "spt", "--stores", str(stores), "--set", f"fraction={f}",
                               "--set", "tokens=40K", "--set", "seq_len=32", "--quiet")
        assert code == 0, err
    assert (tmp_path / "mixes" / "spt-fraction0.05-seq_len32-tokens40K" / "pretrain" / "manifest.json").is_file()
    assert (tmp_path / "mixes" / "spt-fraction0.1-seq_len32-tokens40K" / "pretrain" / "manifest.json").is_file()
