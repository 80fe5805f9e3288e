"""`mixer audit` on mixes of the real sample corpora, built the way a study builds them
(`mixer tokenize --recipe recipes/samples.toml`, `mixer build`): the natural overlap of
real corpora passes (licence headers, templates, Essen folk-song metadata lines and tune
variants, perldelta release notes, Coq's parallel developments), and leaks planted into
the same real stores are named by id: an exact copy, a copy with 5% of its words changed,
20-token verbatim quotes, and (issue 13, item 6) a verbatim copy longer than a sample."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from audit_synth import cli
from storeutil import Encoder, write_store

from mixer.formats.store import open_store

pytestmark = pytest.mark.slow
N = 13
RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "samples.toml"


@pytest.fixture(scope="module")
def real_stores(sample_cache, tmp_path_factory) -> Path:
    """The sample corpora tokenized and split by the recipe (near-duplicate-aware split)."""
    stores = tmp_path_factory.mktemp("real") / "stores"
    old = os.environ.get("MIXER_CACHE")
    os.environ["MIXER_CACHE"] = str(sample_cache)
    try:
        with pytest.raises(SystemExit) as e:
            from mixer.cli import main

            main(["tokenize", "--recipe", str(RECIPE), "--stores", str(stores)])
        assert not e.value.code
    finally:
        if old is None:
            os.environ.pop("MIXER_CACHE", None)
        else:
            os.environ["MIXER_CACHE"] = old
    return stores


def build(capsys, stores: Path, out: Path, domain: str, seq_len: int = 512, tokens: str = "6M") -> Path:
    code, _, err = cli(capsys, "build", "--stores", stores, "--domain", domain, "--general", "prose", "--fraction",
                       "0.3", "--tokens", tokens, "--seq-len", str(seq_len), "--samples-per-shard", "2000",
                       "--out", out, "--quiet")
    assert code == 0, err
    return out


@pytest.mark.parametrize("domain", ["music", "proofs", "chem"])
def test_real_mixes_pass_with_the_natural_overlap_of_their_corpora(real_stores, tmp_path, capsys, domain):
    mix = build(capsys, real_stores, tmp_path / "mix", domain)
    code, out, err = cli(capsys, "audit", mix, "--json")
    rep = json.loads(out)
    assert code == 0 and rep["clean"], [(w["id"], w["flagged"]) for s in rep["sources"] for w in s["worst"][:3]]
    # not vacuous: these corpora share plenty with their own training data (release notes that
    # repeat each other now share a near-duplicate cluster, so a side of the split) ...
    dom, prose = rep["sources"]
    assert prose["max_share"] > 0.15 and prose["longest_span"] > 100  # copied doc paragraphs
    assert dom["with_overlap"] > dom["documents"] // 2
    # ... and the text check read the training documents they share most with
    assert rep["text_check"]["pairs"] > dom["documents"] // 4 and 0.3 < dom["max_near_text"] < 0.8
    assert rep["boilerplate"]["ngrams"] > 100 and rep["boilerplate"]["examples"]
    if domain == "music":  # Essen metadata is discounted; tune variants share most of a tune
        assert any("Mitteleuropa" in e["text"] for e in rep["boilerplate"]["examples"])
        assert dom["max_near_copy"] > 0.75 and dom["longest_span"] > 40
    if domain == "proofs":  # parallel developments (Decimal/Hexadecimal, N/Z) share whole proofs
        assert dom["longest_span"] > 50
    # ... and --strict, which counts passages shared within a source, shows what was let pass
    code, out, _ = cli(capsys, "audit", mix, "--json", "--strict")
    assert code == 1 and json.loads(out)["flagged"] > 0


def hashes(docs: list[np.ndarray], n: int = N) -> np.ndarray:
    """Every n-gram of `docs` as a 64-bit polynomial hash (an oracle independent of mixer)."""
    out = []
    for t in docs:
        if len(t) >= n:
            w = np.lib.stride_tricks.sliding_window_view(t.astype(np.uint64), n)
            out.append((w * (np.uint64(1000003) ** np.arange(n, dtype=np.uint64))).sum(axis=1))
    return np.unique(np.concatenate(out))


def member(h: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    j = np.minimum(np.searchsorted(sorted_set, h), len(sorted_set) - 1)
    return sorted_set[j] == h


def novel_window(doc: np.ndarray, seen: np.ndarray, length: int, start: int = 0) -> int:
    """The first position >= start of a `length`-token window of `doc` none of whose n-grams
    occurs in `seen` (so a quote of it is evidence of nothing but the quote)."""
    w = np.lib.stride_tricks.sliding_window_view(doc.astype(np.uint64), N)
    ok = ~member((w * (np.uint64(1000003) ** np.arange(N, dtype=np.uint64))).sum(axis=1), seen)
    for p in range(start, len(doc) - length + 1):
        if ok[p : p + length - N + 1].all():
            return p
    raise AssertionError("no novel window")


def docs_of(store, split: str) -> list[tuple[str, np.ndarray]]:
    t = np.asarray(store.tokens(split))
    ends = store.doc_ends(split).astype(np.int64)
    starts = np.concatenate([[0], ends[:-1]])
    return [(i, t[a : b - 1]) for i, a, b in zip(store.doc_ids(split), starts, ends)]


def test_leaks_planted_into_real_stores_are_named_by_id(real_stores, sample_cache, tmp_path, capsys):
    enc = Encoder(sample_cache / "tokenizers" / "gpt2" / "tokenizer.json")
    stores = tmp_path / "stores"
    for name in ("music", "prose"):
        shutil.copytree(real_stores / name, stores / name)
    music, prose = open_store(stores, "music"), open_store(stores, "prose")
    m_train, m_test = docs_of(music, "train"), docs_of(music, "test")
    p_train, p_val = docs_of(prose, "train"), docs_of(prose, "val")
    seen = hashes([t for _, t in m_train + p_train])
    held_hashes = {i: hashes([t]) for i, t in m_test + p_val if len(t) >= N}
    values, counts = np.unique(np.concatenate(list(held_hashes.values())), return_counts=True)
    shared = values[counts > 1]
    lone = lambda i: member(held_hashes[i], shared).mean() <= 0.1  # noqa: E731

    # victims: held-out documents that share little with the rest of the held-out split
    tunes = [(i, t) for i, t in m_test if len(t) >= 150 and member(held_hashes[i], seen).mean() < 0.5 and lone(i)]
    pages = [(i, t) for i, t in p_val if 600 <= len(t) <= 6000 and lone(i)]
    (exact_id, exact_t), (near_id, near_t), (quote_id, quote_t) = tunes[:3]
    (page_exact_id, page_exact), (page_near_id, page_near), (page_quote_id, page_quote) = pages[:3]

    def five_percent(t: np.ndarray) -> np.ndarray:
        words = enc.decode(t).split(" ")
        return enc([" ".join("zq" if k % 20 == 10 else w for k, w in enumerate(words))])[0]

    q = novel_window(quote_t, seen, 20, start=len(quote_t) // 3)
    music_quote = quote_t[q : q + 20]
    q = novel_window(page_quote, seen, 20, start=len(page_quote) // 2)
    prose_quote = page_quote[q : q + 20]
    m_train.insert(100, ("planted/exact", exact_t.copy()))
    m_train.insert(200, ("planted/near", five_percent(near_t)))
    p_train.insert(10, ("planted/page-exact", page_exact.copy()))  # longer than a sample of 128
    p_train.insert(20, ("planted/page-near", five_percent(page_near)))
    host = p_train[30][1]
    p_train[30] = (p_train[30][0], np.concatenate([host[: len(host) // 2], music_quote, host[len(host) // 2 :]]))
    host = m_train[300][1]  # a tune quoting documentation: the general source's text in the domain's data
    m_train[300] = (m_train[300][0], np.concatenate([host[:40], prose_quote, host[40:]]))
    write_store(stores, "music", "domain", {"train": m_train, "test": m_test}, enc.path)
    write_store(stores, "prose", "general", {"train": p_train, "val": p_val}, enc.path)

    mix = build(capsys, stores, tmp_path / "mix", "music", seq_len=128)
    want = {exact_id: "exact", near_id: "near_copy", quote_id: "quote", page_exact_id: "exact",
            page_near_id: "near_copy", page_quote_id: "quote"}
    for ngram in ("13", "200"):
        code, out, err = cli(capsys, "audit", mix, "--json", "--ngram", ngram)
        rep = json.loads(out)
        got = {w["id"]: w for s in rep["sources"] for w in s["worst"] if w["flagged"]}
        if ngram == "200":  # n-grams longer than a sample (128): the long page is exact across rows;
            # the tune is shorter than 200 tokens and its copy a whole training document
            assert code == 1 and set(got) == {page_exact_id, exact_id}, sorted(got)
            assert got[page_exact_id]["exact"] and got[page_exact_id]["ngrams"] > 0 and got[exact_id]["ngrams"] == 0
            continue
        assert code == 1 and set(got) == set(want), (sorted(got), sorted(want))
        for i, reason in want.items():
            assert reason in got[i]["flagged"], (i, got[i])
        # the pages are held out of the general source: warnings, not leaks (issue 24)
        assert [(s["source"], s["severity"], s["flagged"]) for s in rep["sources"]] == [("music", "leak", 3),
                                                                                        ("prose", "warning", 3)]
        assert got[quote_id]["quote_tokens"] >= 20 and got[page_quote_id]["quote_tokens"] >= 20
        assert enc.decode(music_quote) in got[quote_id]["snippet"]
        assert got[near_id]["near_copy"] >= 0.9 and not got[near_id]["exact"]
        assert "3 held-out document(s) found in training data" in err
