"""Issue 20 item 7: what the audit and the split's near-duplicate grouping catch that they
missed before. A 20-token verbatim quote whose edges tokenize differently in the text it
was pasted into; copies of real tunes, proofs and documentation pages with 5% and 10% of
their characters substituted (the figures for 20% and the false alarms per corpus are
measured by bench/audit_recall.py, docs/benchmarks/audit.md)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from audit_synth import cli, substitute_characters
from storeutil import Encoder, read_docs, write_flat, write_store

from mixer.checks.audit import audit
from mixer.checks.train_streams import TrainFile
from mixer.formats.store import open_store
from mixer.ingest.neardup import clusters, signatures
from mixer.ingest.split import normalize

PAGE = (
    "The harbour at the end of the valley was built in the years after the flood, when the old quay had been "
    "washed away and the fishermen moved their boats to the sheltered side of the bay. A wall of grey stone "
    "runs from the lighthouse to the customs house, and in winter the spray comes over it so often that the "
    "road behind is closed for days at a time. The village keeps a record of every storm since then, written "
    "by the harbour master in a ledger that hangs by the door of the office, next to the tide tables and a "
    "faded photograph of the first steamer that ever called there."
)
HOSTS = [
    "Notes from the reading group. We spent most of the evening on the second chapter and its long description "
    "of the coast. Someone pointed out that the author never names the village. ",
    "A short review: the prose is careful and slow, the characters few. The best pages are about weather. ",
]


def test_a_20_token_quote_whose_edges_tokenize_differently_in_context_is_caught(gpt2_tokenizer_path, tmp_path,
                                                                                 capsys):
    """20 tokens of a held-out page, cut at whitespace and pasted in quotation marks into
    another source's text: the first token loses its leading space there, so only 19 of
    the 20 match in token space. Counted as a user counts the quote (its edges need not
    match), it is a 20-token quote; matched tokens alone (--quote-edge 0, the rule before)
    miss it."""
    enc = Encoder(gpt2_tokenizer_path)
    page = enc([PAGE])[0]
    space = np.array([enc.decode(page[i : i + 1]).startswith(" ") for i in range(len(page))])
    a = next(i for i in range(30, len(page) - 21) if space[i] and space[i + 20])
    quote = enc.decode(page[a : a + 20]).strip()
    host = HOSTS[0] + 'One line stayed with us: "' + quote + '" and we read it twice. ' + HOSTS[1]
    toks = enc([host])[0]
    runs = [k for k in range(1, 21) for s in range(21 - k)
            if any(np.array_equal(toks[p : p + k], page[a + s : a + s + k]) for p in range(len(toks) - k + 1))]
    assert max(runs) == 19  # in context the quote matches 19 of its 20 tokens: the first lost its space

    write_store(tmp_path / "stores", "notes", "domain", {"train": [("n/0", enc([HOSTS[1]])[0])],
                                                       "test": [("page", page)]}, gpt2_tokenizer_path)
    train = write_flat(tmp_path / "train.bin", [toks] + enc(HOSTS))
    args = ["audit", "--heldout", tmp_path / "stores" / "notes", "--train", train, "--json"]
    code, out, err = cli(capsys, *args)
    (w,) = [w for w in json.loads(out)["sources"][0]["worst"] if w["id"] == "page"]
    assert code == 1 and w["flagged"] == ["quote"] and w["quote_tokens"] == 19 + 1 + 1, (err, w)
    assert quote[5:40] in w["snippet"]
    code, out, _ = cli(capsys, *args, "--quote-edge", "0")
    (w,) = [w for w in json.loads(out)["sources"][0]["worst"] if w["id"] == "page"]
    assert code == 0 and w["quote_tokens"] == 19 and not w["flagged"]


def victims(sample_cache, corpus: str, count: int, lo: int, hi: int, seed: int = 0) -> list[tuple[str, str]]:
    docs = [(i, t) for i, t in read_docs(sample_cache, corpus) if lo <= len(t) <= hi]
    rng = np.random.default_rng(seed)
    return [docs[j] for j in sorted(rng.choice(len(docs), count, replace=False))]


KINDS = {"music": (12, 300, 3000), "proofs": (6, 1500, 20_000), "pydocs": (6, 2000, 30_000)}


@pytest.mark.slow
def test_copies_with_5_and_10_percent_of_characters_substituted_are_found_by_the_audit(sample_cache, tmp_path):
    """Before the text check the default audit flagged 3 of 11 such copies of music test
    tunes. Now every 5% copy of a tune, a Coq file or a documentation page is flagged as a
    near copy, and at least 5 in 6 of the 10% copies, while the same held-out documents
    next to the unedited rest of their corpus are not."""
    enc = Encoder(sample_cache / "tokenizers" / "gpt2" / "tokenizer.json")
    rng = np.random.default_rng(1)
    held, train, copies = [], [], {}
    for corpus, (count, lo, hi) in KINDS.items():
        docs = victims(sample_cache, corpus, count, lo, hi)
        held += docs
        for fraction in (0.05, 0.10):
            copies[fraction] = copies.get(fraction, []) + [(i, substitute_characters(t, fraction, rng)) for i, t in docs]
        # the rest of the corpus as the split leaves it: what it clusters with a victim goes with it
        others = [(i, t) for i, t in read_docs(sample_cache, corpus, limit=400) if i not in {j for j, _ in docs}]
        labels = clusters(signatures([normalize(t) for _, t in docs + others]))
        train += [t for k, (_, t) in enumerate(others) if labels[len(docs) + k] not in set(labels[: len(docs)])]
    write_store(tmp_path / "stores", "held", "domain",
                {"train": [], "test": [(i, t) for (i, _), t in zip(held, enc([t for _, t in held]))]},
                sample_cache / "tokenizers" / "gpt2" / "tokenizer.json")
    store = open_store(tmp_path / "stores", "held")
    found = {}
    for name, extra in [("clean", [])] + [(f, [t for _, t in copies[f]]) for f in (0.05, 0.10)]:
        path = write_flat(tmp_path / f"train-{name}.bin", enc(train + extra))
        # files without provenance are of unknown source, where the quote rule would count the
        # passages a corpus shares with itself; this test is about the near-copy rule
        rep = audit([store], [TrainFile(str(path), "<u2", None)], tmp_path / f"work-{name}", min_quote=10**6)
        found[name] = {w["id"] for w in rep["sources"][0]["worst"] if "near_copy" in w["flagged"]}
        assert rep["flagged"] == len(found[name]), rep["sources"][0]["worst"]
    ids = {i for i, _ in held}
    assert found["clean"] == set()
    assert found[0.05] == ids, sorted(ids - found[0.05])
    assert len(found[0.10]) >= len(ids) * 5 // 6, sorted(ids - found[0.10])


@pytest.mark.slow
def test_the_split_groups_copies_with_5_percent_of_characters_substituted(sample_cache):
    """The split's near-duplicate clusters (mixer.ingest.neardup) hold a tune, a Coq file
    or a documentation page and its copy with 5% of the characters substituted, so both
    land on one side; word 3-gram signatures grouped 3% of them. Unrelated documents of the
    corpus stay out of the copy's cluster."""
    rng = np.random.default_rng(2)
    for corpus, (count, lo, hi) in KINDS.items():
        docs = [t for _, t in read_docs(sample_cache, corpus, limit=3000)]
        pick = victims(sample_cache, corpus, count * 2, lo, hi, seed=3)
        index = {t: k for k, t in enumerate(docs)}
        pick = [(index[t], t) for _, t in pick if t in index]
        texts = [normalize(t) for t in docs] + [normalize(substitute_characters(t, 0.05, rng)) for _, t in pick]
        labels = clusters(signatures(texts))
        together = [labels[k] == labels[len(docs) + j] for j, (k, _) in enumerate(pick)]
        assert all(together), (corpus, together)
        sizes = np.bincount(labels)
        assert max(sizes[labels[len(docs) + j]] for j in range(len(pick))) < len(docs) // 10, corpus
