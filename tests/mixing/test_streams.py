import numpy as np
import pytest

from mixer.formats.store import open_store
from mixer.mixing.streams import SourceStream
from tests.synth import make_store, naive_stream


@pytest.mark.parametrize("min_len,max_len,seq_len", [(2, 9, 16), (3, 40, 7), (200, 900, 64), (1, 3000, 128)])
def test_gather_matches_a_naive_materialized_stream(tmp_path, min_len, max_len, seq_len):
    """Both gather paths (slice copies for long documents, a token index for short ones)."""
    make_store(tmp_path, "s", "domain", n_docs=60, base=100, min_len=min_len, max_len=max_len)
    store = open_store(tmp_path, "s")
    stream = SourceStream(store, seed=4, seq_len=seq_len)
    naive = naive_stream(store, stream, epochs=4)
    n = (len(naive) - 1) // seq_len
    samples = np.random.default_rng(0).permutation(n)[: min(n, 500)]
    got = stream.gather(samples)
    for row, k in zip(got, samples):
        assert np.array_equal(row, naive[k * seq_len : k * seq_len + seq_len + 1])


def test_pass_histogram_matches_per_document_passes(tmp_path):
    make_store(tmp_path, "s", "domain", n_docs=333, base=100)
    stream = SourceStream(open_store(tmp_path, "s"), seed=1, seq_len=8)
    for tokens in (1, stream.epoch_tokens, 3 * stream.epoch_tokens + 17, 5 * stream.epoch_tokens - 1):
        passes, partial = stream.passes(tokens)
        hist, partial2 = stream.pass_histogram(tokens)
        assert hist == {str(k): int(v) for k, v in enumerate(np.bincount(passes)) if v} and partial == partial2
        covered = int((passes * stream.lengths).sum())
        assert covered <= tokens and (tokens - covered < stream.lengths.max() or partial == 0)
