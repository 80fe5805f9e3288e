"""Input formats as users have them on disk, each made here in miniature."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest

from tests.tokutil import word_tokenizer
from mixer.cli import main
from mixer.errors import MixerError, UsageError
from mixer.formats.store import open_store
from mixer.ingest.readers import SourceReader, list_inputs

WORDS = [f"w{i}" for i in range(50)]


def text(i: int) -> str:
    return " ".join(WORDS[(i * 7 + k) % 50] for k in range(3 + i % 5))


def jsonl(records: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


def zstd(data: bytes) -> bytes:
    import zstandard

    return zstandard.ZstdCompressor().compress(data)


def read(files, text_key: str = "text", id_key: str = "id", tmp: Path | None = None) -> list[tuple[str, str]]:
    """Every document SourceReader yields for these input files, in order: (id, text)."""
    report = tmp or Path(os.environ.get("TMPDIR", "/tmp"))
    docs = SourceReader(files, text_key, id_key, "fail", str(report)).run(None, 0, 1)
    out = [(d.id, d.text) for d in docs]
    error = json.loads((report / "reader-00000.json").read_text())["error"]
    if error:
        raise MixerError(error)
    return out


def kinds(files) -> list[tuple[str, str, str | None]]:
    return [(f.label, f.kind, f.codec) for f in files]


def test_json_lines_by_content_whatever_the_name(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    (d / "a.jsonl").write_bytes(jsonl([{"text": text(0), "id": "a0"}]))
    (d / "b.json").write_bytes(jsonl([{"text": text(1), "id": "b0"}, {"text": text(2)}]))  # was one raw-JSON document
    (d / "c.ndjson").write_bytes(b"\xef\xbb\xbf" + jsonl([{"text": text(3)}]))  # with a byte-order mark
    (d / "d.json.gz").write_bytes(gzip.compress(jsonl([{"text": text(4)}])))
    (d / "e.jsonl.zst").write_bytes(zstd(jsonl([{"text": text(5)}])))
    (d / "f.jsonl").write_bytes(gzip.compress(jsonl([{"text": text(6)}])))  # gzip without .gz
    (d / "g").write_bytes(b"\n  " + jsonl([{"text": text(7)}]))  # no suffix at all
    (d / "h.ndjson.zstd").write_bytes(zstd(jsonl([{"text": text(8)}])))
    files = list_inputs([str(d)])
    assert kinds(files) == [("a.jsonl", "jsonl", None), ("b.json", "jsonl", None), ("c.ndjson", "jsonl", None),
                            ("d.json.gz", "jsonl", "gzip"), ("e.jsonl.zst", "jsonl", "zstd"),
                            ("f.jsonl", "jsonl", "gzip"), ("g", "jsonl", None), ("h.ndjson.zstd", "jsonl", "zstd")]
    assert read(files, tmp=tmp_path) == [("a0", text(0)), ("b0", text(1)), ("b.json:2", text(2)),
                                          ("c.ndjson:1", text(3)), ("d.json.gz:1", text(4)),
                                          ("e.jsonl.zst:1", text(5)), ("f.jsonl:1", text(6)), ("g:2", text(7)),
                                          ("h.ndjson.zstd:1", text(8))]


def dolma(root: Path, files: int = 3, per_file: int = 40) -> Path:
    """Dolma's layout: documents/*.json.gz of {id, text, source, added, created, metadata}, and
    attributes/ beside it (same ids, no text)."""
    (root / "documents").mkdir(parents=True)
    (root / "attributes" / "toxicity").mkdir(parents=True)
    for k in range(files):
        docs = [{"id": f"{k}-{i}", "text": text(k * per_file + i), "source": "synthetic", "added": "2024-01-01",
                 "created": "2020-01-01", "metadata": {"url": f"https://example.org/{k}/{i}", "length": i}}
                for i in range(per_file)]
        (root / "documents" / f"synthetic-{k:04d}.json.gz").write_bytes(gzip.compress(jsonl(docs)))
        attrs = [{"id": d["id"], "attributes": {"toxic": [[0, 5, 0.1]]}} for d in docs]
        (root / "attributes" / "toxicity" / f"synthetic-{k:04d}.json.gz").write_bytes(gzip.compress(jsonl(attrs)))
    return root


def test_dolma_documents(tmp_path):
    files = list_inputs([str(dolma(tmp_path / "dolma") / "documents" / "*.json.gz")])
    assert [f.kind for f in files] == ["jsonl"] * 3
    docs = read(files, tmp=tmp_path)
    assert len(docs) == 120 and docs[0] == ("0-0", text(0)) and docs[-1] == ("2-39", text(119))


def hf_snapshot(root: Path) -> Path:
    """A hub cache: snapshots/<rev>/ holds symlinks into blobs/, plus a README and .gitattributes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    blobs, snap = root / "blobs", root / "snapshots" / "0123abcd"
    blobs.mkdir(parents=True)
    (snap / "data").mkdir(parents=True)
    for k in range(2):
        blob = blobs / f"blob{k}"
        pq.write_table(pa.table({"id": [f"p{k}-{i}" for i in range(30)], "text": [text(i + 30 * k) for i in range(30)],
                                 "score": list(range(30))}), blob, row_group_size=7)
        (snap / "data" / f"train-0000{k}-of-00002.parquet").symlink_to(Path("../../../blobs") / blob.name)
    (blobs / "readme").write_text("# A dataset card\nLicense: none\n")
    (snap / "README.md").symlink_to(Path("../../blobs/readme"))
    (snap / ".gitattributes").write_text("*.parquet filter=lfs\n")
    return snap


def test_hf_snapshot_parquet_and_its_readme(tmp_path):
    snap = hf_snapshot(tmp_path / "hub")
    skipped = []  # the dataset card is never a document, nor suggested as text: skipped, and said so
    assert kinds(list_inputs([str(snap)], skipped=skipped)) == kinds(list_inputs([str(snap / "**" / "*.parquet")]))
    assert skipped == [f"{snap}/README.md"]
    files = list_inputs([str(snap / "**" / "*.parquet")])
    assert kinds(files) == [("train-00000-of-00002.parquet", "parquet", None),
                            ("train-00001-of-00002.parquet", "parquet", None)]
    docs = read(files, tmp=tmp_path)
    assert docs[:2] == [("p0-0", text(0)), ("p0-1", text(1))] and docs[-1] == ("p1-29", text(59)) and len(docs) == 60
    with_card = list_inputs([str(snap), str(snap / "README.md")])  # named on its own, it is read
    assert kinds(with_card)[0] == ("README.md", "text", None) and len(read(with_card, tmp=tmp_path)) == 61


def save_to_disk(folder: Path, shards: list[list[str]], stream: bool = True) -> Path:
    """What `datasets.Dataset.save_to_disk` writes: arrow streams + dataset_info.json + state.json."""
    import pyarrow as pa
    import pyarrow.ipc as ipc

    folder.mkdir(parents=True)
    names = []
    for k, texts in enumerate(shards):
        name = f"data-{k:05d}-of-{len(shards):05d}.arrow"
        table = pa.table({"text": texts, "label": list(range(len(texts)))})
        with (ipc.new_stream if stream else ipc.new_file)(str(folder / name), table.schema) as w:
            for batch in table.to_batches(max_chunksize=5):
                w.write_batch(batch)
        names.append(name)
    (folder / "dataset_info.json").write_text(json.dumps({"features": {"text": {"dtype": "string", "_type": "Value"}}},
                                                         indent=2))
    (folder / "state.json").write_text(json.dumps({"_data_files": [{"filename": n} for n in names],
                                                   "_fingerprint": "f00", "_split": "train"}, indent=2))
    return folder


def test_save_to_disk_folder(tmp_path):
    ds = save_to_disk(tmp_path / "ds", [[text(i) for i in range(12)], [text(i) for i in range(12, 20)]])
    files = list_inputs([str(ds)])
    assert kinds(files) == [("data-00000-of-00002.arrow", "arrow", None), ("data-00001-of-00002.arrow", "arrow", None)]
    docs = read(files, tmp=tmp_path)
    assert docs == [(f"data-00000-of-00002.arrow:{i}", text(i)) for i in range(12)] + [
        (f"data-00001-of-00002.arrow:{i}", text(12 + i)) for i in range(8)]
    # the Arrow file format (random access) is read too, and a glob over the folder skips its metadata
    other = save_to_disk(tmp_path / "file-format", [[text(i) for i in range(9)]], stream=False)
    files = list_inputs([str(other / "*")])
    assert kinds(files) == [("data-00000-of-00001.arrow", "arrow", None)]
    assert [t for _, t in read(files, tmp=tmp_path)] == [text(i) for i in range(9)]
    with pytest.raises(UsageError, match="matches only the metadata of a datasets folder"):
        list_inputs([str(other / "*.json")])


def test_dataset_dict_is_refused_with_its_splits(tmp_path):
    save_to_disk(tmp_path / "dd" / "train", [[text(1)]])
    save_to_disk(tmp_path / "dd" / "test", [[text(2)]])
    (tmp_path / "dd" / "dataset_dict.json").write_text('{"splits": ["train", "test"]}')
    with pytest.raises(UsageError, match=r"dd: a datasets DatasetDict \(splits: test, train\); give one split's"):
        list_inputs([str(tmp_path / "dd")])
    assert len(list_inputs([str(tmp_path / "dd" / "train")])) == 1


@pytest.mark.parametrize("name, data, message", [
    ("x.parquet", b"w1 w2\n", r"x.parquet: named .parquet but is not a parquet file \(starts with b'w1 w2\\n'\)"),
    ("x.arrow", b"hello", r"x.arrow: named .arrow but is not an Arrow IPC file"),
    ("x.json", json.dumps([{"text": "w1"}]).encode(), r"x.json: named .json but does not start with '\{' like JSON "
                                                       r"lines: starts with b'\[\{\"text\"'.* \(a JSON array"),
    ("x.jsonl.gz", gzip.compress(b"plain words\n"), r"x.jsonl.gz: named .jsonl but does not start with '\{'"),
])
def test_a_name_that_promises_another_format_is_an_error(tmp_path, name, data, message):
    (tmp_path / name).write_bytes(data)
    with pytest.raises(MixerError, match=message):
        list_inputs([str(tmp_path)])


def test_plain_text_only_when_named_txt_or_asked_for(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    (d / "a.txt").write_text(text(1))
    (d / "b.txt.gz").write_bytes(gzip.compress(text(2).encode()))
    (d / "c.v").write_text(text(3))
    (d / "LICENSE").write_text("MIT\n")
    (d / "_SUCCESS").write_bytes(b"")  # an empty marker file: no records, nothing to refuse
    with pytest.raises(UsageError, match=rf"--input: 1 file is not JSON lines, parquet or Arrow: {d}/c.v; leave it out"):
        list_inputs([str(d)])  # LICENSE, a repository file, is skipped rather than refused
    files = list_inputs([str(d / "*.txt*"), str(d / "c.v")])  # a file named on its own is meant as text
    assert kinds(files) == [("a.txt", "text", None), ("b.txt.gz", "text", "gzip"), ("c.v", "text", None)]
    assert read(files, tmp=tmp_path) == [("a.txt", text(1)), ("b.txt.gz", text(2)), ("c.v", text(3))]
    files = list_inputs([str(d)], text_files=True)
    assert [f.label for f in files] == ["_SUCCESS", "a.txt", "b.txt.gz", "c.v"]
    assert len(read(files, tmp=tmp_path)) == 3  # the empty file is an empty document, dropped


def test_symlinks_broken_or_doubled_are_errors(tmp_path):
    (tmp_path / "a.jsonl").write_bytes(jsonl([{"text": "w1"}]))
    (tmp_path / "b.jsonl").symlink_to(tmp_path / "a.jsonl")
    with pytest.raises(MixerError, match="a.jsonl and .*b.jsonl are the same file"):
        list_inputs([str(tmp_path)])
    (tmp_path / "b.jsonl").unlink()
    (tmp_path / "c.jsonl").symlink_to(tmp_path / "gone.jsonl")
    with pytest.raises(MixerError, match="c.jsonl: a broken symlink"):
        list_inputs([str(tmp_path)])


# ---- end to end through `mixer tokenize` ---------------------------------------------

@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Path:
    """A word-level tokenizer over WORDS (+ [UNK], <|endoftext|>), trained in memory (no network)."""
    return word_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer.json", WORDS)


def cli(capsys, *argv) -> tuple[int, str]:
    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    err = capsys.readouterr().err.strip().splitlines()
    return code, err[-1] if err else ""


def test_every_format_into_one_store(tmp_path, tokenizer, capsys):
    snap = hf_snapshot(tmp_path / "hub")
    ds = save_to_disk(tmp_path / "ds", [[text(i) for i in range(10)]])
    root = dolma(tmp_path / "dolma", files=2, per_file=20)
    code, err = cli(capsys, "tokenize", "--source", "all", "--role", "general", "--tokenizer", tokenizer,
                    "--stores", tmp_path / "st", "--input", snap / "data", "--input", ds,
                    "--input", root / "documents", "--test-fraction", "0.2")
    assert code == 0, err
    store = open_store(tmp_path / "st", "all")
    assert sum(store.n_docs(s) for s in store.splits) == 60 + 10 + 40
    ids = set(store.doc_ids("train") + store.doc_ids("val"))
    assert {"p0-0", "ds/data-00000-of-00001.arrow:9", "1-19"} <= ids


def test_text_files_flag_and_recipe_key(tmp_path, tokenizer, capsys):
    d = tmp_path / "notes"
    d.mkdir()
    for i in range(6):
        (d / f"{i}.md").write_text(text(i))
    code, err = cli(capsys, "tokenize", "--source", "n", "--role", "domain", "--tokenizer", tokenizer,
                    "--stores", tmp_path / "st", "--input", d)
    assert code == 2 and "6 files are not JSON lines, parquet or Arrow" in err and err.endswith(
        "or use --text-files to read every such file as one text document")
    code, err = cli(capsys, "tokenize", "--source", "n", "--role", "domain", "--tokenizer", tokenizer,
                    "--stores", tmp_path / "st", "--input", d, "--text-files", "--test-fraction", "0.3")
    assert code == 0, err
    store = open_store(tmp_path / "st", "n")
    assert sorted(sum((store.doc_ids(s) for s in ("train", "val", "test")), [])) == [f"{i}.md" for i in range(6)]
    recipe = tmp_path / "r.toml"
    body = f'[[source]]\nname = "r"\nrole = "domain"\ninputs = ["notes"]\ntokenizer = "{tokenizer}"\n'
    recipe.write_text(body)
    code, err = cli(capsys, "tokenize", "--recipe", recipe, "--stores", tmp_path / "st2")
    assert code == 2 and err.endswith(f"or use text_files = true (in {recipe}, source 'r') to read every such file "
                                      "as one text document")
    recipe.write_text(body + "text_files = true\ntest_fraction = 0.3\n")
    code, err = cli(capsys, "tokenize", "--recipe", recipe, "--stores", tmp_path / "st2")
    assert code == 0, err
    recipe.write_text(body + 'text_files = "yes"\n')
    code, err = cli(capsys, "tokenize", "--recipe", recipe, "--stores", tmp_path / "st2")
    assert (code, err) == (1, f"mixer: error: {recipe}: source 'r': text_files: 'yes' must be true or false")
    code, err = cli(capsys, "tokenize", "--recipe", recipe, "--text-key", "body", "--stores", tmp_path / "st2")
    assert code == 2 and err.startswith("mixer: error: --text-key: not with --recipe (it says what the source is")


def small_bpe(path: Path) -> Path:
    """A byte-level BPE trained here (GPT-2's pipeline, 300 tokens), saved where a recipe expects GPT-2's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([text(i) for i in range(200)], trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    path.parent.mkdir(parents=True)
    tok.save(str(path))
    return path


def test_shipped_dolma_recipe_end_to_end(tmp_path, capsys, monkeypatch):
    from tokenizers import Tokenizer

    root = dolma(tmp_path / "dolma", files=3, per_file=40)
    tok = small_bpe(tmp_path / "cache" / "tokenizers" / "gpt2" / "tokenizer.json")
    monkeypatch.setenv("MIXER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("DOLMA_DIR", str(root / "documents"))
    monkeypatch.setenv("DOLMA_VAL_TOKENS", "300")
    recipe = Path(__file__).resolve().parents[2] / "recipes" / "dolma.toml"
    code, err = cli(capsys, "tokenize", "--recipe", recipe, "--stores", tmp_path / "st")
    assert code == 0, err
    store = open_store(tmp_path / "st", "dolma")
    assert store.splits == ["train", "val"] and store.meta["split"]["test_tokens"] == 300
    assert 300 <= store.n_tokens("val") < 400 and store.meta["split"]["near_duplicates"] is False
    texts = {f"{k}-{i}": text(k * 40 + i) for k in range(3) for i in range(40)}
    encoder = Tokenizer.from_file(str(tok))
    for split in store.splits:
        for i, doc_id in enumerate(store.doc_ids(split)):
            assert list(store.document(split, i)) == encoder.encode(texts.pop(doc_id)).ids + [store.eos_id]
    assert not texts  # every document, once
    # the toolkit's root instead of its documents folder: attribute files hold no text
    monkeypatch.setenv("DOLMA_DIR", str(root))
    code, err = cli(capsys, "tokenize", "--recipe", recipe, "--stores", tmp_path / "st2")
    assert code == 1 and err.startswith(f"mixer: error: {root}/attributes/toxicity/synthetic-0000.json.gz:1: no key "
                                        "'text' (keys: id, attributes; set --text-key)")
    monkeypatch.setenv("DOLMA_VAL_TOKENS", "lots")
    code, err = cli(capsys, "tokenize", "--recipe", recipe, "--stores", tmp_path / "st2")
    assert (code, err) == (1, f"mixer: error: {recipe}: source 'dolma': test_tokens: cannot read 'lots' as a count "
                              "(use e.g. 200B, 1.5M, 300K)")
