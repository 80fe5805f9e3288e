"""The duplicate-safe split: normalization, seeded hashes, thresholds, near-duplicate clusters."""

from __future__ import annotations

import random

import numpy as np
import pytest

from mixer.errors import MixerError
from mixer.ingest.neardup import clusters, signatures
from mixer.ingest.sources import SourceSpec
from mixer.ingest.split import (
    heldout_mask,
    normalize,
    seeded_hash,
    text_hash,
    threshold_for_fraction,
    threshold_for_tokens,
)
from mixer.ingest.merge import Corpus, decide_split

# 3,000 random words of 2-9 letters: text whose character 5-grams are as varied as prose's
# (words "w0".."w2999" would make every two long documents share most of their 5-grams)
_letters = random.Random(42)
WORDS = sorted({"".join(_letters.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(_letters.randint(2, 9)))
                for _ in range(3000)})


def random_doc(rng: random.Random, n: int = 300) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def corpus_of(texts: list[str], minhash: bool = True) -> Corpus:
    norm = [normalize(t) for t in texts]
    return Corpus(
        length=np.array([len(t.split()) + 1 for t in texts], dtype=np.int64),
        hash=np.array([text_hash(x) for x in norm], dtype=np.uint64),
        minhash=signatures(norm) if minhash else None,
    )


def test_normalize_folds_case_space_and_unicode_forms():
    assert normalize("  Hello,\t\tWORLD\n\n x ") == "hello, world x"
    assert normalize("Cafe\u0301 STRASSE") == normalize("Café straße")  # NFC + casefold (ß -> ss)
    assert normalize("a\u00a0b\u2003c") == "a b c"  # Unicode whitespace folds too
    assert text_hash(normalize("Same  Text")) == text_hash(normalize("same text"))


def test_text_hash_is_stable_across_runs_and_machines():
    # pinned: a change here silently re-splits every store ever tokenized
    assert text_hash("hello world") == 0x50B1A332AA338687
    assert int(seeded_hash(np.array([0x50B1A332AA338687], dtype=np.uint64), 0)[0]) == 0xDE27812A97EE7908


def test_fraction_threshold_holds_out_that_share_and_seeds_differ():
    rng = np.random.default_rng(0)
    h = rng.integers(0, 2**63, size=200_000, dtype=np.uint64) * np.uint64(2)
    t = threshold_for_fraction(0.05)
    a, b = heldout_mask(seeded_hash(h, 0), t), heldout_mask(seeded_hash(h, 1), t)
    assert abs(a.mean() - 0.05) < 0.003 and abs(b.mean() - 0.05) < 0.003
    assert abs((a & b).mean() - 0.05 * 0.05) < 0.001  # independent-looking splits per seed


def test_token_threshold_reaches_target_with_copies_together():
    rng = np.random.default_rng(1)
    h = rng.integers(0, 2**63, size=1000, dtype=np.uint64)
    h[500:510] = h[0]  # ten copies of document 0
    lengths = rng.integers(10, 200, size=1000)
    for target in (1, 500, 5000, 20000):
        s = seeded_hash(h, 3)
        mask = heldout_mask(s, threshold_for_tokens(s, lengths, target))
        got = int(lengths[mask].sum())
        assert got >= target and got - target < lengths.max() * 11
        assert len(set(mask[[0] + list(range(500, 510))])) == 1
    with pytest.raises(MixerError, match="only .* tokens"):
        threshold_for_tokens(seeded_hash(h, 0), lengths, int(lengths.sum()))


def test_near_copy_with_5_percent_of_words_changed_shares_a_cluster_and_a_side():
    rng = random.Random(0)
    texts = [random_doc(rng, rng.randint(50, 600)) for _ in range(300)]
    copies = []
    for i in range(0, 300, 10):  # 30 originals, each with a copy where ~5% of words differ
        words = texts[i].split()
        for j in rng.sample(range(len(words)), max(1, len(words) // 20)):
            words[j] = rng.choice(WORDS) + "x"
        copies.append((i, len(texts)))
        texts.append(" ".join(words))
    corpus = corpus_of(texts)
    labels = clusters(corpus.minhash)
    assert all(labels[a] == labels[b] for a, b in copies)
    assert len(set(labels)) == 300  # no unrelated document was merged in
    for seed in range(40):
        spec = SourceSpec("m", "domain", ["x"], "t", test_fraction=0.3, seed=seed)
        mask, record, _, _ = decide_split(spec, corpus)
        assert all(mask[a] == mask[b] for a, b in copies), seed
    assert record["near_duplicate_clusters"] == 30 and record["near_duplicate_documents"] == 60


def test_without_near_duplicates_a_near_copy_is_split_independently():
    rng = random.Random(2)
    base = random_doc(rng, 400)
    words = base.split()
    for j in rng.sample(range(len(words)), 20):
        words[j] = "changed"
    corpus = corpus_of([base, " ".join(words)], minhash=False)
    sides = set()
    for seed in range(200):
        spec = SourceSpec("m", "domain", ["x"], "t", test_fraction=0.5, seed=seed, near_duplicates=False)
        mask, record, labels, _ = decide_split(spec, corpus)
        sides.add(tuple(mask))
        assert labels is None and "near_duplicate_clusters" not in record
    assert (True, False) in sides or (False, True) in sides


def test_signatures_do_not_depend_on_batching_and_short_texts_work():
    rng = random.Random(3)
    texts = [normalize(random_doc(rng, n)) for n in (1, 2, 3, 50)] + ["x"]
    together = signatures(texts)
    alone = np.stack([signatures([t])[0] for t in texts])
    assert (together == alone).all()
    assert (signatures(["a b"]) == signatures(["a b"])).all() and not (signatures(["a b"]) == signatures(["a c"])).all()


def test_text_of_a_small_alphabet_is_not_one_cluster_but_its_copies_are_grouped():
    """DNA-like documents share most of their character 5-grams (4**5 = 1,024 of them), so
    every pair passes the 0.4 check and one component would hold the corpus, all of it on one
    side of the split. Components over max_cluster (here 61) are re-clustered at stricter
    similarities: copies with 1% of the letters changed stay with their original."""
    from mixer.ingest.neardup import max_cluster

    rng = np.random.default_rng(0)
    docs = ["".join(rng.choice(list("acgt"), 2000)) for _ in range(300)]
    copies = []
    for i in range(5):
        letters = np.array(list(docs[i]))
        at = rng.choice(2000, 20, replace=False)
        letters[at] = rng.choice(list("acgt"), 20)
        copies.append("".join(letters))
    labels = clusters(signatures(docs + copies))
    assert np.bincount(labels).max() <= max_cluster(len(labels)) == 61
    assert all(labels[i] == labels[300 + i] for i in range(5))
