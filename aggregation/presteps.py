"""Pre-aggregation steps that compose with any rule: each returns mixing matrices M,
(B, m, n) for a batch of stacks (B, n, d), new weights, and what the report records of the
step; the rule then aggregates M @ stack. `aggregate` hands M to rules that apply it block by block (the
coordinate-wise ones), so the mixed stack is never built.

- nnm (Allouah et al. 2023): each row becomes the mean of its n - f nearest rows (itself included).
- bucketing (Karimireddy, He, Jaggi 2022): rows are shuffled into buckets of size s and averaged.
"""

from __future__ import annotations

from typing import Any

import torch

from ._checks import AggregationError
from ._kernels import Stack
from .distances import squared_distances


def nnm(stack: Stack, weights: torch.Tensor | None, *, f: int = 0) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, Any]]:
    batch, n = stack.shape[:2]
    dist = squared_distances(stack)
    # Self distance is 0, so each row is among its own nearest; ties go to lower indices.
    order = torch.from_numpy(dist.numpy().argsort(axis=2, kind="stable")[:, :, : n - f].copy())
    mix = torch.zeros(batch, n, n, dtype=stack.dtype)
    mix.scatter_(2, order, 1.0 / (n - f))
    return mix, weights, {"step": "nnm", "f": f, "neighbours": n - f}


def bucketing(stack: Stack, weights: torch.Tensor | None, *, f: int = 0, bucket_size: int = 2,
              seed: int = 0) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, Any]]:
    """The same seeded permutation for every batch entry (as B separate calls would use)."""
    batch, n = stack.shape[:2]
    s = bucket_size
    if isinstance(s, bool) or not isinstance(s, int) or s < 1:
        raise AggregationError(f"bucketing: bucket_size must be a whole number >= 1, got {s!r}")
    gen = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(n, generator=gen)
    buckets = (n + s - 1) // s
    w = torch.ones(batch, n, dtype=stack.dtype) if weights is None else weights.to(stack.dtype)
    member = torch.zeros(buckets, n, dtype=stack.dtype)
    member[torch.arange(n) // s, perm] = 1.0
    mass = w @ member.T  # (B, buckets)
    if bool((mass <= 0).any()):
        raise AggregationError("bucketing: a bucket holds only zero-weight rows")
    mix = member * w[:, None, :] / mass[:, :, None]
    new_weights = None if weights is None else mass
    groups = [perm[b * s : (b + 1) * s].tolist() for b in range(buckets)]
    return mix, new_weights, {"step": "bucketing", "bucket_size": s, "buckets": groups}
