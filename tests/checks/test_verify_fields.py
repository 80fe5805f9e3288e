"""verify re-derives every manifest field a consumer reads (issue 13, item 7): each edit
below passed a full verify before, and each is now named by it."""

import json

import pytest

from mixer.checks.verify import verify
from mixer.errors import MixerError
from mixer.mixing.build import build
from mixer.mixing.spec import MixSpec
from tests.synth import make_store

L = 16


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("vf") / "stores"
    make_store(root, "prose", "general", n_docs=300, base=1, seed=1, max_len=80)
    make_store(root, "music", "domain", n_docs=40, base=40_000, seed=2)
    make_store(root, "proofs", "domain", n_docs=30, base=50_000, seed=3)
    return root


@pytest.fixture(scope="module")
def mixes(stores, tmp_path_factory):
    root = tmp_path_factory.mktemp("vfmix")
    two = MixSpec(stores=str(stores), domain="music", fraction=0.1, tokens=48_000, seq_len=L, samples_per_shard=700,
                  window=(0.1, 1.0))
    nsrc = MixSpec(stores=str(stores), domain="music", general="prose", fraction=0.05, tokens=64_000, seq_len=L,
                   samples_per_shard=900, extra=[("proofs", 0.03)],
                   max_general_epochs=10)  # a general stream of several epochs is part of what verify must recount
    ft = MixSpec(stores=str(stores), domain="music", epochs=2.5, seq_len=L, samples_per_shard=100)
    for name, spec in (("two", two), ("nsrc", nsrc), ("ft", ft)):
        build(spec, root / name, progress=False)
    return root


def edited(mixes, tmp_path, which, edit):
    import shutil

    dst = tmp_path / which
    shutil.copytree(mixes / which, dst)
    m = json.loads((dst / "manifest.json").read_text())
    edit(m)
    (dst / "manifest.json").write_text(json.dumps(m, indent=2))
    return dst


def setter(path, value):
    def edit(m):
        *head, last = path
        node = m
        for key in head:
            node = node[key]
        node[last] = value(node[last]) if callable(value) else value
    return edit


EDITS = {
    # the fields issue 13 lists, then the rest a consumer reads
    "dtype": ("two", ["dtype"], "<i2", "dtype"),
    "vocab_size": ("two", ["tokenizer", "vocab_size"], 65535, "tokenizer.vocab_size"),
    "eos_id": ("two", ["tokenizer", "eos_id"], 65534, "tokenizer.eos_id"),
    "tokenizer hash": ("two", ["tokenizer", "sha256"], "synthetic-tol", "tokenizer.sha256"),
    "fraction requested": ("two", ["fraction", "requested"], 0.2, "fraction.requested"),
    "fraction achieved": ("two", ["fraction", "achieved"], lambda v: v + 1e-4, "fraction.achieved"),
    "fraction overall": ("two", ["fraction", "overall"], lambda v: v * 2, "fraction.overall"),
    "window": ("two", ["fraction", "window"], [0.2, 1.0], "fraction.window"),
    "domain": ("two", ["domain"], "proofs", "domain"),
    "general": ("two", ["general"], None, "general"),
    "kind": ("two", ["kind"], "finetune", "kind"),
    "tokens": ("two", ["tokens"], 48_016, "tokens"),
    "samples": ("two", ["samples"], 3001, "samples"),
    "seq_len": ("two", ["seq_len"], 17, "seq_len"),
    "seed": ("two", ["seed"], 1, "seed"),
    "name": ("two", ["name"], "music-f0.2", "name"),
    "epoch_start_samples": ("two", ["sources", 1, "epoch_start_samples"], lambda v: v[:-1] + [v[-1] + 1],
                            r"music: epoch_start_samples"),
    "train_tokens": ("two", ["sources", 1, "train_tokens"], lambda v: v + 1, "music: train_tokens"),
    "documents_full_passes": ("two", ["sources", 0, "documents_full_passes"], lambda v: {k: c + 1 for k, c in v.items()},
                              "prose: documents_full_passes"),
    "source samples": ("two", ["sources", 1, "samples"], lambda v: v + 1, "music: samples"),
    "source store": ("two", ["sources", 1, "store"], lambda v: v + "x", "music: store"),
    "per-shard source_samples": ("two", ["shards", 1, "source_samples"], lambda v: {**v, "0": v["0"] - 1, "1": v["1"] + 1},
                                 r"shards\[1\]\.source_samples"),
    "eval samples": ("two", ["eval", 0, "samples"], lambda v: v - 1, "samples"),
    "eval documents": ("two", ["eval", 1, "documents"], lambda v: v + 1, "documents"),
    "eval tokens_dropped": ("two", ["eval", 0, "tokens_dropped"], lambda v: v + 1, "tokens_dropped"),
    "eval role": ("two", ["eval", 0, "role"], "domain", "role"),
    "placed window_bound": ("nsrc", ["placed", 1, "window_bound"], 1.0, "proofs: window_bound"),
    "placed requested": ("nsrc", ["placed", 1, "requested"], 0.04, "proofs: requested fraction"),
    "finetune general samples": ("ft", ["sources", 0, "samples"], 3, "prose: samples"),
    "finetune epochs": ("ft", ["sources", 1, "epochs"], lambda v: round(v + 0.01, 6), "music: epochs"),
}


@pytest.mark.parametrize("what", list(EDITS))
def test_an_edited_field_is_named(mixes, tmp_path, what):
    which, path, value, named = EDITS[what]
    mix = edited(mixes, tmp_path, which, setter(path, value))
    with pytest.raises(MixerError, match=named):
        verify(mix, quick=True, progress=False)


def test_unedited_mixes_pass_and_a_quick_verify_reads_no_token(mixes):
    for which in ("two", "nsrc", "ft"):
        assert verify(mixes / which, progress=False)["ok"]
        assert verify(mixes / which, quick=True, progress=False)["ok"]


def test_an_edited_recipe_no_longer_describes_the_mix(mixes, tmp_path):
    """The recipe is a claim too: another seed orders the documents otherwise."""
    mix = edited(mixes, tmp_path, "two", lambda m: (m["recipe"].update(seed=5), m.update(seed=5)))
    with pytest.raises(MixerError, match="documents_full_passes"):
        verify(mix, quick=True, progress=False)
    mix = edited(mixes, tmp_path / "b", "two", setter(["recipe", "fraction"], 0.12))
    with pytest.raises(MixerError, match="manifest.json"):
        verify(mix, quick=True, progress=False)
