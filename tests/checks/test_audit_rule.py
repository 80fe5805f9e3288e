"""The audit's decision rule on synthetic corpora built into real mixes by `mixer build`:
exact copies across sample rows, near copies, quotes in another source, boilerplate, and
the refusals of n-gram sizes it cannot check."""

from __future__ import annotations

import json

import numpy as np
import pytest
from audit_synth import build_mix, cli, random_docs, stream_of, write_stitched, write_store

from mixer.executors import Executor
from mixer.checks.audit import audit
from mixer.checks.train_streams import TrainFile, build_streams
from mixer.formats.store import open_store

SEQ = 128


def corpus(seed: int = 0, dom_train: int = 60, gen_train: int = 80, held: int = 12):
    rng = np.random.default_rng(seed)
    return {"dom_train": random_docs(rng, dom_train, 80, 300), "dom_test": random_docs(rng, held, 120, 300),
            "gen_train": random_docs(rng, gen_train, 80, 300), "gen_val": random_docs(rng, 6, 80, 200)}


def stores_of(root, c) -> None:
    write_store(root, "dom", "domain", {"train": [(f"dom/{i}", t) for i, t in enumerate(c["dom_train"])],
                                        "test": [(f"test/{i}", t) for i, t in enumerate(c["dom_test"])]})
    write_store(root, "gen", "general", {"train": [(f"gen/{i}", t) for i, t in enumerate(c["gen_train"])],
                                         "val": [(f"val/{i}", t) for i, t in enumerate(c["gen_val"])]})


def mix_of(capsys, tmp_path, c, name="mix", seq=SEQ) -> str:
    stores_of(tmp_path / f"stores-{name}", c)
    return str(build_mix(capsys, tmp_path / f"stores-{name}", tmp_path / name, "--domain", "dom", "--general", "gen",
                         "--fraction", "0.3", "--tokens", "60K", "--seq-len", str(seq), "--samples-per-shard", "64"))


def audit_json(capsys, *args) -> tuple[int, dict, str]:
    code, out, err = cli(capsys, "audit", *args, "--json")
    return code, json.loads(out) if out.strip() else {}, err


def flagged(rep: dict) -> dict[str, list[str]]:
    return {w["id"]: w["flagged"] for s in rep["sources"] for w in s["worst"] if w["flagged"]}


def test_a_verbatim_copy_longer_than_a_sample_is_exact_at_any_ngram(capsys, tmp_path):
    """Item 6 of the issue: a 560-token held-out document copied into a seq-len-128 mix.
    Samples are stitched back into the source's stream, so n-grams run across row edges:
    --ngram 200 finds it, and it is reported exact, with where it starts in the shards."""
    c = corpus(1)
    doc = np.random.default_rng(9).integers(0, 50_000, 560).astype("<u2")
    c["dom_test"][3] = doc
    c["gen_train"][10] = doc.copy()
    mix = mix_of(capsys, tmp_path, c)
    for n in ("200", "13"):
        code, rep, err = audit_json(capsys, mix, "--ngram", n)
        assert code == 1 and "1 held-out document(s) found in training data" in err, err
        dom = rep["sources"][0]
        assert dom["exact"] == 1 and dom["flagged"] == 1 and rep["flagged"] == 1
        (w,) = [w for w in dom["worst"] if w["flagged"]]
        assert w["id"] == "test/3" and w["exact"] and "exact" in w["flagged"] and w["share"] == 1.0
        name, _, sample, _, token = w["found_in"].split(" ")[:5]
        row = np.fromfile(f"{mix}/{name}", dtype="<u2").reshape(-1, SEQ + 1)[int(sample)][int(token) :]
        assert np.array_equal(row[:20], doc[: len(row[:20])])  # the copy starts there
        assert rep["training"]["stitched_sources"] == [0, 1]


def test_ngram_sizes_it_cannot_check_are_refused(capsys, tmp_path):
    c = corpus(2)
    mix = mix_of(capsys, tmp_path, c)
    shards = sorted(str(p) for p in (tmp_path / "mix").glob("shard-*.bin"))
    for p in (tmp_path / "mix").glob("shard-*.prov.npy"):
        p.rename(p.with_name(p.name + ".away"))
    code, _, err = cli(capsys, "audit", "--heldout", tmp_path / "stores-mix" / "dom", "--train", *shards,
                       "--seq-len", str(SEQ), "--ngram", "200")
    assert code == 2 and err.count("\n") == 1 and "--ngram 200" in err and "no provenance sidecar" in err, err
    code, _, err = cli(capsys, "audit", "--heldout", tmp_path / "stores-mix" / "dom", "--train", *shards,
                       "--seq-len", str(SEQ), "--ngram", "100")
    assert code == 0, err  # n-grams inside rows: 100 <= 129 tokens a row
    for p in (tmp_path / "mix").glob("shard-*.prov.npy.away"):
        p.rename(p.with_name(p.name.removesuffix(".away")))
    code, _, err = cli(capsys, "audit", mix, "--ngram", "400")
    assert code == 2 and "longer than every held-out document" in err and err.count("\n") == 1, err
    flat = tmp_path / "tiny.bin"
    np.arange(50, dtype="<u2").tofile(flat)
    code, _, err = cli(capsys, "audit", "--heldout", tmp_path / "stores-mix" / "dom", "--train", flat, "--ngram", "60")
    assert code == 2 and "longer than any stretch of the training data (50 tokens)" in err, err


def test_exact_near_copy_and_foreign_quote_are_named_own_source_passages_are_not(capsys, tmp_path):
    c = corpus(3)
    rng = np.random.default_rng(5)
    t = c["dom_test"]
    near = t[1].copy()
    near[10::20] = rng.integers(0, 50_000, len(near[10::20]))  # 5% of the tokens changed
    quote, own_quote, short_quote = t[2][50:70], t[4][50:90], t[5][30:47]
    c["dom_train"][7] = t[0].copy()  # exact, own source
    c["dom_train"].insert(20, near)  # near copy, own source
    host = c["gen_train"][4]
    c["gen_train"][4] = np.concatenate([host[:40], quote, host[40:]])  # 20 tokens in another source
    host = c["dom_train"][30]
    c["dom_train"][30] = np.concatenate([host[:40], own_quote, host[40:]])  # 40 tokens in its own source
    host = c["gen_train"][9]
    c["gen_train"][9] = np.concatenate([host[:40], short_quote, host[40:]])  # 17 (+1+1 edge) tokens: under
    mix = mix_of(capsys, tmp_path, c)

    code, rep, err = audit_json(capsys, mix)
    assert code == 1 and "3 held-out document(s)" in err, err
    assert flagged(rep) == {"test/0": ["exact", "near_copy"], "test/1": ["near_copy"], "test/2": ["quote"]}
    worst = {w["id"]: w for w in rep["sources"][0]["worst"]}
    assert worst["test/1"]["near_copy"] >= 0.9 and not worst["test/1"]["exact"]
    assert worst["test/2"]["quote_tokens"] == 22 and worst["test/2"]["near_copy"] < 0.2  # 20 + an edge token each end
    assert worst["test/4"]["quote_tokens"] == 0 and worst["test/4"]["span_tokens"] == 40  # own source: shown, not flagged
    assert worst["test/5"]["quote_tokens"] == 19 and not worst["test/5"]["flagged"]  # 17 matched + 1 + 1
    s = rep["sources"][0]
    assert (s["exact"], s["near_copies"], s["quotes"], s["flagged"]) == (1, 2, 1, 3)
    assert rep["sources"][1]["flagged"] == 0

    code, rep, _ = audit_json(capsys, mix, "--strict")
    assert code == 1 and set(flagged(rep)) == {"test/0", "test/1", "test/2", "test/4"}
    code, rep, _ = audit_json(capsys, mix, "--min-quote", "19")
    assert set(flagged(rep)) == {"test/0", "test/1", "test/2", "test/5"}
    code, rep, _ = audit_json(capsys, mix, "--quote-edge", "0")  # matched tokens only
    worst = {w["id"]: w for w in rep["sources"][0]["worst"]}
    assert worst["test/2"]["quote_tokens"] == 20 and worst["test/5"]["quote_tokens"] == 17

    code, out, _ = cli(capsys, "audit", mix)  # the human summary names them and says why
    assert code == 1 and "test/2  FLAGGED quote" in out and "test/1  FLAGGED near_copy" in out and "LEAK: 3" in out


def test_a_clean_mix_passes_and_the_report_is_the_same_for_any_task_count(capsys, tmp_path):
    c = corpus(4)
    mix = mix_of(capsys, tmp_path, c)
    code, rep, err = audit_json(capsys, mix)
    assert code == 0 and rep["clean"] and rep["flagged"] == 0, err
    assert all(s["with_overlap"] == 0 and s["checked"] == s["documents"] for s in rep["sources"])

    c["gen_train"][3] = c["dom_test"][0].copy()
    mix_of(capsys, tmp_path, c, name="leaky")
    stores = [open_store(tmp_path / "stores-leaky", "dom"), open_store(tmp_path / "stores-leaky", "gen")]
    m = json.loads((tmp_path / "leaky" / "manifest.json").read_text())
    files = [TrainFile(str(tmp_path / "leaky" / s["file"]), "<u2", SEQ + 1, str(tmp_path / "leaky" / s["provenance"]))
             for s in m["shards"]]
    reps = [audit(stores, files, tmp_path / f"w{t}", executor=Executor(tasks=t), source_ids={"gen": 0, "dom": 1}) for t in (1, 3)]
    assert reps[0]["sources"] == reps[1]["sources"] and reps[0]["flagged"] == 1
    stretches = sum(b - a for s in build_streams(files, None) for a, b in s.stretches)
    assert reps[0]["training"]["tokens"] == reps[1]["training"]["tokens"] == stretches  # every token once
    # local tasks are forked processes; a caller already running a thread gets threads, same report
    import threading

    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        threaded = audit(stores, files, tmp_path / "w3t", executor=Executor(tasks=3), source_ids={"gen": 0, "dom": 1})
    finally:
        stop.set()
    assert threaded["sources"] == reps[1]["sources"]
    # a rerun keeps the finished tasks' partials and redoes the rest
    (partials,) = list((tmp_path / "w3").glob("*/tasks-00003/partials"))
    kept, lost = sorted(partials.glob("*.npz"))[:2], sorted(partials.glob("*.npz"))[2]
    stamps = [p.stat().st_mtime_ns for p in kept]
    lost.unlink()
    again = audit(stores, files, tmp_path / "w3", executor=Executor(tasks=3), source_ids={"gen": 0, "dom": 1})
    assert again["sources"] == reps[1]["sources"] and lost.exists()
    assert [p.stat().st_mtime_ns for p in kept] == stamps


def test_boilerplate_is_discounted_and_shown_but_one_documents_text_never_is(capsys, tmp_path):
    """A 40-token licence header on held-out and training documents of both sources is
    boilerplate; without the discount every held-out document would be a 'quote'. A
    held-out document's own passage copied into ten training documents stays evidence."""
    c = corpus(6)
    header = np.random.default_rng(7).integers(0, 50_000, 40).astype("<u2")
    for part in ("dom_test", "dom_train", "gen_train"):
        c[part] = [np.concatenate([header, t]) for t in c[part]]
    passage = c["dom_test"][6][60:100]
    for i in range(10):
        h = c["gen_train"][i]
        c["gen_train"][i] = np.concatenate([h[:50], passage, h[50:]])
    c["dom_train"][11] = c["dom_test"][7].copy()  # an exact copy whose rarest n-gram is past the header
    mix = mix_of(capsys, tmp_path, c)
    code, rep, _ = audit_json(capsys, mix)
    assert code == 1 and flagged(rep) == {"test/6": ["quote"], "test/7": ["exact", "near_copy"]}, flagged(rep)
    b = rep["boilerplate"]
    assert b["enabled"] and b["ngrams"] == 40 - 13 + 1 and b["occurrences"] == 28 * len(c["dom_test"])
    assert b["examples"] and all(e["heldout_docs"] == 12 and e["train_docs"] >= 60 for e in b["examples"])
    w = next(w for w in rep["sources"][0]["worst"] if w["id"] == "test/6")
    assert w["quote_tokens"] == 40 + 2 and w["discounted_ngrams"] == 28  # + the edge tokens
    code, rep, _ = audit_json(capsys, mix, "--no-boilerplate")
    assert len(flagged(rep)) == len(c["dom_test"])  # the header is a 40-token passage found in the general source


def test_short_documents_are_exact_when_a_whole_training_document_equals_them(tmp_path):
    c = corpus(8)
    short = np.array([5, 6, 7, 8, 9], dtype="<u2")
    c["dom_test"][0] = short
    c["gen_train"][2] = short.copy()
    stores_of(tmp_path, c)
    stream_of(c["gen_train"]).tofile(tmp_path / "flat.bin")
    rep = audit([open_store(tmp_path, "dom")], [TrainFile(str(tmp_path / "flat.bin"), "<u2", None)], tmp_path / "w")
    w = rep["sources"][0]["worst"][0]
    assert w["id"] == "test/0" and w["exact"] and w["ngrams"] == 0 and rep["flagged"] == 1
    assert w["found_in"] == f"flat.bin token {sum(len(t) + 1 for t in c['gen_train'][:2])}"


@pytest.mark.parametrize("chunk", [1 << 21, 300])
def test_documents_longer_than_a_chunk_keep_their_ngrams_and_copies(tmp_path, monkeypatch, chunk):
    """A training document longer than a chunk is read in overlapping chunks: a held-out
    document copied at its very end is still exact, and every token is scanned once, from
    a flat file or from shards stitched back together, by one task or several."""
    monkeypatch.setattr("mixer.checks.audit.CHUNK_TOKENS", chunk)
    c = corpus(10)
    long_doc = np.concatenate(c["gen_train"][:20])
    c["gen_train"] = [long_doc, c["dom_test"][2].copy(), np.concatenate([long_doc, c["dom_test"][3]])]
    stores_of(tmp_path, c)
    s = stream_of(c["gen_train"])
    s.tofile(tmp_path / "flat.bin")
    layouts = {"flat": [TrainFile(str(tmp_path / "flat.bin"), "<u2", None)],
               "stitched": [TrainFile(str(b), "<u2", 65, str(p))
                            for b, p in write_stitched(tmp_path / "mix", {0: s}, 64, 5)]}
    for layout, files in layouts.items():
        for tasks in (1, 3):
            rep = audit([open_store(tmp_path, "dom")], files, tmp_path / f"w{layout}{tasks}", executor=Executor(tasks=tasks))
            padded = -(-(len(s) - 1) // 64) * 64 + 1 if layout == "stitched" else len(s)  # the last sample's EOS padding
            assert rep["training"]["tokens"] == padded, (layout, tasks)
            assert set(flagged(rep)) == {"test/2", "test/3"} and rep["sources"][0]["exact"] == 2, (layout, tasks)


def test_the_flags_state_the_rules_defaults(capsys):
    from mixer.checks.audit import BOILERPLATE_HELDOUT_DOCS, BOILERPLATE_TRAIN_DOCS, MIN_QUOTE, NEAR_COPY

    code, out, _ = cli(capsys, "audit", "--help")
    text = " ".join(out.split())
    assert code == 0 and f"(default {NEAR_COPY:g})" in text and f"(default {MIN_QUOTE})" in text
    assert f"(default {BOILERPLATE_TRAIN_DOCS})" in text and f"(default {BOILERPLATE_HELDOUT_DOCS})" in text


def test_a_general_sources_near_copies_are_warnings_and_a_domain_leak_is_an_error(capsys, tmp_path):
    """Issue 24: a near copy of a general source's val document inside its own training data
    (web corpora duplicate themselves; such sources are split without clustering) is a
    warning, exit 0; --strict makes it a leak. A domain test document's copy is a leak."""
    c = corpus(6)
    rng = np.random.default_rng(1)
    near = c["gen_val"][2].copy()
    near[7::20] = rng.integers(0, 50_000, len(near[7::20]))
    c["gen_train"].insert(3, near)
    mix = mix_of(capsys, tmp_path, c)
    code, rep, err = audit_json(capsys, mix)
    assert code == 0 and not err and (rep["leaks"], rep["warnings"], rep["flagged"]) == (0, 1, 1), err
    assert [(s["source"], s["severity"], s["flagged"]) for s in rep["sources"]] == [("dom", "leak", 0),
                                                                                    ("gen", "warning", 1)]
    code, out, _ = cli(capsys, "audit", mix)
    assert code == 0 and "WARNING: 1 gen/val" in out and "no leak" in out
    code, rep, err = audit_json(capsys, mix, "--strict")
    assert code == 1 and rep["leaks"] == 1 and "1 held-out document(s) found" in err

    c["dom_train"][5] = c["dom_test"][1].copy()
    mix = mix_of(capsys, tmp_path, c, name="mix2")
    code, rep, err = audit_json(capsys, mix)
    assert code == 1 and (rep["leaks"], rep["warnings"]) == (1, 1) and "1 held-out document(s) found" in err
    code, out, _ = cli(capsys, "audit", "--help")
    out = " ".join(out.split())  # as wrapped for any terminal width
    assert "are warnings, exit 0, unless --strict" in out and "A triage list, not a verdict" in out


def test_a_dtype_the_training_files_contradict_is_refused_in_one_line(capsys, tmp_path):
    """Issue 20 item 6: uint32 tokens audited as uint16 hold valid-looking ids that match
    nothing, so the audit said "clean" (exit 0) on an exact leak. The dtype is checked against
    the file (every second uint16 zero; ids past the vocabulary), a mix shard takes its dtype
    from the manifest, and a shard whose size the manifest contradicts is refused."""
    c = corpus(7)
    stores_of(tmp_path / "stores", c)
    held = tmp_path / "stores" / "dom"
    flat = stream_of(c["dom_train"][:20] + [c["dom_test"][0]])  # an exact leak
    wide = tmp_path / "wide.bin"
    flat.astype("<u4").tofile(wide)
    code, _, err = cli(capsys, "audit", "--heldout", held, "--train", wide, "--dtype", "uint32")
    assert code == 1 and "1 held-out document(s)" in err  # read right, the leak is found
    for args in (["--dtype", "uint16"], []):  # given, or the stores' (uint16) by default
        code, _, err = cli(capsys, "audit", "--heldout", held, "--train", wide, *args)
        assert code == 2 and err.count("\n") == 1 and f"{wide}: read as uint16" in err and "use --dtype uint32" in err
    narrow = tmp_path / "narrow.bin"
    np.append(flat, flat[-1:])[: len(flat) // 2 * 2 + 2].tofile(narrow)  # an even count: sizes fit uint32
    code, _, err = cli(capsys, "audit", "--heldout", held, "--train", narrow, "--dtype", "uint32")
    assert code == 2 and err.count("\n") == 1 and "outside the vocabulary" in err and str(narrow) in err
    flat[:-1 if len(flat) % 2 == 0 else len(flat)].tofile(narrow)  # an odd count
    code, _, err = cli(capsys, "audit", "--heldout", held, "--train", narrow, "--dtype", "uint32")
    assert code == 1 and err.count("\n") == 1 and "wrong --dtype" in err and str(narrow) in err

    mix = mix_of(capsys, tmp_path, c)
    shard = sorted((tmp_path / "mix").glob("shard-*.bin"))[0]
    code, _, err = cli(capsys, "audit", "--heldout", held, "--train", shard, "--dtype", "uint32")
    assert code == 2 and "whose manifest says uint16" in err, err
    code, rep, err = audit_json(capsys, "--heldout", held, "--train", shard)  # seq_len and sidecar from the manifest
    assert code == 0 and rep["training"]["stitched_sources"], err
    with open(shard, "ab") as fh:
        fh.write(b"\0\0")
    code, _, err = cli(capsys, "audit", mix)
    assert code == 1 and err.count("\n") == 1 and f"{shard}: " in err and "run mixer verify" in err


def test_a_store_with_an_empty_held_out_split_is_audited_with_the_others(capsys, tmp_path):
    """A corpus whose near-duplicate clusters all fell on the train side holds no test
    document; the audit of a mix with it reports 0 documents for it, not a crash."""
    c = corpus(8)
    c["dom_test"] = []
    c["dom_train"][2] = c["gen_val"][1].copy()  # a general val document copied: a warning
    mix = mix_of(capsys, tmp_path, c)
    code, rep, err = audit_json(capsys, mix)
    assert code == 0 and [(s["source"], s["documents"], s["flagged"]) for s in rep["sources"]] == [("dom", 0, 0),
                                                                                                  ("gen", 6, 1)], err
