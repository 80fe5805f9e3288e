"""Which samples `mixer eval` scores: fixed, reproducible, and from the right split."""

from __future__ import annotations

import json

import numpy as np
import pytest
from mixutil import build, make_stores

from mixer.errors import MixerError
from mixer.formats.mix import MixFiles
from mixer.formats.run import best_eval, read_evals
from mixer.formats.store import open_store
from mixer.training.heldout import domain_train_sample, domain_val, stream_samples


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    stores = make_stores(root / "stores", general_docs=200, domain_docs=120)
    common = ("--tokens", "10K", "--seq-len", "32")
    return {"stores": stores,
            "spt": MixFiles.open(build(stores, root / "spt", "--fraction", "0.2", *common, "--samples-per-shard", "50")),
            "npt": MixFiles.open(build(stores, root / "npt", "--fraction", "0", *common)),
            "sub": MixFiles.open(build(stores, root / "sub", "--fraction", "0.2", "--domain-subset", "3K", *common)),
            "sub_npt": MixFiles.open(build(stores, root / "sub-npt", "--fraction", "0", "--domain-subset", "3K",
                                           *common))}


def _documents(store, sample_tokens: np.ndarray) -> list[int]:
    """Which train documents, in store order, make up a sample's stream (checked by content): whole
    documents, the last one cut where the samples end."""
    ends = store.doc_ends("train").astype(np.int64)
    starts = np.concatenate([[0], ends[:-1]])
    flat = np.asarray(store.tokens("train"))
    docs, pos = [], 0
    while pos < len(sample_tokens):
        rest = len(sample_tokens) - pos
        hit = [i for i in range(len(ends))
               if np.array_equal(flat[starts[i]:min(ends[i], starts[i] + rest)],
                                 sample_tokens[pos:pos + min(ends[i] - starts[i], rest)])]
        assert hit, "the sample is not made of train documents"
        docs.append(hit[0])
        pos += int(ends[hit[0]] - starts[hit[0]])
    return docs


def test_train_sample_is_seeded_whole_documents_shared_by_npt_and_spt(setup):
    store = open_store(setup["stores"], "music")
    spt = domain_train_sample([setup["spt"]], tokens=2000, seed=0)
    npt = domain_train_sample([setup["npt"]], tokens=2000, seed=0)
    np.testing.assert_array_equal(spt.samples, npt.samples)  # NPT is scored on the same documents as SPT
    assert spt.digest == npt.digest and spt.tokens >= 2000 and spt.samples.shape[1] == 33
    stream = np.concatenate([spt.samples[0], *[s[1:] for s in spt.samples[1:]]])
    docs = _documents(store, stream)
    assert docs == sorted(docs) and len(docs) <= spt.documents  # store order, whole documents
    assert docs != list(range(len(docs)))  # a random draw, not the first documents of the split
    other = domain_train_sample([setup["spt"]], tokens=2000, seed=1)
    assert other.digest != spt.digest
    assert domain_train_sample([setup["spt"]], tokens=2000, seed=0).digest == spt.digest  # deterministic


def test_train_sample_comes_from_the_documents_the_study_trains_on(setup):
    """With --domain-subset, the sample is drawn from the subset: data an SPT run saw."""
    from mixer.mixing.spec import plan_from_manifest

    store = open_store(setup["stores"], "music")
    subset = set(plan_from_manifest(setup["sub"].manifest).domain.stream.documents.tolist())
    got = domain_train_sample([setup["sub"]], tokens=1500, seed=0)
    stream = np.concatenate([got.samples[0], *[s[1:] for s in got.samples[1:]]])
    assert set(_documents(store, stream)) <= subset
    assert domain_train_sample([setup["sub_npt"]], tokens=1500, seed=0).digest == got.digest


def test_domain_val_is_the_stores_validation_split_in_eval_layout(setup):
    name, val = domain_val(setup["spt"])
    tokens = np.asarray(open_store(setup["stores"], "music").tokens("val"))
    assert name == "music-val"
    np.testing.assert_array_equal(val, stream_samples(tokens, 32))
    assert val.shape == ((len(tokens) - 1) // 32, 33)
    np.testing.assert_array_equal(val[1], tokens[32:65])  # one-token overlap


def test_eval_refuses_to_mix_train_samples_in_one_curve(setup, tmp_path, capsys, monkeypatch):
    from mixutil import run_cli

    from mixer.training import registry

    monkeypatch.setattr(registry, "TRAINERS", dict(registry.TRAINERS))
    monkeypatch.setattr(registry, "_loaded", {})
    registry.register("count", "count_trainer:TRAINER")
    run = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", "pretrain", str(setup["spt"].path), "--model", "bigram", "--trainer",
                           "count", "--out", str(run), "--checkpoints", "2")
    assert code == 0, err
    rows = read_evals(run)
    assert {r.domain_train_sample for r in rows} == {domain_train_sample([setup["spt"]]).describe()}
    lines = (run / "evals.jsonl").read_text().splitlines()
    (run / "evals.jsonl").write_text(lines[0] + "\n")
    code, _, err = run_cli(capsys, "eval", str(run), "--train-tokens", "2K")
    assert code == 1 and "another sample" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(capsys, "eval", str(run))
    assert code == 0 and [json.loads(x) for x in (run / "evals.jsonl").read_text().splitlines()] == [
        json.loads(x) for x in lines]


def test_best_eval_ignores_missing_and_nan_losses(tmp_path):
    losses = {"a": "null", "b": "NaN", "c": "2.0", "d": "2.5"}
    (tmp_path / "evals.jsonl").write_text("".join(
        f'{{"checkpoint": "{c}", "step": {i}, "tokens": {i * 10}, "domain_test_loss": {v}}}\n'
        for i, (c, v) in enumerate(losses.items())))
    rows = read_evals(tmp_path)
    assert [r.checkpoint for r in rows] == ["a", "b", "c", "d"] and rows[1].domain_test_loss is None
    assert best_eval(rows).checkpoint == "c"
    assert best_eval(rows[:2]) is None
    assert best_eval(rows, "val") is None  # nothing was scored on a validation split
    with pytest.raises(ValueError, match="select on 'train'"):
        best_eval(rows, "train")
