"""Recall and false alarms of `mixer audit` and of the split's near-duplicate grouping on the
real sample corpora. Needs `mixer fetch-samples`.

    .venv/bin/python bench/audit_recall.py --victims 40 --json /tmp/audit-recall.json
    .venv/bin/python bench/audit_recall.py --baseline /tmp/main-code   # the same with other code, for comparison

Planted kinds, per corpus (ABC tunes, Coq files, Python/Perl documentation pages; `--victims`
documents each, drawn at random among those of a middling length):
- `sub5`, `sub10`, `sub20`: a copy of the document with 5, 10, 20% of its non-whitespace
  characters substituted (each by another character of the document);
- `quote20`: 20 tokens of the document (cut at whitespace) pasted in quotation marks into
  another source's training text, where its first token loses its leading space.
Split recall: the copy shares a near-duplicate cluster with its original when the corpus and
the copies are clustered together (mixer.ingest.neardup), so both land on one side. Audit
recall: the documents held out, the rest of the corpus (less what the split clusters with
them) and the copies as one source's training data (a stitched stream, the copies of one
kind at a time), the document flagged (for a quote: by another source's data).
False alarms: `recipes/samples.toml` tokenized, three mixes built (music, proofs, chem with
prose, as tests/checks/test_audit_real.py builds them), audited by default and with
--strict: flagged held-out documents per corpus. With `--baseline DIR` every figure is
measured again with DIR's mixer package (a process with DIR first on PYTHONPATH).
"""

from __future__ import annotations

import os
import sys

# bench/tokenize.py would shadow the standard library's tokenize (numpy and loguru import it)
sys.path[:] = [p for p in sys.path if os.path.realpath(p or ".") != os.path.dirname(os.path.realpath(__file__))]

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "checks")]  # the helpers the tests use
from audit_synth import stream_of, substitute_characters, write_stitched  # noqa: E402
from storeutil import Encoder, read_docs, write_store  # noqa: E402

CORPORA = {"music": (["music"], 300, 3000), "proofs": (["proofs"], 1500, 20_000),
           "prose": (["pydocs", "perldocs"], 2000, 30_000)}
FRACTIONS = (0.05, 0.10, 0.20)
SEQ_LEN = 2048


def corpus_docs(cache: Path, corpus: str) -> list[tuple[str, str]]:
    return [d for name in CORPORA[corpus][0] for d in read_docs(cache, name)]


def pick(docs: list[tuple[str, str]], corpus: str, count: int, seed: int) -> list[int]:
    lo, hi = CORPORA[corpus][1:]
    ok = [k for k, (_, t) in enumerate(docs) if lo <= len(t) <= hi]
    return sorted(np.random.default_rng(seed).choice(ok, min(count, len(ok)), replace=False).tolist())


def split_recall(docs: list[tuple[str, str]], victims: list[int], seed: int) -> dict:
    """Share of copies clustered with their original, per edit fraction, and cluster sizes."""
    from mixer.ingest.neardup import clusters, signatures
    from mixer.ingest.split import normalize

    rng = np.random.default_rng(seed)
    norm = [normalize(t) for _, t in docs]
    out = {}
    for f in FRACTIONS:
        copies = [normalize(substitute_characters(docs[k][1], f, rng)) for k in victims]
        labels = clusters(signatures(norm + copies))
        together = [labels[k] == labels[len(docs) + j] for j, k in enumerate(victims)]
        out[f"sub{round(100 * f)}"] = float(np.mean(together))
    labels = clusters(signatures(norm))
    sizes = np.bincount(labels)
    out["clusters"] = {"documents_in_clusters": int(sizes[sizes > 1].sum()), "largest": int(sizes.max())}
    return out


def quote_in(host: str, text: str, enc: Encoder, rng: np.random.Generator, keep: bool = False):
    """`host` with 20 tokens of `text` (cut at whitespace) pasted in quotation marks; with
    `keep`, the tokens of the result and the quote's 20 tokens."""
    ids = enc([text])[0]
    piece = [enc.decode(ids[i : i + 1]) for i in range(len(ids))]
    # cut at whitespace as a user cuts: before a word (a token " word"), after a word (the
    # next token starts with whitespace), never inside a run of whitespace
    word = [len(p) > 1 and p[0] == " " and not p[1].isspace() for p in piece]
    ends = [bool(p) and not p[-1].isspace() for p in piece]
    starts = [i for i in range(len(ids) // 3, len(ids) - 21)
              if word[i] and ends[i + 19] and piece[i + 20][:1].isspace()]
    if not starts:
        return None
    a = starts[int(rng.integers(len(starts)))]
    cut = len(host) // 2
    pasted = host[:cut] + ' "' + enc.decode(ids[a : a + 20]).strip() + '" ' + host[cut:]
    if not keep:
        return pasted
    at = len(enc([host[:cut]])[0])  # the quote's tokens start about here in the result's
    return enc([pasted])[0][max(0, at - 8) : at + 40], ids[a : a + 20]


def audit_recall(docs: list[tuple[str, str]], victims: list[int], enc: Encoder, tmp: Path, seed: int,
                 hosts: list[str]) -> dict:
    """Share of victims the audit flags, per planted kind."""
    from mixer.checks.audit import audit
    from mixer.checks.train_streams import TrainFile
    from mixer.formats.store import open_store
    from mixer.ingest.neardup import clusters, signatures
    from mixer.ingest.split import normalize

    rng = np.random.default_rng(seed)
    vset = set(victims)
    labels = clusters(signatures([normalize(t) for _, t in docs]))
    held_labels = {int(labels[k]) for k in victims}
    rest = [t for k, (_, t) in enumerate(docs) if k not in vset and int(labels[k]) not in held_labels]
    write_store(tmp / "stores", "held", "domain", {"train": [], "test": [(docs[k][0], enc([docs[k][1]])[0])
                                                                        for k in victims]}, enc.path)
    store = open_store(tmp / "stores", "held")
    rest_tokens = enc(rest)
    out = {}
    for kind in [f"sub{round(100 * f)}" for f in FRACTIONS] + ["quote20"]:
        streams = {0: stream_of(rest_tokens)}
        planted = {docs[k][0] for k in victims}
        if kind == "quote20":  # another source (1): hosts with one quote each
            quoted = [quote_in(hosts[j % len(hosts)], docs[k][1], enc, rng) for j, k in enumerate(victims)]
            planted = {docs[k][0] for k, q in zip(victims, quoted) if q}  # a document without a word-cut window: none
            streams[1] = stream_of(enc([q for q in quoted if q]))
        else:
            f = int(kind[3:]) / 100
            streams[0] = np.concatenate([streams[0], stream_of(enc([substitute_characters(docs[k][1], f, rng)
                                                                     for k in victims]))])
        folder = tmp / f"mix-{kind}"
        pairs = write_stitched(folder, streams, SEQ_LEN, shards=2)
        files = [TrainFile(str(b), "<u2", SEQ_LEN + 1, str(p)) for b, p in pairs]
        rep = audit([store], files, tmp / f"work-{kind}", source_ids={"held": 0})
        flagged = {w["id"]: w["flagged"] for w in rep["sources"][0]["worst"] if w["flagged"]}
        out[kind] = len(planted & set(flagged)) / max(len(planted), 1)
        out[kind + "_planted"] = len(planted)
        out[kind + "_rules"] = sorted({r for v in flagged.values() for r in v})
        out[kind + "_missed"] = sorted(planted - set(flagged))[:10]
        out[kind + "_false"] = sorted(set(flagged) - planted)  # flagged, not planted: a false alarm
    return out


def false_alarms(cache: Path, tmp: Path) -> dict:
    """Flagged held-out documents of clean real mixes, default and --strict, per corpus."""
    env = {**os.environ, "MIXER_CACHE": str(cache)}
    mixer = [sys.executable, "-m", "mixer"]  # run from `tmp`: -m puts the working folder first on sys.path
    subprocess.run(mixer + ["tokenize", "--recipe", str(ROOT / "recipes" / "samples.toml"), "--stores",
                            str(tmp / "stores")], env=env, check=True, capture_output=True, cwd=tmp)
    out: dict = {}
    for domain in ("music", "proofs", "chem"):
        mix = tmp / f"mix-{domain}"
        subprocess.run(mixer + ["build", "--stores", str(tmp / "stores"), "--domain", domain, "--general", "prose",
                                "--fraction", "0.3", "--tokens", "6M", "--seq-len", "512", "--samples-per-shard",
                                "2000", "--out", str(mix), "--quiet"], env=env, check=True, capture_output=True,
                       cwd=tmp)
        for strict in (False, True):
            p = subprocess.run(mixer + ["audit", str(mix), "--json"] + (["--strict"] if strict else []), env=env,
                               capture_output=True, text=True, cwd=tmp)
            rep = json.loads(p.stdout)
            for s in rep["sources"]:
                if s["source"] == "prose" and domain != "music":
                    continue  # the same prose val split in every mix: counted once
                row = out.setdefault(s["source"], {"documents": s["documents"]})
                row["strict" if strict else "default"] = s["flagged"]
                if not strict:
                    row.update(max_near_copy=s["max_near_copy"], max_near_text=s.get("max_near_text"),
                               longest_quote=s["longest_quote"])
    return out


def quote_edges(cache: Path, enc: Encoder, count: int = 300) -> dict:
    """How many of a quote's 20 tokens its new context changes: for `count` documents per
    corpus, 20 tokens cut at whitespace, pasted in quotation marks into another corpus's
    text; 20 minus the longest run of them found in the tokens of the result."""
    rng = np.random.default_rng(0)
    out = {}
    for corpus in CORPORA:
        hosts = [t for c in CORPORA if c != corpus for _, t in corpus_docs(cache, c)[:100]]
        lost = []
        for _, text in corpus_docs(cache, corpus)[:count]:
            pasted = quote_in(hosts[int(rng.integers(len(hosts)))], text, enc, rng, keep=True)
            if pasted is None:
                continue
            toks, quote = pasted
            w = {k: {tuple(x) for x in np.lib.stride_tricks.sliding_window_view(toks, k)} for k in range(1, 21)}
            best = max((k for k in range(1, 21) for s in range(21 - k) if tuple(quote[s : s + k]) in w[k]), default=0)
            lost.append(20 - best)
        out[corpus] = np.bincount(lost, minlength=21).tolist()
    return out


def measure(args: argparse.Namespace) -> dict:
    from mixer.demo_corpora.fetch import default_cache

    cache = default_cache()
    enc = Encoder(cache / "tokenizers" / "gpt2" / "tokenizer.json")
    res: dict = {"split": {}, "audit": {}}
    with tempfile.TemporaryDirectory(prefix="mixer-bench-recall-") as tmp:
        for corpus in args.corpora:
            t = time.perf_counter()
            docs = corpus_docs(cache, corpus)
            victims = pick(docs, corpus, args.victims, args.seed)
            hosts = [t for c in CORPORA if c != corpus for _, t in corpus_docs(cache, c)[:50]]
            res["split"][corpus] = split_recall(docs, victims, args.seed)
            (Path(tmp) / corpus).mkdir()
            res["audit"][corpus] = audit_recall(docs, victims, enc, Path(tmp) / corpus, args.seed, hosts)
            res["audit"][corpus]["victims"] = len(victims)
            print(f"{corpus}: {len(victims)} victims; split {res['split'][corpus]}; audit {res['audit'][corpus]} "
                  f"({time.perf_counter() - t:.0f} s)", file=sys.stderr, flush=True)
        if not args.skip_mixes:
            res["false_alarms"] = false_alarms(cache, Path(tmp))
    res["quote_edges"] = quote_edges(cache, enc)
    return res


def table(res: dict, name: str) -> str:
    lines = [f"[{name}] recall per planted kind (share of victims):",
             "| corpus | victims | split: sub5 | sub10 | sub20 | largest cluster | audit: sub5 | sub10 | sub20 | quote20 |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for c, a in res["audit"].items():
        s = res["split"][c]
        lines.append(f"| {c} | {a['victims']} | {s['sub5']:.2f} | {s['sub10']:.2f} | {s['sub20']:.2f} | "
                     f"{s['clusters']['largest']} | {a['sub5']:.2f} | {a['sub10']:.2f} | {a['sub20']:.2f} | "
                     f"{a['quote20']:.2f} ({a.get('quote20_planted', a['victims'])} planted) |")
    if "false_alarms" in res:
        lines += [f"[{name}] false alarms on clean real mixes (flagged held-out documents):",
                  "| held out | documents | default | --strict | max near copy | max near text | longest quote |",
                  "|---|---|---|---|---|---|---|"]
        for src, r in res["false_alarms"].items():
            lines.append(f"| {src} | {r['documents']} | {r['default']} | {r['strict']} | {r['max_near_copy']:.2f} | "
                         f"{r['max_near_text'] if r['max_near_text'] is not None else '-'} | {r['longest_quote']} |")
        tot = sum(r["documents"] for r in res["false_alarms"].values())
        lines.append(f"total: {sum(r['default'] for r in res['false_alarms'].values())} of {tot} by default, "
                     f"{sum(r['strict'] for r in res['false_alarms'].values())} of {tot} with --strict")
    for corpus, hist in res.get("quote_edges", {}).items():
        n = sum(hist)
        lines.append(f"quote edges, {corpus}: of {n} pasted 20-token quotes, tokens changed by the paste: "
                     + ", ".join(f"{k}: {100 * c / n:.0f}%" for k, c in enumerate(hist[:5]))
                     + f", 5+: {100 * sum(hist[5:]) / n:.0f}%")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpora", nargs="+", default=list(CORPORA), choices=list(CORPORA))
    ap.add_argument("--victims", type=int, default=40, help="Documents planted per corpus and kind.")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-mixes", action="store_true", help="Recall only, no clean-mix false alarms.")
    ap.add_argument("--baseline", type=Path, help="Measure again with this folder's mixer package.")
    ap.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if args.inner:
        print(json.dumps(measure(args)))
        return
    runs = {"this": None} | ({"baseline": str(args.baseline.resolve())} if args.baseline else {})
    results = {}
    for name, code in runs.items():
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([code or str(ROOT), env.get("PYTHONPATH", "")])
        argv = [sys.executable, __file__, "--inner", "--victims", str(args.victims), "--seed", str(args.seed),
                "--corpora", *args.corpora] + (["--skip-mixes"] if args.skip_mixes else [])
        p = subprocess.run(argv, env=env, stdout=subprocess.PIPE, text=True)
        if p.returncode:
            raise SystemExit(f"{name}: exit {p.returncode}")
        results[name] = json.loads(p.stdout.splitlines()[-1])
        print(table(results[name], name), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
