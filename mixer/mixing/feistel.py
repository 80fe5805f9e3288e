"""A keyed bijection on [0, n), evaluated index by index.

Why not `rng.permutation(n)`: a global shuffle of 98M samples would have to be
materialized (and cached) before shard k can know which samples it holds. A Feistel
network with cycle walking is a pseudorandom permutation whose value at any index is
computed independently, so every shard is written by itself from the schedule alone
(docs/design.md, invariant 5) in O(shard) memory, vectorized with numpy.
"""

from __future__ import annotations

import numpy as np

_ROUNDS = 4  # Luby-Rackoff: four rounds give a strong pseudorandom permutation
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finalizer: a cheap, well-distributed 64-bit mixing function."""
    x = x ^ (x >> np.uint64(30))
    x = x * _M1
    x = x ^ (x >> np.uint64(27))
    x = x * _M2
    return x ^ (x >> np.uint64(31))


def _round_keys(key: int) -> np.ndarray:
    seeds = np.arange(1, _ROUNDS + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    return _mix(seeds ^ np.uint64(key & 0xFFFFFFFFFFFFFFFF))


def _encrypt(x: np.ndarray, half_bits: int, keys: np.ndarray) -> np.ndarray:
    mask = np.uint64((1 << half_bits) - 1)
    left, right = x >> np.uint64(half_bits), x & mask
    for k in keys:
        left, right = right, left ^ (_mix(right ^ k) & mask)
    return (left << np.uint64(half_bits)) | right


def permute(indices: np.ndarray, n: int, key: int) -> np.ndarray:
    """Image of `indices` (each in [0, n)) under the keyed permutation of [0, n)."""
    x = np.asarray(indices, dtype=np.uint64)
    if n <= 1:
        return x.astype(np.int64)
    half_bits = max(1, ((n - 1).bit_length() + 1) // 2)
    keys = _round_keys(key)
    x = _encrypt(x, half_bits, keys)
    # Cycle walking: the domain is [0, 4^half_bits) >= n; re-encrypt values that fall
    # outside [0, n) until they land inside. This stays a bijection on [0, n).
    out = x >= np.uint64(n)
    while out.any():
        x[out] = _encrypt(x[out], half_bits, keys)
        out = x >= np.uint64(n)
    return x.astype(np.int64)
