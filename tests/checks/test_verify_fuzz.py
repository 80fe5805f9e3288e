"""1,000 random single-byte or single-digit edits across stores, mixes and their manifests
(issue 13): each is caught by verify (one line, MixerError), or the test shows it changes
nothing any consumer reads: a field listed in READ_BY_NOTHING, or a recipe edit after which
the build's own code still makes exactly this mix (same plan, same shard bytes).

Mixes: an N-source mix with a window and a domain subset, and a compute-matched recipe
(a pretrain stage, then a finetune stage that excludes the documents the first touched,
with its exposure record). Edits are spread over fields first, then over the leaves of a
field, so a rare field gets as many edits as one with many entries.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest

from mixer.checks.verify import verify
from mixer.errors import MixerError
from mixer.formats.checksum import checksum_file
from mixer.mixing.build import build
from mixer.mixing.shards import shard_samples
from mixer.mixing.spec import MixSpec, resolve
from mixer.mixing.stages import build_recipe
from tests.synth import make_store

N_EDITS = 1000
L = 16
RECIPES = Path(__file__).resolve().parents[2] / "recipes" / "stages"
READ_BY_NOTHING = {
    "mixer_version": "the mixer version that wrote the mix: for people reading the manifest",
    "stage.recipe": "the recipe file a stage came from: for people (its settings are in recipe)",
    "stage.vars.*": "the recipe's variables: for people (their effect is in recipe)",
}
# keys that name data (stores, files, pass counts, source ids), not fields
_DATA_KEYS = {"store_checksums", "files", "documents_full_passes", "source_samples", "documents_total_full_passes", "vars"}


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    st, st2 = root / "stores", root / "stores2"
    for d in (st, st2):
        make_store(d, "prose", "general", n_docs=300, base=1, seed=1, max_len=80)
        make_store(d, "music", "domain", n_docs=40, base=40_000, seed=2)
    make_store(st, "proofs", "domain", n_docs=30, base=50_000, seed=3)
    make_store(st, "code", "general", n_docs=200, base=60_000, seed=4, max_len=60)
    build(MixSpec(stores=str(st), domain="music", general="prose", fraction=0.05, tokens=64_000, seq_len=L,
                  samples_per_shard=900, extra=[("proofs", 0.03), ("code", 0.2)], window=(0.1, 1.0),
                  domain_subset_tokens=400, subset_seed=3), root / "nsrc", progress=False)
    build_recipe(RECIPES / "compute-matched.toml", st2, root / "cm",
                 {"domain": "music", "tokens": "40K", "seq_len": L, "lam": 0.5}, progress=False)
    mixes = {"nsrc": root / "nsrc", "pretrain": root / "cm" / "pretrain", "posttrain": root / "cm" / "posttrain"}
    return mixes, {st: mixes["nsrc"], st2: mixes["posttrain"]}


# -- edits ----------------------------------------------------------------------------


def leaves(node, path=()):
    """(path, 'value' | 'key') of every editable leaf: numbers, strings, numeric dict keys."""
    if isinstance(node, dict):
        for k, v in node.items():
            if path and path[-1] in _DATA_KEYS and any(c.isdigit() for c in k):
                yield path + (k,), "key"
            yield from leaves(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from leaves(v, path + (i,))
    elif isinstance(node, (int, float, str)) and not isinstance(node, bool):
        yield path, "value"


def label(path) -> str:
    out = []
    for i, p in enumerate(path):
        if isinstance(p, int):
            out.append("[]")
        else:
            out.append(("." if out else "") + ("*" if i and path[i - 1] in _DATA_KEYS else p))
    return "".join(out)


def edit_text(text: str, rng: random.Random) -> str | None:
    """One digit changed (or, with none, one letter)."""
    spots = [i for i, c in enumerate(text) if c.isdigit()] or [i for i, c in enumerate(text) if c.isalpha()]
    if not spots:
        return None
    i = rng.choice(spots)
    pool = "0123456789" if text[i].isdigit() else ("abcdef" if text[i] in "abcdef" else "abcdefghijklmnopqrstuvwxyz")
    return text[:i] + rng.choice([c for c in pool if c != text[i]]) + text[i + 1 :]


def edit_leaf(m: dict, path, kind: str, rng: random.Random) -> bool:
    """Edit one leaf of the manifest in place; False when no edit changes its value."""
    *head, last = path
    node = m
    for p in head:
        node = node[p]
    for _ in range(10):
        if kind == "key":
            new = edit_text(last, rng)
            if new is None or new in node:
                continue
            node[new] = node.pop(last)
            return True
        old = node[last]
        text = edit_text(old if isinstance(old, str) else json.dumps(old), rng)
        if text is None:
            return False
        try:
            new = text if isinstance(old, str) else json.loads(text)
        except ValueError:  # e.g. a leading zero: not JSON; try another digit
            continue
        if new != old or type(new) is not type(old):
            node[last] = new
            return True
    return False


def flip_byte(f: Path, rng: random.Random, lo: int = 0) -> None:
    data = bytearray(f.read_bytes())
    i = rng.randrange(lo, len(data))
    data[i] = rng.choice([b for b in range(256) if b != data[i]])
    f.write_bytes(bytes(data))


def npy_data_start(f: Path) -> int:
    with open(f, "rb") as fh:
        np.lib.format.read_array_header_1_0(fh) if np.lib.format.read_magic(fh) == (1, 0) else \
            np.lib.format.read_array_header_2_0(fh)
        return fh.tell()


# -- what an uncaught edit is ---------------------------------------------------------


def describes_the_same_mix(mix: Path, recipe: dict) -> bool:
    """The build's own code, given the edited recipe, makes exactly this mix."""
    original = json.loads((mix / "manifest.json").read_text())
    try:
        edited, before = resolve(MixSpec.from_json(recipe)), resolve(MixSpec.from_json(original["recipe"]))
    except (MixerError, TypeError, ValueError):
        return False
    if edited.summary() != before.summary():
        return False
    for k, rec in enumerate(original["shards"]):
        x, prov = shard_samples(edited, k)
        if x.tobytes() != (mix / rec["file"]).read_bytes() or not np.array_equal(prov, np.load(mix / rec["provenance"])):
            return False
    return True


def outcome(mix: Path) -> str:
    for quick in (True, False):
        try:
            verify(mix, quick=quick, progress=False)
        except MixerError as e:
            assert "\n" not in str(e)
            return "caught"
    return "passed"


# -- the fuzz -------------------------------------------------------------------------


def test_every_edit_is_caught_or_read_by_nothing(chain):
    mixes, stores = chain
    for mix in mixes.values():
        assert verify(mix, progress=False)["ok"]
    rng = random.Random(13)
    texts = {name: (mix / "manifest.json").read_text() for name, mix in mixes.items()}
    fields = {name: defaultdict(list) for name in mixes}
    for name, text in texts.items():
        for path, kind in leaves(json.loads(text)):
            fields[name][label(path)].append((path, kind))
    tally: dict[str, Counter] = defaultdict(Counter)
    missed = []
    kinds = ["manifest"] * 11 + ["mix file"] * 3 + ["forged"] * 3 + ["store"] * 3
    done = 0
    while done < N_EDITS:
        kind = rng.choice(kinds)
        name = rng.choice(sorted(mixes))
        mix = mixes[name]
        saved: dict[Path, bytes] = {}

        def keep(f: Path) -> Path:
            saved.setdefault(f, f.read_bytes())
            return f

        m = json.loads(texts[name])
        if kind == "manifest":
            what = rng.choice(sorted(fields[name]))
            path, leaf = rng.choice(fields[name][what])
            if not edit_leaf(m, path, leaf, rng):
                continue
            keep(mix / "manifest.json").write_text(json.dumps(m, indent=2))
        elif kind in ("mix file", "forged"):
            files = [(f"shards[{k}]", "xxh3_128", r["file"]) for k, r in enumerate(m["shards"])]
            files += [(f"shards[{k}]", "provenance_xxh3_128", r["provenance"]) for k, r in enumerate(m["shards"])]
            files += [(f"eval[{k}]", "xxh3_128", r["file"]) for k, r in enumerate(m["eval"]) if r["samples"]]
            where, key, rel = rng.choice(files)
            what = f"{kind}: {'provenance' if rel.endswith('.npy') else rel.split('/')[0].split('-')[0]}"
            f = keep(mix / rel)
            flip_byte(f, rng, lo=npy_data_start(f) if kind == "forged" and rel.endswith(".npy") else 0)
            if kind == "forged":  # the checksum fixed too: only the content can tell
                lst, i = re.match(r"(\w+)\[(\d+)\]", where).groups()
                m[lst][int(i)][key] = checksum_file(f)
                keep(mix / "manifest.json").write_text(json.dumps(m, indent=2))
        else:
            store_root = rng.choice(sorted(stores))
            mix = stores[store_root]
            f = keep(rng.choice(sorted(p for p in store_root.glob("*/*") if p.stat().st_size)))
            what = f"store: {f.name}"
            if f.name == "store.json":
                f.write_text(edit_text(f.read_text(), rng))
            else:
                flip_byte(f, rng)
        try:
            result = outcome(mix)
            if result == "passed" and kind == "manifest":
                if what in READ_BY_NOTHING or re.sub(r"\.[^.]*$", ".*", what) in READ_BY_NOTHING:
                    result = "read by nothing"
                elif what.startswith("recipe.") and describes_the_same_mix(mix, m["recipe"]):
                    result = "same mix"
        except Exception as e:  # anything but a MixerError is a crash
            result = f"crashed ({type(e).__name__}: {e})"
        finally:
            for f, data in saved.items():
                f.write_bytes(data)
        tally[what][result] += 1
        if result not in ("caught", "read by nothing", "same mix"):
            missed.append(f"{name} {what}: {result}")
        done += 1
    for mix in mixes.values():
        assert verify(mix, progress=False)["ok"]  # every edit was undone
    table = "\n".join(f"  {what:<58} {sum(c.values()):>3} edits: " + ", ".join(f"{n} {r}" for r, n in sorted(c.items()))
                      for what, c in sorted(tally.items()))
    assert not missed, f"{len(missed)} of {N_EDITS} edits passed verify:\n" + "\n".join(missed[:20]) + "\n" + table
    caught = sum(c["caught"] for c in tally.values())
    assert caught >= 0.9 * N_EDITS, table
    print(f"\n{caught} of {N_EDITS} edits caught; per field:\n{table}")
