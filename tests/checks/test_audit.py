"""`mixer audit` on real text: planted leaks are found by id, clean mixes and the natural
overlap of real corpora pass, unrelated corpora do not collide, and the engine agrees with
a plain-Python n-gram oracle."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from audit_synth import write_stitched
from storeutil import EOS_ID, Encoder, read_docs, stream, write_flat, write_samples, write_store

from mixer.executors import Executor
from mixer.checks.audit import MIN_DISTINCT, TrainFile, audit
from mixer.cli import main
from mixer.formats.store import open_store

pytestmark = pytest.mark.slow  # real sample corpora; tests/checks/test_audit_rule.py has the fast synthetic ones
N = 13
SEQ_LEN = 512


def grams(t: np.ndarray, n: int = N) -> set[tuple[int, ...]]:
    return {tuple(t[i : i + n].tolist()) for i in range(len(t) - n + 1)}


def unique_docs(docs: list[np.ndarray], min_len: int) -> list[int]:
    """Documents none of whose n-grams occurs in another document (plain-Python oracle):
    a split that holds these out is clean at the n-gram level by construction."""
    sets = [grams(t) for t in docs]
    df = Counter(g for s in sets for g in s)
    return [i for i, s in enumerate(sets) if len(docs[i]) >= min_len and all(df[g] == 1 for g in s)]


def strip_abc_fields(text: str) -> str:
    """ABC tunes without their field lines (T:, M:, S: source citations, ...): those lines
    are shared by every tune of a collection, so no tune of the raw corpus has only its own
    13-grams (docs/benchmarks/audit.md measures that natural overlap); the melodies do."""
    return "\n".join(line for line in text.split("\n") if not re.match(r"^[A-Za-z]:", line))


@pytest.fixture(scope="module")
def corpus(sample_cache):
    enc = Encoder(sample_cache / "tokenizers" / "gpt2" / "tokenizer.json")
    music = [(i, strip_abc_fields(t)) for i, t in read_docs(sample_cache, "music", limit=1500)]
    prose = read_docs(sample_cache, "pydocs", limit=80)
    out = {"enc": enc, "cache": sample_cache}
    for name, docs in (("music", music), ("prose", prose)):
        toks = enc([t for _, t in docs])
        held = unique_docs(toks, min_len=120)[:12]
        assert len(held) >= 3, f"{name}: too few documents without shared n-grams to hold out"
        out[name] = {"ids": [i for i, _ in docs], "texts": [t for _, t in docs], "toks": toks, "held": held}
    return out


def make_stores(root: Path, corpus: dict) -> Path:
    tok = corpus["enc"].path
    for name, role, split in (("music", "domain", "test"), ("prose", "general", "val")):
        c = corpus[name]
        train = [(c["ids"][i], t) for i, t in enumerate(c["toks"]) if i not in c["held"]]
        write_store(root, name, role, {"train": train, split: [(c["ids"][i], c["toks"][i]) for i in c["held"]]}, tok)
    return root


def make_mix(root: Path, stores: Path, docs: list[np.ndarray], shards: int = 3) -> Path:
    """A mix folder by hand (docs/formats.md): shards of (n, seq_len+1) samples + manifest."""
    mix = root / "mix"
    mix.mkdir(parents=True)
    per = -(-len(docs) // shards)
    entries = []
    for k in range(shards):
        f = write_samples(mix / f"shard-{k:05d}.bin", docs[k * per : (k + 1) * per], SEQ_LEN)
        entries.append({"file": f.name, "samples": f.stat().st_size // (2 * (SEQ_LEN + 1))})
    tokenizer = json.loads((stores / "music" / "store.json").read_text())["tokenizer"]["path"]
    sha = hashlib.sha256(Path(tokenizer).read_bytes()).hexdigest()
    manifest = {"format": "mixer-mix/1", "seq_len": SEQ_LEN, "dtype": "<u2", "stores": str(stores), "domain": "music",
                "general": "prose", "tokenizer": {"name": "gpt2", "sha256": sha, "vocab_size": 50257, "eos_id": EOS_ID},
                "shards": entries}
    (mix / "manifest.json").write_text(json.dumps(manifest))
    return mix


def train_docs(corpus: dict) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    docs = [t for name in ("music", "prose") for i, t in enumerate(corpus[name]["toks"]) if i not in corpus[name]["held"]]
    return [docs[i] for i in rng.permutation(len(docs))]


def cli(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        main([*map(str, args)])
        raise SystemExit(0)  # main returns normally on success
    out = capsys.readouterr()
    return e.value.code or 0, out.out, out.err


def test_planted_leaks_are_found_with_their_ids(corpus, tmp_path, capsys):
    m, enc = corpus["music"], corpus["enc"]
    exact_i, near_i, quote_i = m["held"][:3]
    words = m["texts"][near_i].split(" ")
    near = " ".join("zq" if k % 20 == 10 else w for k, w in enumerate(words))  # 5% of the words changed
    docs = train_docs(corpus)
    host = max(range(len(docs)), key=lambda i: len(docs[i]))  # the longest: a documentation page
    long_doc = docs[host]
    quote = m["toks"][quote_i][40:60]
    docs[host] = np.concatenate([long_doc[: len(long_doc) // 2], quote, long_doc[len(long_doc) // 2 :]])
    docs[len(docs) // 6 : len(docs) // 6] = enc([m["texts"][exact_i], near])  # into the general training data
    stores = make_stores(tmp_path / "stores", corpus)
    mix = make_mix(tmp_path, stores, docs)

    code, out, err = cli(capsys, "audit", mix, "--json")
    assert code == 1 and err.startswith("mixer: error:") and "3 held-out document(s) found in training" in err
    rep = json.loads(out)
    music = next(s for s in rep["sources"] if s["source"] == "music")
    worst = {w["id"]: w for w in music["worst"] if w["flagged"]}
    assert set(worst) == {m["ids"][exact_i], m["ids"][near_i], m["ids"][quote_i]}
    assert worst[m["ids"][exact_i]]["exact"] and worst[m["ids"][exact_i]]["share"] == 1.0
    near_w = worst[m["ids"][near_i]]
    assert "near_copy" in near_w["flagged"] and near_w["near_copy"] >= 0.9 and 0.2 < near_w["share"] < 0.95
    q = worst[m["ids"][quote_i]]
    assert q["flagged"] == ["quote"] and q["quote_tokens"] >= 20 and 0 < q["share"] < 0.2
    assert enc.decode(quote) in q["snippet"] and q["found_in"].startswith("shard-")
    # no provenance: training of unknown source, where a copy is also a quote
    assert (music["exact"], music["near_copies"], music["quotes"], music["flagged"]) == (1, 2, 3, 3)
    assert music["histogram"]["0"] == len(m["held"]) - 3
    assert rep["sources"][1]["with_overlap"] == 0  # prose val: untouched

    code, out, _ = cli(capsys, "audit", mix)  # the human table names them too
    assert code == 1 and f"{m['ids'][exact_i]}  FLAGGED exact" in out and "LEAK: 3" in out


def test_clean_mix_reports_zero(corpus, tmp_path, capsys):
    stores = make_stores(tmp_path / "stores", corpus)
    mix = make_mix(tmp_path, stores, train_docs(corpus))
    code, out, err = cli(capsys, "audit", mix, "--json", "--no-boilerplate")
    assert code == 0, err
    rep = json.loads(out)
    assert rep["clean"] and rep["flagged"] == 0
    assert all(s["with_overlap"] == 0 and s["worst"] == [] and s["checked"] == s["documents"] for s in rep["sources"])
    assert rep["training"]["files"] == 3 and rep["training"]["ngrams"] > 10**5
    code, out, _ = cli(capsys, "audit", mix)
    assert code == 0 and "clean: no held-out document is in the training data" in out


def oracle_seen(path: Path, row_len: int | None) -> set[tuple[int, ...]]:
    """Every n-gram of a training file, in plain Python: rows (or the whole file) split at EOS."""
    data = np.fromfile(path, dtype="<u2")
    rows = data.reshape(-1, row_len) if row_len else data[None, :]
    seen: set[tuple[int, ...]] = set()
    for row in rows:
        cuts = np.flatnonzero(row == EOS_ID)
        for piece in np.split(row, cuts):
            seen |= grams(piece[1:] if len(piece) and piece[0] == EOS_ID else piece)
    return seen


def test_shares_match_a_python_oracle_flat_and_sampled_and_over_tasks(corpus, tmp_path, monkeypatch):
    """Natural overlap (a random split of real music shares phrases): every document's
    share equals the plain-Python computation on the file bytes, whatever the layout
    (flat token files or samples) or the number of tasks."""
    c = corpus["music"]
    held = list(range(0, 400, 7))
    train = [t for i, t in enumerate(c["toks"][:400]) if i not in held]
    train.insert(100, np.concatenate(train[:12]))  # one document longer than the small chunks below
    test = [(c["ids"][i], c["toks"][i]) for i in held]
    write_store(tmp_path, "music", "domain", {"train": [], "test": test}, corpus["enc"].path)
    store = open_store(tmp_path, "music")
    half = len(train) // 2
    parts = list(enumerate((train[:half], train[half:])))
    layouts = {
        "flat": [TrainFile(str(write_flat(tmp_path / f"f{k}.bin", p)), "<u2", None) for k, p in parts],
        "samples": [TrainFile(str(write_samples(tmp_path / f"s{k}.bin", p, 64)), "<u2", 65) for k, p in parts],
        # the same samples with provenance, each part a source: read back as the flat streams
        "stitched": [TrainFile(str(b), "<u2", 65, str(q)) for b, q in
                     write_stitched(tmp_path / "mix", {k: stream(p) for k, p in parts}, 64, shards=3)],
    }
    for layout, files in layouts.items():
        seen = set().union(*(oracle_seen(Path(f.path), f.row_len) for f in (files if layout != "stitched" else
                                                                             layouts["flat"])))
        want = {}
        for i in held:
            t = c["toks"][i]
            windows = [tuple(t[j : j + N].tolist()) for j in range(len(t) - N + 1)]
            windows = [w for w in windows if len(set(w)) >= MIN_DISTINCT]  # degenerate ones are not audited
            want[c["ids"][i]] = sum(w in seen for w in windows) / len(windows)
        for tasks, chunk in ((1, 1 << 21), (2, 1 << 21), (1, 1000)):  # 1000: many chunks, cut at EOS or overlapped
            monkeypatch.setattr("mixer.checks.audit.CHUNK_TOKENS", chunk)
            rep = audit([store], files, tmp_path / "work", boilerplate=False, executor=Executor(tasks=tasks))
            src = rep["sources"][0]
            assert src["with_overlap"] == sum(s > 0 for s in want.values()) > 0, layout
            for w in src["worst"]:
                assert w["share"] == pytest.approx(want[w["id"]], abs=1e-6), (layout, tasks, w["id"])
            assert rep["training"]["tasks"] == tasks and rep["training"]["files"] == len(files)


def test_ngrams_cross_sample_edges_only_when_stitched_and_never_an_eos(corpus, tmp_path):
    c = corpus["music"]
    doc = c["toks"][c["held"][0]]
    write_store(tmp_path, "music", "domain", {"train": [], "test": [("d", doc)]}, corpus["enc"].path)
    store = open_store(tmp_path, "music")
    # the document cut every 12 tokens by an EOS: no 13-gram survives
    cut = np.concatenate([np.append(doc[i : i + N - 1], EOS_ID) for i in range(0, len(doc), N - 1)]).astype("<u2")
    cut.tofile(tmp_path / "cut.bin")
    rep = audit([store], [TrainFile(str(tmp_path / "cut.bin"), "<u2", None)], tmp_path / "w1", boilerplate=False)
    assert rep["sources"][0]["with_overlap"] == 0
    # the document in samples of 40 tokens (seq_len 39, one token shared between samples),
    # shuffled over two shards: without provenance n-grams stay inside rows ...
    pairs = write_stitched(tmp_path, {0: np.append(doc, EOS_ID).astype("<u2")}, 39, shards=2)
    inside = {tuple(doc[k + j : k + j + N].tolist()) for k in range(0, len(doc), 39) for j in range(40 - N + 1)}
    windows = [tuple(doc[j : j + N].tolist()) for j in range(len(doc) - N + 1)]
    windows = [w for w in windows if len(set(w)) >= MIN_DISTINCT]
    rows = [TrainFile(str(b), "<u2", 40) for b, _ in pairs]
    w = audit([store], rows, tmp_path / "w2", boilerplate=False)["sources"][0]["worst"][0]
    assert w["share"] == pytest.approx(sum(x in inside for x in windows) / len(windows)) and w["share"] < 0.8
    assert not w["exact"]
    # ... with the sidecars the samples are stitched back into the stream: all of it, exact
    stitched = [TrainFile(str(b), "<u2", 40, str(p)) for b, p in pairs]
    w = audit([store], stitched, tmp_path / "w3", boilerplate=False)["sources"][0]["worst"][0]
    assert w["share"] == 1.0 and w["exact"] and w["flagged"] == ["exact", "near_copy", "quote"]


def test_boilerplate_is_discounted_and_shown(corpus, tmp_path, capsys):
    """A licence header on every tune, held-out and training alike, followed by a line
    naming the tune (so no n-gram joins the header to a tune's own first notes)."""
    c, enc = corpus["music"], corpus["enc"]
    header = "% Copyright (c) 2026 The Folk Archive. Licensed under the Creative Commons Attribution 4.0 licence.\n"
    text = lambda i: f"{header}% {c['ids'][i]}\n{c['texts'][i]}"  # noqa: E731
    held = list(zip([c["ids"][i] for i in c["held"]], enc([text(i) for i in c["held"]])))
    train = enc([text(i) for i in range(300) if i not in c["held"]])
    stores = write_store(tmp_path / "stores", "music", "domain", {"train": [], "test": held}, enc.path).parent
    write_flat(tmp_path / "train.bin", train)
    args = ["audit", "--heldout", stores / "music", "--train", tmp_path / "train.bin", "--json"]
    code, out, _ = cli(capsys, *args)
    rep = json.loads(out)
    assert code == 0 and rep["clean"], out
    b = rep["boilerplate"]
    assert b["enabled"] and b["ngrams"] >= len(enc([header])[0]) - N + 1 and b["occurrences"] >= b["ngrams"] * len(held)
    assert "Creative Commons" in " ".join(e["text"] for e in b["examples"])
    assert all(e["heldout_docs"] >= 5 and e["train_docs"] >= 5 for e in b["examples"])
    assert all(w["discounted_ngrams"] >= len(enc([header])[0]) - N + 1 for w in rep["sources"][0]["worst"])
    code, out, _ = cli(capsys, *args, "--no-boilerplate")  # the header is a passage of every held-out tune
    assert code == 1 and json.loads(out)["sources"][0]["quotes"] == len(held)


def test_unrelated_corpora_have_no_false_positives(corpus, tmp_path):
    """Documentation prose held out against ABC music as training data, and the reverse:
    the share of held-out documents reported as overlapping is the false-positive rate."""
    enc = corpus["enc"]
    raw = read_docs(corpus["cache"], "music", limit=1500)
    p, m = corpus["prose"], {"ids": [i for i, _ in raw], "toks": enc([t for _, t in raw])}
    write_store(tmp_path, "prose", "general", {"train": [], "val": list(zip(p["ids"], p["toks"]))}, enc.path)
    write_store(tmp_path, "music", "domain", {"train": [], "test": list(zip(m["ids"], m["toks"]))}, enc.path)
    write_flat(tmp_path / "music.bin", m["toks"])
    write_flat(tmp_path / "prose.bin", p["toks"])
    for held, train in (("prose", "music"), ("music", "prose")):
        rep = audit([open_store(tmp_path, held)], [TrainFile(str(tmp_path / f"{train}.bin"), "<u2", None)],
                    tmp_path / f"w-{held}", boilerplate=False)
        s = rep["sources"][0]
        assert s["flagged"] == 0
        assert s["documents"] == len((p if held == "prose" else m)["toks"]) and rep["training"]["ngrams"] > 10**5
        assert s["with_overlap"] / s["documents"] <= 0.01, [(w["id"], w["snippet"]) for w in s["worst"][:5]]


def test_errors_are_one_line_with_exit_codes(corpus, tmp_path, capsys):
    c = corpus["music"]
    store = write_store(tmp_path / "stores", "music", "domain", {"train": [], "test": [("d", c["toks"][0])]}, corpus["enc"].path)
    stores = store.parent
    (tmp_path / "odd.bin").write_bytes(b"\x00" * 7)
    write_flat(tmp_path / "ok.bin", c["toks"][:5])
    cases = [
        (["audit", tmp_path, "--heldout", stores / "music"], 2, "either MIX or --heldout"),
        (["audit", "--heldout", stores / "music"], 2, "--train"),
        (["audit", tmp_path / "nomix"], 1, "nomix/manifest.json: no manifest"),
        (["audit", "--heldout", stores / "music", "--train", tmp_path / "odd.bin"], 1, "odd.bin: size 7 bytes"),
        (["audit", "--heldout", stores / "music", "--train", tmp_path / "ok.bin", "--seq-len", "1000000"], 1, "ok.bin: size"),
        (["audit", "--heldout", stores / "music", "--train", tmp_path / "ok.bin", "--dtype", "uint32"], 2,
         "outside the vocabulary"),  # a flag the file contradicts: a usage error
        (["audit", "--heldout", stores / "music", "--train", tmp_path / "none*.bin"], 1, "no training files match"),
        (["audit", "--heldout", stores / "nope", "--train", tmp_path / "ok.bin"], 1, "no token store named 'nope'"),
        (["audit", "--heldout", stores / "music", "--train", tmp_path / "ok.bin", "--executor", "slurm"], 2, "--work"),
        (["audit", "--heldout", stores / "music", "--train", tmp_path / "ok.bin", "--near-copy", "5"], 2, "in (0, 1]"),
        (["audit", "--heldout", stores / "music", "--train", tmp_path / "ok.bin", "--min-quote", "0"], 2, "at least 1"),
        (["audit", "--heldout", stores / "music", "--train", tmp_path / "ok.bin", "--near-text", "0"], 2, "in (0, 1]"),
        (["audit", "--heldout", stores / "music", "--train", tmp_path / "ok.bin", "--quote-edge", "-1"], 2,
         "at least 0"),
        (["audit", "--heldout", stores / "music", "--train", tmp_path / "ok.bin", "--boilerplate-train-docs", "1"], 2,
         "at least 2"),
    ]
    for args, want_code, want in cases:
        code, out, err = cli(capsys, *args)
        assert (code, want in err, "Traceback" in err, err.count("\n")) == (want_code, True, False, 1), (args, err)


def test_mix_built_by_mixer_build_audits_clean_and_a_leak_is_caught(corpus, tmp_path, capsys):
    """End to end: stores -> `mixer build` (music domain repeated over several epochs) ->
    `mixer audit`. Clean as built; a test tune copied into a general train document of
    the store (a leaky split) is found in the rebuilt mix."""
    stores = make_stores(tmp_path / "stores", corpus)
    build = ["build", "--stores", stores, "--domain", "music", "--general", "prose", "--fraction", "0.3",
             "--tokens", "400K", "--seq-len", "256", "--samples-per-shard", "400", "--quiet"]
    code, _, err = cli(capsys, *build, "--out", tmp_path / "clean")
    assert code == 0, err
    code, out, err = cli(capsys, "audit", tmp_path / "clean", "--json")
    assert code == 0, err
    rep = json.loads(out)
    manifest = json.loads((tmp_path / "clean" / "manifest.json").read_text())
    assert rep["clean"] and rep["training"]["files"] >= 3
    assert rep["training"]["tokens"] == sum(s["stream_tokens"] for s in manifest["sources"])  # each stream token once
    assert [s["source"] for s in rep["sources"]] == ["music", "prose"]

    m, p = corpus["music"], corpus["prose"]
    leaked = m["held"][0]
    train = [(p["ids"][i], t) for i, t in enumerate(p["toks"]) if i not in p["held"]]
    train[0] = (train[0][0], np.concatenate([train[0][1], m["toks"][leaked]]))
    write_store(stores, "prose", "general", {"train": train, "val": [(p["ids"][i], p["toks"][i]) for i in p["held"]]},
                corpus["enc"].path)
    code, _, err = cli(capsys, *build, "--out", tmp_path / "leaky")
    assert code == 0, err
    code, out, err = cli(capsys, "audit", tmp_path / "leaky", "--json", "--tasks", "2")
    rep = json.loads(out)
    assert code == 1 and "1 held-out document(s) found in training" in err
    assert [w["id"] for w in rep["sources"][0]["worst"]] == [m["ids"][leaked]]
    assert rep["sources"][0]["worst"][0]["exact"] and rep["sources"][0]["worst"][0]["share"] == 1.0


@pytest.mark.ray
def test_ray_executor_gives_the_local_result(corpus, tmp_path):
    ray = pytest.importorskip("ray", reason="ray is in the dev extra; CI installs it")
    c = corpus["music"]
    held = list(range(0, 300, 9))
    test = [(c["ids"][i], c["toks"][i]) for i in held]
    write_store(tmp_path, "music", "domain", {"train": [], "test": test}, corpus["enc"].path)
    train = [t for i, t in enumerate(c["toks"][:300]) if i not in held]
    files = [TrainFile(str(write_samples(tmp_path / f"s{k}.bin", train[k::3], 128)), "<u2", 129) for k in range(3)]
    store = open_store(tmp_path, "music")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    try:
        got = audit([store], files, tmp_path / "ray", boilerplate=False, executor=Executor("ray", tasks=3))
    finally:
        ray.shutdown()
    want = audit([store], files, tmp_path / "local", boilerplate=False)
    assert got["sources"] == want["sources"] and got["training"]["tasks"] == 3 and want["sources"][0]["with_overlap"] > 0
