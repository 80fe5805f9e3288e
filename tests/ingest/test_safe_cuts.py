"""Long documents encoded in pieces: the pieces' ids are exactly the whole document's."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from mixer.ingest import safe_cuts, tokenizer_step
from mixer.ingest.safe_cuts import KNOWN_PATTERNS, cuttable, pieces
from mixer.ingest.tokenizer_step import encode_with_eos

GPT2_PATTERN, CL100K_PATTERN, QWEN2_PATTERN = sorted(KNOWN_PATTERNS, key=len)[0], *sorted(
    (p for p in KNOWN_PATTERNS if p.startswith("(?i")), key=lambda p: "{1,3}" not in p)


def hard_text(seed: int, n: int = 4000) -> str:
    """Everything a cut could disturb: contractions, digit runs, punctuation before line
    breaks, runs of spaces and line breaks, CRLF, combining marks, CJK, ligatures."""
    rng = random.Random(seed)
    atoms = ["the", "don't", "it's", "we'll", "I'M", "x", "12345", "7", "3.14", "éé", "e\u0301", "ǰ", "İstanbul",
             "漢字", "ﬁne", "½", "²", "Straße", "ΣΑΣ", "!!", "...", "(a)", "<|endoftext|>", "--", "é\u0308"]
    seps = [" ", " ", " ", "\n", "  ", "\n\n", " \n", "\r\n", "\t", ".\n", ",\n", "\u00a0", "\u3000"]
    return "".join(rng.choice(atoms) + rng.choice(seps) for _ in range(n))


def train(pre_tokenizer, normalizer=None, model: str = "bpe"):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    corpus = [hard_text(s, 300) for s in range(20)]
    if model == "bpe":
        tok = Tokenizer(models.BPE())
        trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    else:
        tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
        trainer = trainers.WordLevelTrainer(special_tokens=["[UNK]", "<|endoftext|>"])
    tok.pre_tokenizer = pre_tokenizer
    tok.normalizer = normalizer
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainer)
    return tok


def tokenizers_to_check():
    from tokenizers import Regex, normalizers, pre_tokenizers

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    return {
        "gpt2-bytelevel": train(pre_tokenizers.ByteLevel(add_prefix_space=False)),
        "cl100k-split": train(pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(CL100K_PATTERN), behavior="isolated"), byte_level])),
        "qwen2-split": train(pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated"), byte_level])),
        "gpt2-split-nfkc-lower": train(pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(GPT2_PATTERN), behavior="isolated"), byte_level]),
            normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])),
        "whitespace-words": train(pre_tokenizers.Whitespace(), model="words"),
        "bert-pretokenizer": train(pre_tokenizers.BertPreTokenizer(), normalizers.NFD(), model="words"),
    }


@pytest.fixture(scope="module")
def trained():
    return tokenizers_to_check()


def ids(tok, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False).ids


def allowed_cuts(text: str) -> list[int]:
    return [m.start() for m in safe_cuts._SEPARATOR.finditer(text)
            if safe_cuts._plain(text[m.start() - 1]) and safe_cuts._plain(text[m.start() + 1])]


def test_every_allowed_cut_keeps_the_ids(trained):
    text = hard_text(99, 3000)
    cuts = allowed_cuts(text)
    assert len(cuts) > 250
    for name, tok in trained.items():
        assert cuttable(json.loads(tok.to_str())), name
        whole = ids(tok, text)
        for c in cuts:
            assert ids(tok, text[:c]) + ids(tok, text[c:]) == whole, (name, c, text[c - 10 : c + 10])


def test_the_cut_rule_is_needed(trained):
    """Cuts the rule refuses do change the ids, so the test above can fail."""
    for name, text, c in (
        ("gpt2-bytelevel", "x the", 2),  # after the space: ' the' loses its space
        ("gpt2-bytelevel", "the  the", 5),  # inside a run of spaces
        ("cl100k-split", "end.\nthe", 4),  # '.\n' is one pre-token
        ("cl100k-split", "12345 x", 2),  # digits go in threes from the start of the run
        ("qwen2-split", "the\n\nthe", 4),  # inside a run of line breaks
        ("gpt2-split-nfkc-lower", "e\u0301x", 1),  # before a combining mark
    ):
        tok = trained[name]
        assert ids(tok, text[:c]) + ids(tok, text[c:]) != ids(tok, text), (name, text)
        assert c not in allowed_cuts(text)  # and pieces() never cuts there (but where it must force one)


def test_pieces_cover_the_text_and_cut_only_at_separators():
    text = hard_text(5, 3000)
    got = list(pieces(text, 500))
    assert "".join(got) == text and len(got) > 10
    assert set(np.cumsum([len(p) for p in got])[:-1].tolist()) <= set(allowed_cuts(text))
    for p in got[1:]:
        assert p[0] in " \n" and p[1].isalnum()
    # nowhere to cut exactly: forced cuts every 200 characters (2 * size), no longer one piece
    assert list(pieces("x" * 5000, 100)) == ["x" * 200] * 25 and safe_cuts.forced_cuts("x" * 5000, 100) == 24
    assert list(pieces("x" * 150 + " y", 100)) == ["x" * 150, " y"] and safe_cuts.forced_cuts(text, 500) == 0
    mixed = "ab " * 100 + ";" * 1000 + " cd" * 100  # a run of punctuation: separators only around letters
    got = list(pieces(mixed, 100))
    assert "".join(got) == mixed and max(map(len, got)) <= 200 and safe_cuts.forced_cuts(mixed, 100) > 0


def test_every_piece_is_bounded_whatever_the_text():
    """A 100 MB word reached 6.9 GB and ran past 300 s encoded whole (issue 20)."""
    rng = random.Random(3)
    for text in ("a" * 10_000, "".join(rng.choice("ab;") for _ in range(10_000)), "x y" * 3000 + "z" * 7000,
                 "\n" * 5000, "é" * 3001):
        got = list(pieces(text, 256))
        assert "".join(got) == text and max(map(len, got)) <= 512


@pytest.mark.parametrize("name", ["gpt2-bytelevel", "cl100k-split", "whitespace-words"])
def test_encode_with_eos_in_pieces_equals_whole(trained, monkeypatch, name):
    tok = trained[name]
    texts = [hard_text(1, 2000), "short one", hard_text(2, 50), hard_text(3, 3000)]
    whole, whole_lengths = encode_with_eos(tok, texts, 1, np.dtype("<u2"), cuttable=False)
    monkeypatch.setattr(tokenizer_step, "BATCH_CHARS", 700)
    monkeypatch.setattr(safe_cuts, "PIECE", 300)
    cut, cut_lengths = encode_with_eos(tok, texts, 1, np.dtype("<u2"), cuttable=True)
    assert (cut == whole).all() and (cut_lengths == whole_lengths).all()
    assert whole_lengths[1] == len(ids(tok, "short one")) + 1 and cut[int(whole_lengths[0]) - 1] == 1


def test_pipelines_that_see_across_a_cut_are_encoded_whole():
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers

    def config(pre, normalizer=None, **extra):
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer, tok.normalizer = pre, normalizer
        for k, v in extra.items():
            getattr(tok, k)(**v)
        return json.loads(tok.to_str())

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    assert cuttable(config(byte_level))
    assert not cuttable(config(None))  # the whole text is one pre-token
    assert not cuttable(config(pre_tokenizers.ByteLevel(add_prefix_space=True)))
    assert not cuttable(config(pre_tokenizers.Metaspace()))
    assert not cuttable(config(pre_tokenizers.Split(Regex(r"\w+|\s+"), behavior="isolated")))
    assert not cuttable(config(pre_tokenizers.Split(Regex(CL100K_PATTERN), behavior="merged_with_next")))
    assert not cuttable(config(byte_level, normalizers.BertNormalizer()))  # line breaks become spaces
    assert not cuttable(config(byte_level, normalizers.Sequence([normalizers.Prepend("_"), normalizers.NFC()])))
    assert not cuttable(config(byte_level, enable_truncation={"max_length": 8}))
    assert not cuttable(config(byte_level) | {"added_tokens": [{"content": "<m>", "lstrip": True}]})
    assert not cuttable(config(byte_level) | {"added_tokens": [{"content": "a\nb"}]})


def english_like(size: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    words = ["".join(rng.choice("etaoinshrdlucmfwypvbgkqjxz") for _ in range(rng.randint(1, 9))) for _ in range(5000)]
    lines, n = [], 0
    while n < size:
        line = " ".join(rng.choice(words) for _ in range(12)) + rng.choice([".", ",", "!", "", " 1984", "'s"]) + "\n"
        lines.append(line)
        n += len(line)
    return "".join(lines)


@pytest.mark.slow
def test_gpt2_long_document_in_pieces_equals_whole(gpt2_tokenizer_path):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(gpt2_tokenizer_path))
    assert cuttable(json.loads(tok.to_str()))
    text = english_like(tokenizer_step.BATCH_CHARS + 1_000_000) + hard_text(7, 20000)
    assert len(list(pieces(text))) > 10
    out, lengths = encode_with_eos(tok, [text], 50256, np.dtype("<u2"), cuttable=True)
    assert out[:-1].tolist() == ids(tok, text) and out[-1] == 50256


@pytest.mark.slow
def test_a_50_mb_document_tokenizes_in_under_1_5_gb(tmp_path, gpt2_tokenizer_path):
    """The whole `mixer tokenize` process; encoded whole, this document took 7.7 GB."""
    import subprocess
    import sys

    text = english_like(50_000_000)
    with open(tmp_path / "big.jsonl", "w") as f:
        f.write(json.dumps({"text": text, "id": "big"}) + "\n")
        f.writelines(json.dumps({"text": f"small {i} " * (i + 1)}) + "\n" for i in range(40))
    del text
    # The child reports its own peak: VmHWM, not ru_maxrss, which Linux carries across exec
    # (a child forked from this pytest process would report pytest's size). The local
    # executor runs a single task in-process, so no grandchild escapes the measure.
    child = ("import sys\nfrom mixer.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n"
             "    assert not e.code, e.code\n"
             "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:')][0])")
    run = subprocess.run([sys.executable, "-c", child, "tokenize", "--source", "big", "--role", "general",
                          "--input", tmp_path / "big.jsonl", "--tokenizer", gpt2_tokenizer_path,
                          "--stores", tmp_path / "st", "--test-tokens", "100"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    peak = int(run.stdout.split()[-1]) * 1024
    assert peak < 1.5 * 2**30, f"peak RSS {peak / 2**30:.2f} GiB"
    index = np.fromfile(tmp_path / "st" / "big" / "train.ds.index", dtype="<u8")
    assert int(index[0]) > 10_000_000  # the big document, whole, first


@pytest.mark.slow
def test_a_12_mb_word_tokenizes_in_bounded_memory(tmp_path, gpt2_tokenizer_path):
    """One space-free word: no cut is exact, so it was encoded whole (a 100 MB one reached
    6.9 GB and ran past 300 s; this one took HF's run check alone ~1.8 GB). Now: pieces of
    at most 2 * PIECE characters with forced cuts, and the check re-encodes its first
    BATCH_CHARS only."""
    import subprocess
    import sys

    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    data.mkdir()
    (data / "word.txt").write_bytes((rng.integers(0, 26, 12_000_000, dtype=np.uint8) + ord("a")).tobytes())
    for i in range(30):
        (data / f"small-{i:02d}.txt").write_text(f"a small document {i} " * (i + 1))
    child = ("import sys\nfrom mixer.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n"
             "    assert not e.code, e.code\n"
             "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:')][0])")
    run = subprocess.run([sys.executable, "-c", child, "tokenize", "--source", "w", "--role", "general",
                          "--input", data, "--tokenizer", gpt2_tokenizer_path, "--stores", tmp_path / "st",
                          "--test-tokens", "50"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    peak = int(run.stdout.split()[-1]) * 1024
    assert peak < 2**30, f"peak RSS {peak / 2**30:.2f} GiB"
    assert "forced cuts" in run.stderr
    from mixer.formats.store import open_store

    store = open_store(tmp_path / "st", "w")
    k = store.doc_ids("train").index("word.txt")
    assert store.document("train", k)[-1] == 50256 and len(store.document("train", k)) > 6_000_000
