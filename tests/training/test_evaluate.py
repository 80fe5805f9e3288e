"""Which samples `mixer eval` scores: fixed by the mix, reproducible, and from the right split."""

from __future__ import annotations

import json

import numpy as np
import pytest
from mixutil import build, make_stores

from mixer.errors import MixerError
from mixer.formats.mix import MixFiles
from mixer.formats.run import best_eval, read_evals
from mixer.formats.store import open_store
from mixer.formats.sample_sets import (SELECTION, TRAIN_LOSS, TRAIN_SAMPLE_TOKENS, sample_set, stream_samples,
                                       train_sample_documents)


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


def _train_sample(mix: MixFiles):
    return sample_set(mix, TRAIN_LOSS)


def _stream(samples: np.ndarray) -> np.ndarray:
    return np.concatenate([samples[0], *[s[1:] for s in samples[1:]]])


def test_train_sample_is_seeded_whole_documents_shared_by_npt_and_spt(setup):
    store = open_store(setup["stores"], "music")
    spt, npt = _train_sample(setup["spt"]), _train_sample(setup["npt"])
    np.testing.assert_array_equal(spt.samples, npt.samples)  # NPT is scored on the same documents as SPT
    assert spt.describe() == npt.describe()
    assert spt.record["tokens"] >= min(TRAIN_SAMPLE_TOKENS, store.n_tokens("train"))
    assert spt.samples.shape[1] == 33 and spt.record["drawn_from"] == "all"
    docs = _documents(store, _stream(np.asarray(spt.samples)))
    assert docs == sorted(docs) and len(docs) <= spt.record["documents"]  # store order, whole documents
    lengths = store.doc_lengths("train")
    everything = np.arange(len(lengths))
    assert docs == train_sample_documents(lengths, everything, TRAIN_SAMPLE_TOKENS, 0).tolist()[:len(docs)]
    small = train_sample_documents(lengths, everything, 2000, 0)
    assert small.tolist() != list(range(len(small)))  # a random draw, not the first documents of the split
    assert train_sample_documents(lengths, everything, 2000, 1).tolist() != small.tolist()
    assert train_sample_documents(lengths, everything, 2000, 0).tolist() == small.tolist()  # deterministic


def test_train_sample_comes_from_the_documents_the_study_trains_on(setup):
    """With --domain-subset, the sample is drawn from the subset: data an SPT run saw."""
    from mixer.mixing.spec import plan_from_manifest

    store = open_store(setup["stores"], "music")
    subset = set(plan_from_manifest(setup["sub"].manifest).domain.stream.documents.tolist())
    got = _train_sample(setup["sub"])
    assert got.record["drawn_from"] == "subset" and got.record["drawn_from_documents"] == len(subset)
    assert set(_documents(store, _stream(np.asarray(got.samples)))) <= subset
    assert _train_sample(setup["sub_npt"]).describe() == got.describe()


def test_domain_val_is_the_stores_validation_split_in_eval_layout(setup):
    val = sample_set(setup["spt"], SELECTION)
    tokens = np.asarray(open_store(setup["stores"], "music").tokens("val"))
    assert val.name == "music-val" and val.path == setup["spt"].path / "eval" / "music-val.bin"
    np.testing.assert_array_equal(val.samples, stream_samples(tokens, 32))
    assert val.samples.shape == ((len(tokens) - 1) // 32, 33)
    np.testing.assert_array_equal(val.samples[1], tokens[32:65])  # one-token overlap


def test_a_damaged_sample_set_is_refused_in_one_line(setup, tmp_path):
    import shutil

    mix = shutil.copytree(setup["spt"].path, tmp_path / "mix")
    f = mix / "eval" / "music-val.bin"
    data = bytearray(f.read_bytes())
    data[5] ^= 1
    f.write_bytes(bytes(data))
    with pytest.raises(MixerError, match="checksum differs"):
        sample_set(MixFiles.open(mix), SELECTION)
    f.write_bytes(bytes(data[:-2]))
    with pytest.raises(MixerError, match="bytes, expected"):
        sample_set(MixFiles.open(mix), SELECTION)


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
    assert {r.domain_train_sample for r in rows} == {_train_sample(setup["spt"]).describe()}
    lines = (run / "evals.jsonl").read_text().splitlines()
    # the first row scored on another sample (an evals.jsonl of an earlier build of the mix)
    other = json.loads(lines[0]) | {"domain_train_sample": "9 docs/999 tokens/000000000000"}
    (run / "evals.jsonl").write_text(json.dumps(other) + "\n")
    code, _, err = run_cli(capsys, "eval", str(run))
    assert code == 1 and "another sample" in err and len(err.strip().splitlines()) == 1
    (run / "evals.jsonl").write_text(lines[0] + "\n")
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


def test_the_score_in_bf16_autocast_is_the_float32_score_within_bf16_rounding():
    """A GPU run is scored under bf16 autocast (LitGPT.load_for_eval); the same code on CPU."""
    import torch
    from litgpt.model import GPT, Config

    from mixer.training.evaluate import mean_loss
    from mixer_litgpt.presets import get_preset

    torch.manual_seed(0)
    model = GPT(Config(**get_preset("tiny").model_config(128, 32))).eval()
    samples = np.random.default_rng(0).integers(0, 127, size=(40, 33))
    full = mean_loss(model, samples, batch_size=16, device="cpu")
    half = mean_loss(model, samples, batch_size=16, device="cpu", autocast="bfloat16")
    assert half != full and half == pytest.approx(full, abs=0.02)
