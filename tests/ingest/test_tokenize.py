"""`mixer tokenize` end to end on tiny corpora built here, with a tokenizer trained in memory."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import numpy as np
import pytest

from tests.tokutil import word_tokenizer
from mixer.executors import Executor
from mixer.cli import main
from mixer.formats.store import open_store

WORDS = [f"w{i}" for i in range(400)]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Path:
    """A word-level tokenizer over WORDS (+ [UNK], <|endoftext|>), trained in memory (no network)."""
    return word_tokenizer(tmp_path_factory.mktemp("tok") / "tiny/tokenizer.json", WORDS)


def docs(seed: int, n: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 60))) for _ in range(n)]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    data = "".join(json.dumps(r) + "\n" for r in records).encode()
    if path.suffix == ".gz":
        data = gzip.compress(data)
    elif path.suffix == ".zst":
        import zstandard

        data = zstandard.ZstdCompressor().compress(data)
    path.write_bytes(data)
    return path


def corpus(tmp_path: Path, files: int = 3, per_file: int = 200) -> Path:
    folder = tmp_path / "data"
    folder.mkdir(exist_ok=True)
    for k in range(files):
        write_jsonl(folder / f"part{k}.jsonl", [{"text": t, "id": f"{k}-{i}"} for i, t in enumerate(docs(k, per_file))])
    return folder


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    """Run the CLI in-process; (exit code, stdout, last stderr line)."""
    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    return code, out, lines[-1] if lines else ""


def tok_args(tokenizer: Path, stores: Path, *inputs: Path | str, name: str = "d", role: str = "domain") -> list:
    return ["tokenize", "--source", name, "--role", role, "--tokenizer", tokenizer, "--stores", stores,
            *[x for i in inputs for x in ("--input", i)]]


def test_store_holds_every_document_in_canonical_order_with_eos(tmp_path, tokenizer, capsys):
    from tokenizers import Tokenizer

    data = corpus(tmp_path)
    code, out, _ = cli(capsys, *tok_args(tokenizer, tmp_path / "stores", data / "*.jsonl"), "--json")
    assert code == 0
    meta = json.loads(out)["sources"][0]
    store = open_store(tmp_path / "stores", "d")
    assert meta["splits"] == store.meta["splits"] and store.splits == ["train", "test", "val"]
    assert store.tokenizer["name"] == "tiny" and store.eos_id == 1 and store.dtype == np.dtype("<u2")
    tok = Tokenizer.from_file(str(tokenizer))
    texts = {f"{k}-{i}": t for k in range(3) for i, t in enumerate(docs(k, 200))}
    seen = []
    for split in store.splits:
        ids = store.doc_ids(split)
        assert len(ids) == store.n_docs(split) and int(store.doc_ends(split)[-1]) == store.n_tokens(split)
        for i, doc_id in enumerate(ids):
            assert list(store.document(split, i)) == tok.encode(texts[doc_id]).ids + [store.eos_id]
        # canonical order: files sorted by path, then line order
        assert ids == sorted(ids, key=lambda x: tuple(map(int, x.split("-"))))
        seen += ids
    assert sorted(seen) == sorted(texts) and store.n_docs("test") > 0
    assert store.meta["split"]["near_duplicates"] is True and (store.path / "near_duplicates.jsonl").exists()
    assert not (tmp_path / "stores" / ".work").exists()  # work folder removed once the store is in place


def test_store_bytes_do_not_depend_on_task_count(tmp_path, tokenizer, capsys):
    data = corpus(tmp_path, files=5, per_file=60)
    # a copy differing only in case and spacing, in another file: must share a side
    write_jsonl(data / "part9.jsonl", [{"text": "  " + docs(0, 1)[0].upper().replace(" ", "\t "), "id": "copy"}])
    for tasks, workers in ((1, 1), (3, 1), (4, 2)):
        code, _, err = cli(capsys, *tok_args(tokenizer, tmp_path / f"s{tasks}", data), "--tasks", tasks,
                             "--workers", workers, "--test-fraction", 0.2)
        assert code == 0, err
    names = ["train.ds", "train.ds.index", "train.ids", "test.ds", "test.ds.index", "test.ids", "store.json",
             "near_duplicates.jsonl"]
    for tasks in (3, 4):
        for name in names:
            assert (tmp_path / "s1/d" / name).read_bytes() == (tmp_path / f"s{tasks}/d" / name).read_bytes(), name
    store = open_store(tmp_path / "s1", "d")
    side = {i: s for s in store.splits for i in store.doc_ids(s)}
    assert side["copy"] == side["0-0"]
    clusters = [json.loads(x) for x in (store.path / "near_duplicates.jsonl").read_text().splitlines()]
    assert any({"0-0", "copy"} <= set(c["documents"]) for c in clusters)


def test_formats_gz_zst_parquet_and_a_folder_of_text_files(tmp_path, tokenizer, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    d = tmp_path / "in"
    (d / "texts").mkdir(parents=True)
    write_jsonl(d / "a.jsonl.gz", [{"body": t, "key": i} for i, t in enumerate(docs(1, 20))])
    write_jsonl(d / "b.jsonl.zst", [{"body": t} for t in docs(2, 20)])
    pq.write_table(pa.table({"body": docs(3, 20)}), d / "c.parquet")
    for i, t in enumerate(docs(4, 5)):
        (d / "texts" / f"{i}.txt").write_text(t)
    code, out, err = cli(capsys, *tok_args(tokenizer, tmp_path / "st", d / "a.jsonl.gz", d / "b.jsonl.zst",
                                             d / "c.parquet", d / "texts"),
                           "--text-key", "body", "--id-key", "key", "--json", "--no-near-duplicates")
    assert code == 0, err
    store = open_store(tmp_path / "st", "d")
    ids = store.doc_ids("train") + store.doc_ids("test")
    assert sum(store.n_docs(s) for s in store.splits) == 65
    assert "0" in ids and "b.jsonl.zst:1" in ids and "c.parquet:0" in ids and "texts/3.txt" in ids
    assert store.meta["split"]["near_duplicates"] is False and not (store.path / "near_duplicates.jsonl").exists()


def test_test_tokens_general_val_and_rerun_semantics(tmp_path, tokenizer, capsys):
    data = corpus(tmp_path)
    args = tok_args(tokenizer, tmp_path / "st", data, name="web", role="general")
    code, out, err = cli(capsys, *args, "--test-tokens", "2K", "--json")
    assert code == 0, err
    store = open_store(tmp_path / "st", "web")
    assert store.splits == ["train", "val"] and 2000 <= store.n_tokens("val") < 2000 + 62
    assert store.meta["split"]["near_duplicates"] is False  # general sources: off by default
    code, out, _ = cli(capsys, *args, "--test-tokens", "2K", "--json")
    assert json.loads(out)["sources"][0]["status"] == "up to date"
    code, _, err = cli(capsys, *args, "--test-tokens", "3K")
    assert code == 1 and err.startswith("mixer: error: ") and "pass --force" in err
    code, out, err = cli(capsys, *args, "--test-tokens", "3K", "--force")
    assert code == 0 and "web" in out and "val" in out and open_store(tmp_path / "st", "web").n_tokens("val") >= 3000


def test_rerun_skips_finished_tasks(tmp_path, tokenizer, capsys, monkeypatch):
    import mixer.ingest.merge
    from mixer.ingest.tokenizer_step import TokenizeParts

    data = corpus(tmp_path)
    args = tok_args(tokenizer, tmp_path / "st", data) + ["--tasks", 2, "--workers", 1]

    def crash(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(mixer.ingest.merge, "write_store", crash)
    assert cli(capsys, *args)[0] == 130
    completions = list((tmp_path / "st/.work/d").glob("*/logs/completions/*"))
    assert len(completions) == 2 and not (tmp_path / "st/d").exists()
    monkeypatch.undo()

    def must_not_run(self, data, rank=0, world_size=1):
        raise AssertionError("a finished task ran again")

    monkeypatch.setattr(TokenizeParts, "run", must_not_run)
    code, out, err = cli(capsys, *args)
    assert code == 0, err
    assert open_store(tmp_path / "st", "d").n_docs() > 0


@pytest.mark.parametrize(
    "line, message",
    [
        (b'{"text": "w1 w2", "id": ', "bad.jsonl:3: malformed JSON"),
        (b'{"body": "w1 w2"}', "bad.jsonl:3: no key 'text' (keys: body; set --text-key)"),
        (b'{"text": "w1 \xff\xfe w2"}', "bad.jsonl:3: not valid UTF-8 (byte 0xff at offset 13)"),
        (b'["w1"]', "bad.jsonl:3: not a JSON object"),
        (b'{"text": 5}', "bad.jsonl:3: 'text' is a int, not a string"),
    ],
)
def test_bad_records_fail_with_file_and_line_or_are_skipped(tmp_path, tokenizer, capsys, line, message):
    data = tmp_path / "in"
    data.mkdir()
    good = b"".join(json.dumps({"text": t}).encode() + b"\n" for t in docs(5, 30))
    (data / "bad.jsonl").write_bytes(good[: good.index(b"\n", good.index(b"\n") + 1) + 1] + line + b"\n" + good)
    args = tok_args(tokenizer, tmp_path / "st", data / "bad.jsonl")
    code, out, err = cli(capsys, *args)
    assert code == 1 and err.startswith("mixer: error: ") and message in err and "--on-bad-record skip" in err
    # nothing half-written: no store, no partial token files, no store.json
    assert not (tmp_path / "st" / "d").exists()
    assert not list((tmp_path / "st").rglob("store.json")) and not list((tmp_path / "st").rglob("*.ds"))
    code, out, err = cli(capsys, *args, "--on-bad-record", "skip", "--json")
    assert code == 0, err
    meta = json.loads(out)["sources"][0]
    assert meta["dropped"] == {"empty": 0, "bad_records": 1} and message in meta["skipped_records"][0]
    assert sum(s["documents"] for s in meta["splits"].values()) == 32


def test_split_settings_error_keeps_parts_so_the_fix_only_merges(tmp_path, tokenizer, capsys, monkeypatch):
    from mixer.ingest.tokenizer_step import TokenizeParts

    data = corpus(tmp_path, files=1, per_file=50)
    args = tok_args(tokenizer, tmp_path / "st", data)
    code, _, err = cli(capsys, *args, "--test-tokens", "1M")
    assert code == 1 and "the corpus has only" in err and "--test-tokens 1000000" in err
    assert not (tmp_path / "st" / "d").exists()

    def must_not_run(self, data, rank=0, world_size=1):
        raise AssertionError("tokenized again although only the split changed")

    monkeypatch.setattr(TokenizeParts, "run", must_not_run)
    code, _, err = cli(capsys, *args, "--test-tokens", "200")
    assert code == 0, err
    assert open_store(tmp_path / "st", "d").n_tokens("test") >= 200


def test_ids_with_line_breaks_stay_one_per_line(tmp_path, tokenizer, capsys):
    write_jsonl(tmp_path / "a.jsonl", [{"text": t, "id": f"x\u2028{i}\nz"} for i, t in enumerate(docs(8, 30))])
    assert cli(capsys, *tok_args(tokenizer, tmp_path / "st", tmp_path / "a.jsonl"))[0] == 0
    store = open_store(tmp_path / "st", "d")
    assert sorted(store.doc_ids("train") + store.doc_ids("test")) == sorted(f"x {i} z" for i in range(30))


def test_empty_documents_are_dropped_and_counted(tmp_path, tokenizer, capsys):
    records = [{"text": t} for t in docs(6, 40)] + [{"text": ""}, {"text": "  \n\t "}, {"text": None}]
    write_jsonl(tmp_path / "e.jsonl", records)
    code, out, err = cli(capsys, *tok_args(tokenizer, tmp_path / "st", tmp_path / "e.jsonl"))
    assert code == 0, err
    assert "dropped 3 empty, 0 bad records" in out
    assert open_store(tmp_path / "st", "d").meta["dropped"] == {"empty": 3, "bad_records": 0}


def test_usage_errors_name_the_flag(tmp_path, tokenizer, capsys):
    st = tmp_path / "st"
    code, _, err = cli(capsys, *tok_args(tokenizer, st, tmp_path / "nothing-*.jsonl"))
    assert (code, err) == (2, f"mixer: error: --input {tmp_path}/nothing-*.jsonl: matches no files")
    code, _, err = cli(capsys, *tok_args(tokenizer, st, tmp_path / "missing.jsonl"))
    assert (code, err) == (2, f"mixer: error: --input {tmp_path}/missing.jsonl: no such file or folder")
    code, _, err = cli(capsys, "tokenize", "--source", "d", "--role", "domain", "--input", "x")
    assert (code, err) == (2, "mixer: error: --tokenizer is required (or give --recipe FILE)")
    code, _, err = cli(capsys, "tokenize", "--recipe", tmp_path / "no.toml")
    assert code == 2 and err.startswith(f"mixer: error: --recipe {tmp_path}/no.toml: no such recipe file, nor a shipped recipe (")
    (tmp_path / "r.toml").write_text("[[source]]\nname='d'\nrole='domain'\ninputs=['x']\ntokenizer='t'\n")
    code, _, err = cli(capsys, "tokenize", "--recipe", tmp_path / "r.toml", "--role", "general")
    assert code == 2 and "--role: not with --recipe" in err
    (tmp_path / "bad-tok.json").write_text("{}")
    write_jsonl(tmp_path / "a.jsonl", [{"text": "w1"}])
    code, _, err = cli(capsys, *tok_args(tmp_path / "bad-tok.json", st, tmp_path / "a.jsonl"))
    assert code == 1 and "not a HuggingFace tokenizers JSON file" in err


def test_refuses_a_second_tokenizer_in_one_study_unless_forced(tmp_path, tokenizer, capsys):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    other = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    other.pre_tokenizer = pre_tokenizers.Whitespace()
    other.train_from_iterator([" ".join(WORDS[:50])], trainers.WordLevelTrainer(special_tokens=["[UNK]", "</s>"]))
    other.save(str(tmp_path / "other.json"))
    data = corpus(tmp_path, files=1, per_file=50)
    st = tmp_path / "st"
    assert cli(capsys, *tok_args(tokenizer, st, data, name="a"))[0] == 0
    code, _, err = cli(capsys, *tok_args(tmp_path / "other.json", st, data, name="b"))
    assert code == 1 and "differs from the tokenizer of" in err and not (st / "b").exists()
    code, _, err = cli(capsys, *tok_args(tmp_path / "other.json", st, data, name="b"), "--force")
    assert code == 0 and open_store(st, "b").tokenizer["name"] == "other"


def test_recipe_runs_every_source(tmp_path, tokenizer, capsys):
    corpus(tmp_path, files=2, per_file=50)
    (tmp_path / "r.toml").write_text(f"""
[[source]]
name = "dom"
role = "domain"
inputs = ["data/part0.jsonl"]
tokenizer = "{tokenizer}"
test_fraction = 0.1
[[source]]
name = "gen"
role = "general"
inputs = ["${{DATA_DIR:-data}}/part1.jsonl"]
tokenizer = "{tokenizer}"
""")
    code, out, err = cli(capsys, "tokenize", "--recipe", tmp_path / "r.toml", "--stores", tmp_path / "st")
    assert code == 0, err
    assert open_store(tmp_path / "st", "dom").splits == ["train", "test", "val"]
    assert open_store(tmp_path / "st", "gen").splits == ["train", "val"]
    code, out, err = cli(capsys, "tokenize", "--recipe", tmp_path / "r.toml", "--source", "gen", "--stores",
                           tmp_path / "st", "--json")
    assert [s["source"] for s in json.loads(out)["sources"]] == ["gen"]


def test_real_sample_corpus_with_gpt2(tmp_path, sample_cache, capsys, monkeypatch):
    """One real corpus (chem SMILES, ~135k GPT-2 tokens) through the shipped recipe."""
    from tokenizers import Tokenizer

    monkeypatch.setenv("MIXER_CACHE", str(sample_cache))
    recipe = Path(__file__).resolve().parents[2] / "recipes" / "samples.toml"
    code, out, err = cli(capsys, "tokenize", "--recipe", recipe, "--source", "chem", "--stores", tmp_path)
    assert code == 0, err
    store = open_store(tmp_path, "chem")
    assert store.eos_id == 50256 and store.vocab_size == 50257 and store.dtype == np.dtype("<u2")
    assert 100_000 < store.n_tokens("train") + store.n_tokens("test") < 200_000
    tok = Tokenizer.from_file(str(sample_cache / "tokenizers/gpt2/tokenizer.json"))
    first = tok.decode(list(store.document("train", 0)[:-1]))
    assert first.strip() and store.document("train", 0)[-1] == 50256


def test_executor_flags_are_checked(tmp_path, tokenizer, capsys, monkeypatch):
    monkeypatch.delenv("MIXER_SLURM_PARTITION", raising=False)
    data = corpus(tmp_path, files=1, per_file=10)
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here; --partition may be left to the cluster's default
    code, _, err = cli(capsys, *tok_args(tokenizer, tmp_path / "st", data), "--executor", "slurm")
    assert (code, err) == (2, "mixer: error: --executor slurm: sbatch is not on PATH (run from a Slurm login node)")
    monkeypatch.undo()
    code, _, err = cli(capsys, *tok_args(tokenizer, tmp_path / "st", data), "--tasks", "0")
    assert (code, err) == (2, "mixer: error: --tasks 0: must be at least 1")


@pytest.mark.ray
def test_ray_executor_writes_identical_bytes(tmp_path, tokenizer):
    ray = pytest.importorskip("ray", reason="ray is in the dev extra; CI installs it")
    from mixer.ingest.sources import SourceSpec
    from mixer.ingest.tokenize import RunOptions, tokenize_source

    data = corpus(tmp_path, files=3, per_file=40)
    spec = SourceSpec("d", "domain", [str(data)], str(tokenizer), test_fraction=0.2)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    try:
        tokenize_source(spec, tmp_path / "ray", RunOptions(executor=Executor("ray", tasks=3, workers=2)))
    finally:
        ray.shutdown()
    tokenize_source(spec, tmp_path / "ref", RunOptions())
    for name in ("train.ds", "train.ds.index", "train.ids", "test.ds", "test.ids", "near_duplicates.jsonl"):
        assert (tmp_path / "ray/d" / name).read_bytes() == (tmp_path / "ref/d" / name).read_bytes(), name


def test_unreadable_files_are_one_line_errors(tmp_path, tokenizer, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    whole = gzip.compress(b"".join(json.dumps({"text": t}).encode() + b"\n" for t in docs(9, 200)))
    (tmp_path / "cut.jsonl.gz").write_bytes(whole[: len(whole) // 2])
    code, _, err = cli(capsys, *tok_args(tokenizer, tmp_path / "st", tmp_path / "cut.jsonl.gz"))
    assert code == 1 and f"{tmp_path}/cut.jsonl.gz: cannot read" in err and "truncated" in err
    pq.write_table(pa.table({"body": ["w1 w2"]}), tmp_path / "t.parquet")
    code, _, err = cli(capsys, *tok_args(tokenizer, tmp_path / "st", tmp_path / "t.parquet"))
    assert (code, err) == (1, f"mixer: error: {tmp_path}/t.parquet: no column 'text' (columns: body; set --text-key)")
    assert not (tmp_path / "st" / "d").exists()
