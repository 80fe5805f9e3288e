"""Jensen-Shannon divergence of hashed n-grams: known answers on hand-made token stores."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from mixer.cli import main
from mixer.errors import MixerError
from mixer.checks.similarity import BINS, jsd_bits, ngram_histogram, sample_tokens, similarity
from mixer.formats.store import open_store

EOS = 0


def write_store(root: Path, name: str, docs: list[list[int]], sha: str = "tok") -> Path:
    """A domain store whose train split holds `docs` (EOS appended to each)."""
    d = root / name
    d.mkdir(parents=True)
    toks = np.concatenate([np.array(doc + [EOS], dtype="<u2") for doc in docs])
    ends = np.cumsum([len(doc) + 1 for doc in docs]).astype("<u8")
    for split in ("train", "test"):
        toks.tofile(d / f"{split}.ds")
        ends.tofile(d / f"{split}.ds.index")
        (d / f"{split}.ids").write_text("".join(f"{i}\n" for i in range(len(docs))))
    meta = {"format": "mixer-store/1", "source": name, "role": "domain",
            "tokenizer": {"name": "t", "sha256": sha, "vocab_size": 60000, "eos_id": EOS}, "dtype": "<u2",
            "splits": {s: {"documents": len(docs), "tokens": int(ends[-1])} for s in ("train", "test")}}
    (d / "store.json").write_text(json.dumps(meta))
    return d


def random_docs(rng, n, lo, hi):
    return [list(rng.integers(lo, hi, rng.integers(5, 60))) for _ in range(n)]


def test_identical_inputs_have_zero_divergence(tmp_path):
    docs = random_docs(np.random.default_rng(0), 300, 1, 500)
    a, b = write_store(tmp_path, "a", docs), write_store(tmp_path, "b", docs)
    # The whole split on both sides (in different document orders): the same n-gram multiset.
    r = similarity(open_store(tmp_path, "a"), open_store(tmp_path, "b"), n_tokens=10**9)
    assert r["jsd_bits"] == {"1-gram": pytest.approx(0, abs=1e-12), "2-gram": pytest.approx(0, abs=1e-12),
                             "3-gram": pytest.approx(0, abs=1e-12)}
    assert a != b and r["a"]["tokens"] == r["b"]["tokens"]


def test_disjoint_vocabularies_are_one_bit_apart(tmp_path):
    rng = np.random.default_rng(1)
    write_store(tmp_path, "a", random_docs(rng, 200, 1, 1000))
    write_store(tmp_path, "b", random_docs(rng, 200, 1000, 2000))
    r = similarity(open_store(tmp_path, "a"), open_store(tmp_path, "b"), n_tokens=10**9)
    # EOS is shared (it is one token of ~30), so the unigram JSD is just under 1 bit.
    r_eos = r["jsd_bits"]["1-gram"]
    assert 0.9 < r_eos < 1.0
    # Without the shared EOS: exactly 1 bit for unigrams (one bin per token id); hashed
    # bigrams/trigrams lose a little to collisions: ~6k distinct n-grams a side in 2^20 bins
    # share ~6k * 6k / 2^20 = 35 bins, about 0.6% of the mass.
    for n in (1, 2, 3):
        ta, da = sample_tokens(open_store(tmp_path, "a"), "train", 10**9, 0)
        tb, db = sample_tokens(open_store(tmp_path, "b"), "train", 10**9, 0)
        keep_a, keep_b = ta != EOS, tb != EOS
        ha = ngram_histogram(ta[keep_a], da[keep_a], n, 60000)
        hb = ngram_histogram(tb[keep_b], db[keep_b], n, 60000)
        assert jsd_bits(ha, hb) == pytest.approx(1.0, abs=1e-2 if n > 1 else 1e-12)


def test_jsd_of_hand_made_distributions():
    p, q = np.array([1, 1, 0, 0]), np.array([0, 1, 1, 0])
    # M = (1/4, 1/2, 1/4); KL(P||M) = 1/2 log2 2 + 1/2 log2 1 = 0.5 bit each.
    assert jsd_bits(p, q) == pytest.approx(0.5)
    assert jsd_bits(np.array([3, 1]), np.array([6, 2])) == pytest.approx(0.0)


def test_ngrams_do_not_cross_document_boundaries():
    tokens = np.array([5, 6, EOS, 7, 8, EOS])
    doc = np.array([0, 0, 0, 1, 1, 1])
    assert ngram_histogram(tokens, doc, 1, 100).sum() == 6
    assert ngram_histogram(tokens, doc, 2, 100).sum() == 4  # 5-6, 6-EOS, 7-8, 8-EOS; not EOS-7
    assert ngram_histogram(tokens, doc, 3, 100).sum() == 2
    assert len(ngram_histogram(tokens, doc, 2, 100)) == BINS


def test_sample_is_seeded_and_exact_in_size(tmp_path):
    write_store(tmp_path, "a", random_docs(np.random.default_rng(2), 400, 1, 500))
    s = open_store(tmp_path, "a")
    t1, d1 = sample_tokens(s, "train", 5000, seed=3)
    t2, _ = sample_tokens(s, "train", 5000, seed=3)
    t3, _ = sample_tokens(s, "train", 5000, seed=4)
    assert len(t1) == 5000 and np.array_equal(t1, t2) and not np.array_equal(t1, t3)
    # Whole documents, in order: every document but the last sampled one ends with EOS.
    ends = np.nonzero(np.diff(d1))[0]
    assert (t1[ends] == EOS).all()


def test_different_tokenizers_are_refused(tmp_path):
    write_store(tmp_path, "a", [[1, 2, 3]])
    write_store(tmp_path, "b", [[1, 2, 3]], sha="other")
    with pytest.raises(MixerError, match="re-tokenize"):
        similarity(open_store(tmp_path, "a"), open_store(tmp_path, "b"))


def test_cli_json_and_missing_store(tmp_path, capsys):
    rng = np.random.default_rng(5)
    write_store(tmp_path, "a", random_docs(rng, 50, 1, 300))
    write_store(tmp_path, "b", random_docs(rng, 50, 1, 300))
    try:  # main() may end with SystemExit(0): the command's own exit code
        main(["similarity", "a", str(tmp_path / "b"), "--stores", str(tmp_path), "--tokens", "1K", "--json"])
    except SystemExit as e:
        assert e.code in (0, None)
    out = json.loads(capsys.readouterr().out)
    assert out["a"]["tokens"] == 1000 and all(0 < v < 1 for v in out["jsd_bits"].values())
    with pytest.raises(SystemExit) as e:
        main(["similarity", "a", "nope", "--stores", str(tmp_path)])
    err = capsys.readouterr().err
    assert e.value.code == 1 and err.count("\n") == 1 and "no token store named 'nope'" in err
    assert math.isfinite(out["jsd_bits"]["3-gram"])
