"""The synthetic stores most mixing tests build from (tokens name their document: tests/synth.py)."""

import pytest

from tests.synth import make_store

DOMAIN_BASE = 40_000  # domain tokens are >= this; general tokens below


@pytest.fixture
def stores(tmp_path):
    """`prose` (general, 300 documents) and `music` (domain, 40 documents)."""
    make_store(tmp_path / "stores", "prose", "general", n_docs=300, base=1, seed=1, max_len=80)
    make_store(tmp_path / "stores", "music", "domain", n_docs=40, base=DOMAIN_BASE, seed=2)
    return tmp_path / "stores"
