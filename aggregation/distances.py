"""Pairwise squared distances between the rows of a stack, from a centred Gram matrix.

The uncentred float32 form |a|^2 + |b|^2 - 2ab cancels catastrophically on real
model weights (rows far from the origin, close to each other). Centring on row 0
before the Gram product keeps the numbers small; doing it per cache-sized block
costs a subtraction on cached data, not memory. Row 0 rather than the mean: it is
cheaper (no reduction) and, in a peer, row 0 is the node's own model, so the
distances that matter (between rows near it) keep their precision even when a
Byzantine row is huge. Callers outside a peer should put a trusted row first.
"""

from __future__ import annotations

import torch

BLOCK_COLUMNS = 16384


def gram_centred(stack: torch.Tensor) -> torch.Tensor:
    """G = Xc Xc^T (returned as float64) where Xc is `stack` minus its row 0."""
    n, d = stack.shape
    acc = torch.zeros(n, n, dtype=stack.dtype)
    buf = torch.empty(n, min(BLOCK_COLUMNS, d), dtype=stack.dtype)
    for start in range(0, d, BLOCK_COLUMNS):
        block = stack[:, start : start + BLOCK_COLUMNS]
        b = buf[:, : block.shape[1]]
        torch.sub(block, block[0:1], out=b)
        acc.addmm_(b, b.T)
    return acc.double()


def squared_distances(stack: torch.Tensor) -> torch.Tensor:
    """(n, n) float64 matrix of squared Euclidean distances, exact zeros on the diagonal."""
    g = gram_centred(stack)
    sq = g.diagonal()
    dist = (sq[:, None] + sq[None, :] - 2.0 * g).clamp_min_(0.0)
    dist.fill_diagonal_(0.0)
    return dist
