"""Which samples `mixer eval` scores: fixed, reproducible, and from the right split."""

from __future__ import annotations

import numpy as np
import pytest
from mixutil import build, make_stores

from mixer.formats.run import best_eval, read_evals
from mixer.training.evaluate import domain_train_samples, store_train_samples
from mixer.formats.store import open_store
from mixer.formats.mix import MixFiles


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    stores = make_stores(root / "stores", general_docs=200, domain_docs=30)
    return {"stores": stores,
            "spt": MixFiles.open(build(stores, root / "spt", "--fraction", "0.2", "--tokens", "10K", "--seq-len", "32",
                                       "--samples-per-shard", "50")),
            "npt": MixFiles.open(build(stores, root / "npt", "--fraction", "0", "--tokens", "10K", "--seq-len", "32"))}


def test_domain_train_sample_is_the_mixs_first_domain_samples(setup):
    mix = setup["spt"]
    got = domain_train_samples(mix, 7)
    src = mix.source("domain")["id"]
    allp = np.concatenate([np.asarray(mix.provenance(k)["source"]) for k in range(len(mix.manifest["shards"]))])
    rows = np.flatnonzero(allp == src)[:7]
    np.testing.assert_array_equal(got, mix.read(0, mix.samples)[rows])
    assert domain_train_samples(setup["npt"], 7) is None  # NPT holds no domain samples


def test_npt_falls_back_to_the_domain_stores_train_split(setup):
    got = store_train_samples(setup["npt"], 5)
    tokens = np.asarray(open_store(setup["stores"], "music").tokens("train"))
    assert got.shape == (5, 33)
    for i in range(5):  # stream layout: one-token overlap between consecutive samples
        np.testing.assert_array_equal(got[i], tokens[i * 32 : i * 32 + 33])


def test_best_eval_ignores_missing_and_nan_losses(tmp_path):
    losses = {"a": "null", "b": "NaN", "c": "2.0", "d": "2.5"}
    (tmp_path / "evals.jsonl").write_text("".join(
        f'{{"checkpoint": "{c}", "step": {i}, "tokens": {i * 10}, "domain_test_loss": {v}}}\n'
        for i, (c, v) in enumerate(losses.items())))
    rows = read_evals(tmp_path)
    assert [r.checkpoint for r in rows] == ["a", "b", "c", "d"] and rows[1].domain_test_loss is None
    assert best_eval(rows).checkpoint == "c"
    assert best_eval(rows[:2]) is None
