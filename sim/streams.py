"""Counter-based randomness for the batched engine: every draw is a hash of (seed, stream,
keys...), so what node 7 samples in round 3 does not depend on how many other nodes there
are in its chunk, its shard or its Ray actor. Sharded and single-process runs draw the same
numbers, and chunk sizes never change a result.

SplitMix64 finalizer on numpy uint64 (wrapping arithmetic), vectorized over broadcast keys.
"""

from __future__ import annotations

import numpy as np
import torch

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)

# one stream per kind of draw: the same keys in two streams give independent numbers
BATCH, CHURN, LOSS, LATENCY, NOISE, PRIVACY, PERSONAL = 1, 2, 3, 4, 5, 6, 7  # PERSONAL: ditto's own batches


def _mix(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> np.uint64(30))
    h = h * _M1
    h = h ^ (h >> np.uint64(27))
    h = h * _M2
    return h ^ (h >> np.uint64(31))


def bits(seed: int, stream: int, *keys) -> np.ndarray:
    """64 random bits per element of the broadcast keys (non-negative integers)."""
    with np.errstate(over="ignore"):
        h = _mix(np.asarray([(seed << 8) | stream], dtype=np.uint64) * _GOLDEN + _GOLDEN)
        for k in keys:
            h = _mix(h ^ (np.asarray(k, dtype=np.uint64) * _GOLDEN + _GOLDEN))
    return h


def uniform(seed: int, stream: int, *keys) -> np.ndarray:
    """Uniform doubles in [0, 1), one per element of the broadcast keys."""
    return (bits(seed, stream, *keys) >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def below(seed: int, stream: int, bound: np.ndarray, *keys) -> np.ndarray:
    """Integers in [0, bound) (bound broadcast with the keys)."""
    u = uniform(seed, stream, *keys)
    return np.minimum((u * bound).astype(np.int64), np.asarray(bound, dtype=np.int64) - 1)


def normal(seed: int, stream: int, *keys) -> torch.Tensor:
    """Standard normal float32 draws (Box-Muller), one per element of the broadcast keys."""
    b = bits(seed, stream, *keys)
    u1 = ((b >> np.uint64(40)).astype(np.float64) + 1.0) * (1.0 / (1 << 24))  # (0, 1]
    u2 = (b & np.uint64(0xFFFFFF)).astype(np.float64) * (1.0 / (1 << 24))
    z = np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)
    return torch.from_numpy(z.astype(np.float32))
