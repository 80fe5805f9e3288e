"""The tiktoken backend gives HF tokenizers' ids exactly, or is not chosen.

Tokenizers here are trained in memory by `tokenizers` (byte-level BPE: GPT-2's layout)
or derived from one (Llama-3's layout: Split regex + ByteLevel, every split of a token
listed as a merge, ignore_merges; ids that do not follow merge order; hand-made merge
lists tiktoken cannot express). The slow tests use GPT-2 and the real sample corpora.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import numpy as np
import pytest

from mixer.cli import main
from mixer.formats.store import open_store
from mixer.ingest.tiktoken_backend import (
    BYTE_OF,
    GPT2_PATTERN,
    LLAMA3_PATTERN,
    NotExpressible,
    TiktokenEncoder,
    choose_backend,
    load_spec,
    tiktoken_spec,
    token_bytes,
)
from mixer.ingest.tokenizer_step import CHECK_EVERY, check_mask

# ---------------------------------------------------------------- text that stresses both paths

WHITESPACE = [" ", "  ", "\t", "\n", "\r\n", "\n\n\n", " \n ", "\r", "\x0b", "\x0c", "\x85", "\xa0", "\u1680", "\u2000",
              "\u2003", "\u2009", "\u200a", "\u2028", "\u2029", "\u202f", "\u205f", "\u3000", "\u200b", "\ufeff", "\u180e"]
DIGITS = "0123456789٠١٢٣٤٥٦٧٨٩०१२३४५६७८९০১২৩৪৫๐๑๒๓①②③¼½¾²³ⅫⅦ𝟎𝟏𝟐🄁"
EMOJI = ["🙂", "👍🏽", "👨‍👩‍👧‍👦", "🇫🇷", "🇯🇵", "❤️", "🏳️‍🌈", "🤷‍♀️", "☕", "🧑🏿‍🚀", "#️⃣", "\U0001fae8"]
COMBINING = "\u0301\u0300\u0308\u0327\u20dd\u0489\u036f\u0325\u1ab0\u1dc0\ufe0f\u200d\u200c"
SCRIPTS = ["Ελληνικά", "Русский язык", "עִבְרִית", "العربية", "हिन्दी", "中文字符", "日本語のテキスト", "한국어", "ไทย",
           "ქართული", "አማርኛ", "ᚠᛇᚻ", "𐌰𐌱𐌲", "ꦗꦮ", "Tiếng Việt", "İstanbul ıi", "straße ẞ", "ǅǈǋ", "ﬁﬂ", "ｆｕｌｌ", "𝔘𝔫𝔦"]
APOSTROPHES = ["'s", "'S", "'t", "'T", "'re", "'RE", "'Re", "'ve", "'VE", "'m", "'M", "'ll", "'LL", "'d", "'D", "'ſ",
               "'\u212a", "’s", "''", "'"]
SPECIALS = ["<|endoftext|>", "<|endoftext", "endoftext|>", "<|", "|>", "<|end_of_text|>", "<|begin_of_text|>"]
WORDS = ["the", "of", "and", "to", "in", "tokenizer", "Tokenization", "HELLO", "don't", "it's", "naïve", "café",
         "def", "return", "self.x", "x[i]", "a+b=c", "foo_bar", "camelCase", "https://example.com/a?b=c", "$1,234.56"]


def _random_char(rng: random.Random) -> str:
    while True:
        c = rng.randrange(0x110000) if rng.random() < 0.5 else rng.randrange(0x3000)
        if not 0xD800 <= c < 0xE000:  # lone surrogates cannot reach a tokenizer (readers reject them)
            return chr(c)


def fuzz_texts(seed: int, n: int) -> list[str]:
    """Documents of random Unicode, whitespace runs, digits, emoji, combining marks, mixed scripts."""
    rng = random.Random(seed)
    makers = [
        lambda: rng.choice(WHITESPACE) * rng.choice([1, 1, 2, 3, 7, 40]),
        lambda: "".join(rng.choice(DIGITS) for _ in range(rng.randint(1, 12))),
        lambda: rng.choice(EMOJI) * rng.randint(1, 3),
        lambda: rng.choice("aeiouAEO ǅ") + "".join(rng.choice(COMBINING) for _ in range(rng.randint(1, 5))),
        lambda: rng.choice(SCRIPTS),
        lambda: rng.choice(APOSTROPHES),
        lambda: rng.choice(SPECIALS),
        lambda: rng.choice(WORDS),
        lambda: "".join(_random_char(rng) for _ in range(rng.randint(1, 6))),
        lambda: "".join(rng.choice("!\"#$%&()*+,-./:;<=>?@[\\]^_`{|}~") for _ in range(rng.randint(1, 5))),
        lambda: rng.choice("aZ9 .\n-") * rng.randint(50, 400),  # long runs of one class
    ]
    return ["".join(rng.choice(makers)() for _ in range(rng.randint(1, 80))) for _ in range(n)]


def code_point_texts(stride: int = 1) -> list[str]:
    """Every (stride-th) code point, in contexts where each regex alternative can start or end on it."""
    cps = [chr(c) for c in range(0, 0x110000, stride) if not 0xD800 <= c < 0xE000]
    return ["".join(f"x{c}y {c}{c} 1{c}2 {c}\n\n{c}'s {c} " for c in cps[i:i + 64]) for i in range(0, len(cps), 64)]


# ---------------------------------------------------------------- tokenizers built here


def train_byte_level(folder: Path, vocab_size: int = 3000) -> Path:
    """A GPT-2-layout byte-level BPE (`<|endoftext|>` = 0) trained by `tokenizers` on fuzz text."""
    from tokenizers import ByteLevelBPETokenizer

    tok = ByteLevelBPETokenizer()
    texts = fuzz_texts(0, 300) + [" ".join(random.Random(i).choices(WORDS, k=200)) for i in range(50)]
    tok.train_from_iterator(texts, vocab_size=vocab_size, special_tokens=["<|endoftext|>"], show_progress=False)
    path = folder / "bytelevel" / "tokenizer.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))
    return path


def save(data: dict, path: Path) -> Path:
    from tokenizers import Tokenizer

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    Tokenizer.from_file(str(path))  # HF must accept what the test built
    return path


def llama3_style(byte_level: Path, out: Path) -> Path:
    """The byte-level tokenizer in Llama-3's layout, as transformers converts a tiktoken file:
    Split(Llama-3 regex) + ByteLevel(use_regex=false), ignore_merges, and for each token
    (in rank order) every split into two tokens listed as a merge; specials after the vocabulary."""
    data = json.loads(byte_level.read_text(encoding="utf-8"))
    model = data["model"]
    rank = {token_bytes(k): i for k, i in model["vocab"].items() if k != "<|endoftext|>"}
    vocab, merges = {}, []
    for i, (b, _) in enumerate(sorted(rank.items(), key=lambda kv: kv[1])):
        vocab[_chars(b)] = i
        local = [(b[:k], b[k:]) for k in range(1, len(b)) if b[:k] in rank and b[k:] in rank]
        merges += [[_chars(x), _chars(y)] for x, y in sorted(local, key=lambda p: (rank[p[0]], rank[p[1]]))]
    specials = ["<|begin_of_text|>", "<|end_of_text|>"] + [f"<|reserved_special_token_{k}|>" for k in range(12)]
    data["added_tokens"] = [{"id": len(vocab) + k, "content": c, "single_word": False, "lstrip": False, "rstrip": False,
                             "normalized": False, "special": True} for k, c in enumerate(specials)]
    data["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": LLAMA3_PATTERN}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}
    data["model"] = model | {"vocab": vocab, "merges": merges, "ignore_merges": True}
    return save(data, out)


_CHAR_OF = {b: c for c, b in BYTE_OF.items()}


def _chars(b: bytes) -> str:
    return "".join(_CHAR_OF[x] for x in b)


def permuted_ids(byte_level: Path, out: Path) -> Path:
    """The same tokenizer with the ids of merged tokens reversed: ids no longer follow merge order."""
    data = json.loads(byte_level.read_text(encoding="utf-8"))
    vocab = data["model"]["vocab"]
    merged = sorted((i for k, i in vocab.items() if len(k) > 1 and k != "<|endoftext|>"))
    flip = dict(zip(merged, reversed(merged)))
    data["model"]["vocab"] = {k: flip.get(i, i) for k, i in vocab.items()}
    return save(data, out)


def toy(out: Path, merges: list[list[str]], ignore_merges: bool = False, added: list[dict] | None = None,
        ids: dict[str, int] | None = None) -> Path:
    """A byte-level BPE over the 256 bytes plus the given merges (GPT-2 pre-tokenizer)."""
    vocab = {c: b for c, b in BYTE_OF.items()}
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    vocab.update(ids or {})
    data = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added or [], "normalizer": None,
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
            "post_processor": None, "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                                                "use_regex": True},
            "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                      "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                      "ignore_merges": ignore_merges, "vocab": vocab, "merges": merges}}
    return save(data, out)


@pytest.fixture(scope="module")
def byte_level(tmp_path_factory) -> Path:
    return train_byte_level(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def llama3(byte_level, tmp_path_factory) -> Path:
    return llama3_style(byte_level, tmp_path_factory.mktemp("tok") / "llama3" / "tokenizer.json")


@pytest.fixture(scope="module")
def permuted(byte_level, tmp_path_factory) -> Path:
    return permuted_ids(byte_level, tmp_path_factory.mktemp("tok") / "permuted" / "tokenizer.json")


def hf_ids(path: Path, texts: list[str]) -> list[list[int]]:
    from tokenizers import Tokenizer

    return [e.ids for e in Tokenizer.from_file(str(path)).encode_batch_fast(texts, add_special_tokens=False)]


def tiktoken_ids(path: Path, texts: list[str]) -> list[list[int]]:
    return [a.tolist() for a in TiktokenEncoder(load_spec(path), threads=2).encode(texts)]


def assert_same(path: Path, texts: list[str]) -> None:
    want, got = hf_ids(path, texts), tiktoken_ids(path, texts)
    bad = [i for i, (w, g) in enumerate(zip(want, got)) if w != g]
    assert len(want) == len(got) == len(texts)
    assert not bad, f"{len(bad)} of {len(texts)} differ, first: {texts[bad[0]]!r}: HF {want[bad[0]]} tiktoken {got[bad[0]]}"


# ---------------------------------------------------------------- identity


@pytest.mark.parametrize("which", ["byte_level", "llama3", "permuted"])
def test_fuzz_corpus_gives_hf_ids(which, request):
    path = request.getfixturevalue(which)
    texts = fuzz_texts(1, 1500)
    assert_same(path, texts)
    # the fuzz holds special tokens and plenty of text: not a vacuous comparison
    ids = hf_ids(path, texts)
    specials = {t["id"] for t in json.loads(path.read_text(encoding="utf-8"))["added_tokens"]}
    assert sum(bool(specials & set(x)) for x in ids) > 50 and sum(map(len, ids)) > 100_000


def test_layouts_take_the_paths_they_should(byte_level, llama3, permuted):
    spec = load_spec(byte_level)
    assert spec.pattern == GPT2_PATTERN and spec.to_hf is None and spec.special_tokens == {"<|endoftext|>": 0}
    spec = load_spec(llama3)
    assert spec.pattern == LLAMA3_PATTERN and spec.to_hf is None and len(spec.special_tokens) == 14
    data = json.loads(llama3.read_text(encoding="utf-8"))["model"]
    assert len(data["merges"]) > len(data["vocab"]) - 256  # several merges make one token
    spec = load_spec(permuted)
    assert spec.to_hf is not None  # ids remapped back to HF's
    for path, name in ((byte_level, "GPT-2"), (llama3, "Llama-3")):
        choice = choose_backend(path, "auto")
        assert choice.backend == "tiktoken" and name in choice.reason


def test_literal_special_tokens_in_text_are_special_in_both(byte_level, llama3):
    text = "a<|endoftext|>b <|endoftext|><|endoftext|>\n<|endoftext"
    assert hf_ids(byte_level, [text]) == tiktoken_ids(byte_level, [text])
    assert tiktoken_ids(byte_level, [text])[0].count(0) == 3
    text = "<|begin_of_text|>x<|reserved_special_token_1|><|reserved_special_token_10|>y<|end_of_text|>"
    ids = tiktoken_ids(llama3, [text])[0]
    assert ids == hf_ids(llama3, [text])[0] and len(ids) == 6


def test_every_code_point_splits_the_same(byte_level, llama3):
    # both verified patterns around Unicode code points (every 17th here; all of them in the slow test)
    texts = code_point_texts(stride=17)
    assert_same(byte_level, texts)
    assert_same(llama3, texts)


def test_empty_and_whitespace_only_batches(byte_level):
    assert tiktoken_ids(byte_level, []) == []
    assert tiktoken_ids(byte_level, ["", " ", "\n"]) == hf_ids(byte_level, ["", " ", "\n"])


# ---------------------------------------------------------------- what is refused


def _edited(path: Path, out: Path, edit) -> Path:
    data = json.loads(path.read_text(encoding="utf-8"))
    edit(data)
    return save(data, out)


REFUSED = {
    "normalizer NFKC": lambda d: d.update(normalizer={"type": "NFKC"}),
    "add_prefix_space": lambda d: d["pre_tokenizer"].update(add_prefix_space=True),
    "not byte-level": lambda d: d.update(pre_tokenizer={"type": "Whitespace"}),
    "Split regex not among": lambda d: d.update(pre_tokenizer={"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": r"\w+"}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}),
    "two splitting passes": lambda d: d.update(pre_tokenizer={"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": LLAMA3_PATTERN}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]}),
    "lstrip": lambda d: d["added_tokens"][0].update(lstrip=True),
    "truncation": lambda d: d.update(truncation={"direction": "Right", "max_length": 8, "strategy": "LongestFirst",
                                                 "stride": 0}),
    "dropout": lambda d: d["model"].update(dropout=0.1),
    "prefix of": lambda d: d["added_tokens"].append({"id": len(d["model"]["vocab"]), "content": "<|endoftext|>x", "single_word": False,
                                                     "lstrip": False, "rstrip": False, "normalized": False,
                                                     "special": True}),
}


@pytest.mark.parametrize("reason", list(REFUSED))
def test_features_tiktoken_cannot_reproduce_fall_back_to_hf(reason, byte_level, tmp_path):
    path = _edited(byte_level, tmp_path / "t" / "tokenizer.json", REFUSED[reason])
    with pytest.raises(NotExpressible, match=reason):
        load_spec(path)
    choice = choose_backend(path, "auto")
    assert choice.backend == "hf" and reason in choice.reason


def test_wordpiece_falls_back(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(WORDS * 3, trainers.WordPieceTrainer(vocab_size=200, special_tokens=["[UNK]", "[SEP]"]))
    tok.save(str(tmp_path / "wp.json"))
    choice = choose_backend(tmp_path / "wp.json", "auto")
    assert choice.backend == "hf" and "WordPiece" in choice.reason


def test_merge_lists_tiktoken_reads_differently_are_refused(tmp_path):
    # "abc" made from (a, bc) while HF's merges turn "abc" into [ab, c]: a word "abc" would be
    # [abc] in tiktoken (the whole word is a token), [ab, c] in HF
    path = toy(tmp_path / "a.json", [["a", "b"], ["b", "c"], ["a", "bc"]])
    assert hf_ids(path, ["abc"])[0] != [json.loads(path.read_text())["model"]["vocab"]["abc"]]
    with pytest.raises(NotExpressible, match="not what HF's merges make"):
        load_spec(path)
    # ignore_merges makes the word "abc" the same, not "xabcx": HF [x, ab, c, x], tiktoken [x, abc, x]
    path = toy(tmp_path / "b.json", [["a", "b"], ["b", "c"], ["a", "bc"]], ignore_merges=True)
    assert len(hf_ids(path, ["xabcx"])[0]) == 4
    with pytest.raises(NotExpressible, match="not every split of it is a merge"):
        load_spec(path)
    # with every split of "abc" a merge (tiktoken's converted layout) the two agree
    path = toy(tmp_path / "e.json", [["a", "b"], ["b", "c"], ["a", "bc"], ["ab", "c"]], ignore_merges=True)
    load_spec(path)
    assert_same(path, ["abc", "xabcx abc ab bc abcabc", "aabbcc", "bcabc"])
    # one token from two merges that are not adjacent in the list: priorities cannot agree
    path = toy(tmp_path / "c.json", [["a", "b"], ["b", "c"], ["a", "bc"], ["c", "d"], ["ab", "c"]])
    with pytest.raises(NotExpressible, match="not adjacent"):
        load_spec(path)
    # a multi-byte token no merge makes: tiktoken would build it, HF never
    path = toy(tmp_path / "d.json", [["a", "b"]], ids={"xyz": 300})
    with pytest.raises(NotExpressible, match="made by no merge"):
        load_spec(path)


def test_explicit_tiktoken_on_an_inexpressible_tokenizer_is_one_line(byte_level, tmp_path, capsys):
    path = _edited(byte_level, tmp_path / "n" / "tokenizer.json", REFUSED["normalizer NFKC"])
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in fuzz_texts(2, 20)))
    with pytest.raises(SystemExit) as e:
        main(["tokenize", "--source", "x", "--role", "domain", "--input", str(data), "--tokenizer", str(path),
              "--stores", str(tmp_path / "st"), "--tokenizer-backend", "tiktoken"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and err[-1].startswith("mixer: error: --tokenizer-backend tiktoken: ")
    assert "normalizer NFKC" in err[-1] and not (tmp_path / "st" / "x").exists()


# ---------------------------------------------------------------- the store and the run check


def test_check_sample_is_seeded_by_text_hash_and_about_one_in_check_every():
    hashes = np.random.default_rng(0).integers(0, 2**63, 200_000, dtype=np.int64).astype(np.uint64)
    pick = check_mask(hashes, 0)
    assert abs(pick.mean() - 1 / CHECK_EVERY) < 0.2 / CHECK_EVERY
    assert np.array_equal(np.concatenate([check_mask(hashes[:777], 0), check_mask(hashes[777:], 0)]), pick)
    first = check_mask(hashes[:100], 10)
    assert first[:10].all() and np.array_equal(first[10:], pick[10:100])


def corpus(folder: Path, n_files: int = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    texts = fuzz_texts(5, 90 * n_files)
    texts[3] = "a document holding <|endoftext|> literally, and <|end_of_text|>"
    for k in range(n_files):
        rows = [{"text": t, "id": f"{k}-{i}"} for i, t in enumerate(texts[k::n_files]) if t.strip()]
        (folder / f"part{k}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return folder


def run_cli(capsys, *argv) -> tuple[int, str]:
    """(exit code, the last stderr line); stdout is kept in run_cli.out."""
    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    captured = capsys.readouterr()
    run_cli.out = captured.out
    return code, captured.err.strip().splitlines()[-1] if captured.err.strip() else ""


@pytest.mark.parametrize("which", ["byte_level", "llama3"])
def test_stores_are_byte_identical_whichever_backend_and_task_count(which, request, tmp_path, capsys):
    tok = request.getfixturevalue(which)
    data = corpus(tmp_path / "data")
    runs = [("hf", 1), ("auto", 1), ("tiktoken", 2), ("hf", 2)]
    for backend, tasks in runs:
        code, err = run_cli(capsys, "tokenize", "--source", "d", "--role", "domain", "--input", data, "--tokenizer", tok,
                            "--stores", tmp_path / f"{backend}{tasks}", "--tokenizer-backend", backend, "--tasks",
                            tasks, "--workers", 1, "--test-fraction", 0.2)
        assert code == 0, err
        used = "hf" if backend == "hf" else "tiktoken"
        assert f"tokenizer backend: {used} (" in run_cli.out  # the choice is printed, with its reason
    ref = tmp_path / "hf1" / "d"
    names = sorted(p.name for p in ref.iterdir())
    assert {"train.ds", "test.ds", "train.ids", "near_duplicates.jsonl"} <= set(names)
    for backend, tasks in runs[1:]:
        other = tmp_path / f"{backend}{tasks}" / "d"
        assert sorted(p.name for p in other.iterdir()) == names
        for name in names:
            if name != "store.json":
                assert (ref / name).read_bytes() == (other / name).read_bytes(), (backend, tasks, name)
        a, b = (json.loads((d / "store.json").read_text()) for d in (ref, other))
        assert a.pop("tokenizer_backend")["used"] == "hf"
        used = b.pop("tokenizer_backend")
        for meta in (a, b):  # the description's own checksum covers the backend record too
            meta["checksums"].pop("meta_xxh3_128")
        assert a == b  # store.json differs only in the backend record
        assert used["used"] == ("hf" if backend == "hf" else "tiktoken") and used["requested"] == backend
        if used["used"] == "tiktoken":
            assert used["checked_documents"] >= min(CHECK_EVERY // 2, open_store(tmp_path / f"{backend}{tasks}", "d")
                                                    .n_docs("train")) and used["checked_tokens"] > 0
    # the literal special token became the special id, in every store alike
    store = open_store(tmp_path / "hf1", "d")
    where = {i: (s, k) for s in store.splits for k, i in enumerate(store.doc_ids(s))}
    split, k = where["0-1"]
    doc = store.document(split, k)
    assert (doc[:-1] == store.eos_id).sum() == 1


def test_a_difference_found_by_the_run_check_stops_with_one_line(byte_level, tmp_path, capsys, monkeypatch):
    data = corpus(tmp_path / "data", n_files=1)
    real = TiktokenEncoder.encode

    def off_by_one(self, texts):  # a tiktoken that differs from HF on documents with a "0" in them
        out = real(self, texts)
        return [a + 1 if "0" in t and len(a) else a for a, t in zip(out, texts)]

    real_joined = TiktokenEncoder.encode_with_eos

    def joined_off_by_one(self, texts, dtype):  # the same difference on the joined path
        out = real_joined(self, texts, dtype)
        if out is not None:
            tokens, lengths = out
            ends = np.cumsum(lengths) - 1
            for t, end, n in zip(texts, ends, lengths):
                if "0" in t and n > 1:
                    tokens[end - n + 1 : end] += 1
        return out

    monkeypatch.setattr(TiktokenEncoder, "encode", off_by_one)
    monkeypatch.setattr(TiktokenEncoder, "encode_with_eos", joined_off_by_one)
    stores = tmp_path / "st"
    code, err = run_cli(capsys, "tokenize", "--source", "d", "--role", "domain", "--input", data, "--tokenizer",
                        byte_level, "--stores", stores)
    assert code == 1
    assert err.startswith("mixer: error: --tokenizer ") and "tiktoken and HF tokenizers give different ids" in err
    assert "--tokenizer-backend hf" in err and not (stores / "d").exists() and not (stores / ".work" / "d").exists()
    # the re-run the message asks for works, and HF's store is the one tiktoken would have written
    code, err = run_cli(capsys, "tokenize", "--source", "d", "--role", "domain", "--input", data, "--tokenizer",
                        byte_level, "--stores", stores, "--tokenizer-backend", "hf")
    assert code == 0, err
    assert open_store(stores, "d").meta["tokenizer_backend"]["used"] == "hf"


# ---------------------------------------------------------------- GPT-2 and the real corpora (slow)


@pytest.mark.slow
def test_gpt2_every_code_point_and_fuzz(gpt2_tokenizer_path, tmp_path):
    assert choose_backend(gpt2_tokenizer_path, "auto").backend == "tiktoken"
    assert_same(gpt2_tokenizer_path, code_point_texts(stride=1))
    assert_same(gpt2_tokenizer_path, fuzz_texts(7, 3000))
    llama = llama3_style(gpt2_tokenizer_path, tmp_path / "gpt2-llama3" / "tokenizer.json")
    assert_same(llama, fuzz_texts(8, 2000))
    assert_same(llama, code_point_texts(stride=1))


@pytest.mark.slow
def test_gpt2_every_document_of_the_sample_corpora(sample_cache, tmp_path):
    from mixer.demo_corpora.fetch import NAMES

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from storeutil import read_docs

    tok = sample_cache / "tokenizers" / "gpt2" / "tokenizer.json"
    llama = llama3_style(tok, tmp_path / "gpt2-llama3" / "tokenizer.json")
    corpora = [n for n in NAMES if (sample_cache / "samples" / f"{n}.jsonl.zst").exists()]
    assert len(corpora) >= 4
    for name in corpora:
        texts = [t for _, t in read_docs(sample_cache, name)]
        assert_same(tok, texts)
        assert_same(llama, texts[:1000])


def test_a_rewritten_tokenizer_file_is_read_again(byte_level, tmp_path):
    path = tmp_path / "same" / "tokenizer.json"
    path.parent.mkdir()
    path.write_bytes(byte_level.read_bytes())
    assert load_spec(path) is load_spec(path)  # one translation per process while the file is unchanged
    _edited(byte_level, path, REFUSED["normalizer NFKC"])
    with pytest.raises(NotExpressible, match="normalizer"):
        load_spec(path)


def test_run_options_reject_an_unknown_backend():
    from mixer.errors import UsageError
    from mixer.ingest.tokenize import RunOptions

    with pytest.raises(UsageError, match="--tokenizer-backend fast: use auto, hf or tiktoken"):
        RunOptions(tokenizer_backend="fast").validate()
    with pytest.raises(UsageError, match="--tokenizer-backend fast"):
        choose_backend("unused.json", "fast")


# ---------------------------------------------------------------- joined encoding


def _eos_id(path: Path, content: str) -> int:
    return next(t["id"] for t in json.loads(path.read_text(encoding="utf-8"))["added_tokens"] if t["content"] == content)


@pytest.mark.parametrize("which,eos", [("byte_level", "<|endoftext|>"), ("llama3", "<|end_of_text|>"),
                                       ("permuted", "<|endoftext|>")])
def test_joined_encoding_is_each_text_then_eos(which, eos, request):
    """A batch encoded as one string per thread gives every text's own ids, EOS after each;
    texts that end or start with a piece of a special token included (they must not join
    their neighbour's separator into one)."""
    from mixer.ingest.tokenizer_step import join_with_eos

    path = request.getfixturevalue(which)
    specials = [t["content"] for t in json.loads(path.read_text(encoding="utf-8"))["added_tokens"]]
    texts = [t for t in fuzz_texts(3, 1500) if not any(s in t for s in specials)]
    rng = random.Random(5)
    edges = ["<|endoftext", "<|", "<", "|>", "endoftext|>", "<|end_of_text", "_of_text|>", " ", "\n", "'s", "x"]
    texts += [rng.choice(edges) + t + rng.choice(edges) for t in texts[:300]] + ["", " ", "\n\n"]
    texts = [t for t in texts if not any(s in t for s in specials)]
    assert len(texts) > 800 and sum(t.endswith("<|") for t in texts) > 5
    eos_id = _eos_id(path, eos)
    enc = TiktokenEncoder(load_spec(path), threads=2, eos_id=eos_id)
    for dtype in (np.dtype("<u2"), np.dtype("<u4")):
        got = enc.encode_with_eos(texts, dtype)
        assert got is not None
        want = join_with_eos(hf_ids(path, texts), eos_id, dtype)
        assert got[0].dtype == dtype and np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])


def test_joined_encoding_declines_what_it_cannot_prove(byte_level, llama3):
    """A literal special token in a text (its EOS could not be told from a separator), an EOS
    that is not an added token: None, and the caller encodes text by text."""
    enc = TiktokenEncoder(load_spec(byte_level), threads=2, eos_id=_eos_id(byte_level, "<|endoftext|>"))
    assert enc.encode_with_eos(["a b", "c <|endoftext|> d"], np.dtype("<u2")) is None
    assert enc.encode_with_eos(["a b", "c d"], np.dtype("<u2")) is not None
    llama = TiktokenEncoder(load_spec(llama3), threads=2, eos_id=_eos_id(llama3, "<|end_of_text|>"))
    assert llama.encode_with_eos(["a", "b <|reserved_special_token_3|>"], np.dtype("<u2")) is None
    assert TiktokenEncoder(load_spec(byte_level), threads=2, eos_id=7).encode_with_eos(["a"], np.dtype("<u2")) is None
    assert TiktokenEncoder(load_spec(byte_level), threads=2).encode_with_eos(["a"], np.dtype("<u2")) is None


def test_encoding_threads_start_once_per_process(byte_level, monkeypatch):
    """Threads were started for every batch (17% of a loaded run on short documents)."""
    import threading

    started = []
    real = threading.Thread.start

    def counting(self):
        started.append(self.name)
        return real(self)

    enc = TiktokenEncoder(load_spec(byte_level), threads=3, eos_id=0)
    texts = fuzz_texts(4, 40)
    enc.encode(texts), enc.encode_with_eos(["a b c"] * 50, np.dtype("<u2"))  # the pool may start here
    monkeypatch.setattr(threading.Thread, "start", counting)
    for _ in range(5):
        enc.encode(texts)
        enc.encode_with_eos(["a b c"] * 50, np.dtype("<u2"))
    assert started == []
