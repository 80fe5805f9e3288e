"""Thin adapters from mixer's mixes to trainers. `litgpt/` is the one we ship.

Adapters only read what docs/formats.md promises (manifest.json, shards, eval sets), so a
trainer never needs the rest of mixer to consume a mix.
"""
