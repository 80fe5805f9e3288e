"""The LitGPT DataModule over a real `mixer build` mix: stored order, resumable, no wrap-around."""

from __future__ import annotations

import numpy as np
import pytest
from mixutil import build, make_stores
from litgpt.utils import CycleIterator

from mixer_litgpt import MixData
from mixer.formats.mix import MixFileError, MixFiles

SEQ = 32


@pytest.fixture(scope="module")
def mix(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_stores(root / "stores", general_docs=300, domain_docs=30)
    # several shards, so reads cross shard boundaries
    return build(root / "stores", root / "mix", "--fraction", "0.2", "--tokens", "20K", "--seq-len", str(SEQ),
                 "--samples-per-shard", "100")


def stored(mix) -> np.ndarray:
    files = MixFiles.open(mix)
    return np.concatenate([np.asarray(files.shard(k)) for k in range(len(files.manifest["shards"]))])


def cycle_like_litgpt(loader, max_iters: int) -> list[np.ndarray]:
    """litgpt.pretrain.fit's loop: pull a batch, then check the iteration count."""
    out: list[np.ndarray] = []
    for batch in CycleIterator(loader):
        if len(out) >= max_iters:
            break
        out.append(batch.numpy())
    return out


def module(mix, max_tokens: int, batch: int = 8, **kw) -> MixData:
    data = MixData(mix=mix, max_tokens=max_tokens, **kw)
    data.connect(batch_size=batch, max_seq_length=SEQ)
    data.setup()
    return data


def test_serves_samples_in_stored_order_across_shards(mix):
    files = MixFiles.open(mix)
    assert len(files.manifest["shards"]) > 1
    data = module(mix, max_tokens=files.samples // 8 * 8 * SEQ)
    got = np.concatenate([b.numpy() for b in data.train_dataloader()])
    want = stored(mix)
    assert got.shape == (files.samples // 8 * 8, SEQ + 1)
    np.testing.assert_array_equal(got, want[: len(got)])


def test_state_dict_resumes_at_the_next_unseen_sample(mix):
    data = module(mix, max_tokens=40 * 8 * SEQ)
    loader = data.train_dataloader()
    it = iter(loader)
    first = [next(it).numpy() for _ in range(5)]
    state = loader.state_dict()
    assert state["iteration"] == 5
    again = module(mix, max_tokens=40 * 8 * SEQ).train_dataloader()
    again.load_state_dict(state)
    np.testing.assert_array_equal(next(iter(again)).numpy(), stored(mix)[40:48])
    np.testing.assert_array_equal(np.concatenate(first), stored(mix)[:40])
    # another micro-batch, the global batch unchanged: the same next sample
    smaller = module(mix, max_tokens=40 * 8 * SEQ, batch=4).train_dataloader()
    smaller.load_state_dict(state)
    np.testing.assert_array_equal(next(iter(smaller)).numpy(), stored(mix)[40:44])
    with pytest.raises(MixFileError, match="inside a micro-batch step of this run"):
        module(mix, max_tokens=40 * 8 * SEQ, batch=16).train_dataloader().load_state_dict(state)


def test_ranks_split_each_global_micro_batch_and_resume_on_another_count(mix):
    """2 ranks of 4 read the halves of each block of 8; a checkpoint of theirs resumes on 1 device of 8."""
    from mixer_litgpt.data import MixLoader, MixStream

    files = MixFiles.open(mix)
    ranks = [MixLoader(MixStream(files, 4, 80, rank=r, world=2)) for r in range(2)]
    its = [iter(r) for r in ranks]
    got = [[next(it).numpy() for _ in range(3)] for it in its]
    for i in range(3):
        np.testing.assert_array_equal(np.concatenate([got[0][i], got[1][i]]), stored(mix)[8 * i: 8 * i + 8])
    one = MixLoader(MixStream(files, 8, 80))
    one.load_state_dict(ranks[0].state_dict())
    assert one.stream.iteration == 3
    np.testing.assert_array_equal(next(iter(one)).numpy(), stored(mix)[24:32])


def test_a_run_longer_than_the_mix_is_refused_not_wrapped(mix):
    files = MixFiles.open(mix)
    with pytest.raises(MixFileError, match="asks for .* but the mix holds"):
        module(mix, max_tokens=(files.samples + 8) * SEQ)


def test_litgpt_look_ahead_past_the_last_step_ends_quietly(mix):
    """LitGPT fetches one batch beyond the last step: exact budgets end, they never wrap."""
    files = MixFiles.open(mix)
    steps = files.samples // 8
    data = module(mix, max_tokens=steps * 8 * SEQ)
    batches = cycle_like_litgpt(data.train_dataloader(), steps)
    assert len(batches) == steps
    np.testing.assert_array_equal(np.concatenate(batches), stored(mix)[: steps * 8])


def test_the_loader_ends_at_the_budget_and_raises_when_the_mix_is_short(mix):
    files = MixFiles.open(mix)
    data = module(mix, max_tokens=3 * 8 * SEQ)
    batches = list(data.train_dataloader())  # exactly the budget: nothing read past it
    np.testing.assert_array_equal(np.concatenate(batches), stored(mix)[:24])
    data.stream.needed = files.samples + 8
    with pytest.raises(MixFileError, match="exhausted"):
        list(data.train_dataloader())


def test_validation_loader_covers_the_named_heldout_sets(mix):
    files = MixFiles.open(mix)
    data = module(mix, max_tokens=8 * SEQ, val_sets=["music-test"])
    got = np.concatenate([b.numpy() for b in data.val_dataloader()])
    np.testing.assert_array_equal(got, np.asarray(files.eval_samples("music-test")))
    both = module(mix, max_tokens=8 * SEQ)
    n = sum(int(e["samples"]) for e in files.manifest["eval"])
    assert sum(len(b) for b in both.val_dataloader()) == n
    with pytest.raises(MixFileError, match="no eval set"):
        module(mix, max_tokens=8 * SEQ, val_sets=["nope-test"])


def test_validation_on_a_heldout_file_besides_the_eval_sets(mix, tmp_path):
    """A finetune selected on the domain validation split validates on that file alone (the
    mix's sample set; a torn copy of it is refused)."""
    import shutil

    from mixer.formats.sample_sets import SELECTION, sample_set

    files = MixFiles.open(mix)
    val_set = sample_set(files, SELECTION)
    name, val = val_set.name, np.asarray(val_set.samples)
    assert name == "music-val" and val.shape[1] == SEQ + 1 and val.dtype == files.dtype
    path = shutil.copyfile(val_set.path, tmp_path / "music-val.bin")
    data = module(mix, max_tokens=8 * SEQ, val_sets=[], val_files={name: str(path)})
    np.testing.assert_array_equal(np.concatenate([b.numpy() for b in data.val_dataloader()]), val)
    path.write_bytes(path.read_bytes()[:-2])  # a torn file
    with pytest.raises(MixFileError, match="not whole samples"):
        module(mix, max_tokens=8 * SEQ, val_sets=[], val_files={name: str(path)})
    with pytest.raises(MixFileError, match="no held-out sets"):
        module(mix, max_tokens=8 * SEQ, val_sets=[])


def test_sample_length_must_match_the_model(mix):
    data = MixData(mix=mix, max_tokens=8 * SEQ)
    data.connect(batch_size=8, max_seq_length=SEQ * 2)
    with pytest.raises(MixFileError, match="max_seq_length"):
        data.setup()


def test_missing_or_corrupt_mix_is_one_line(tmp_path, mix):
    with pytest.raises(MixFileError, match="not a finished mix"):
        MixFiles.open(tmp_path)
    (tmp_path / "manifest.json").write_text("{")
    with pytest.raises(MixFileError, match="not valid JSON"):
        MixFiles.open(tmp_path)


def test_each_shard_is_mapped_once_not_once_per_batch(mix, monkeypatch):
    """MixFiles.read mapped the shard afresh for every batch (0.35x a plain memmap loader)."""
    files = MixFiles.open(mix)
    n_shards = len(files.manifest["shards"])
    data = module(mix, max_tokens=files.samples // 4 * 4 * SEQ, batch=4)
    want = stored(mix)
    real, made = np.memmap, []

    class Counting(real):
        def __new__(cls, *a, **kw):
            made.append(a[0] if a else kw.get("filename"))
            return real.__new__(real, *a, **kw)

    monkeypatch.setattr(np, "memmap", Counting)
    got = np.concatenate([b.numpy() for b in data.train_dataloader()])
    assert len(got) // 4 > 3 * n_shards  # many batches per shard
    np.testing.assert_array_equal(got, want[: len(got)])
    assert len(made) == n_shards, f"{len(made)} mappings for {len(got) // 4} batches of {n_shards} shards"
