"""Pairwise squared distances between the rows of a stack, from a centred Gram matrix.

The uncentred float32 form |a|^2 + |b|^2 - 2ab cancels catastrophically on real
model weights (rows far from the origin, close to each other). Centring each
column block on its mean before the block's Gram product keeps the numbers small;
doing it per cache-sized block costs one extra pass over cached data, not memory.
"""

from __future__ import annotations

import torch

BLOCK_COLUMNS = 32768


def gram_centred(stack: torch.Tensor) -> torch.Tensor:
    """G = Xc Xc^T (returned as float64) where Xc is `stack` with its column means subtracted."""
    n, d = stack.shape
    acc = torch.zeros(n, n, dtype=stack.dtype)
    buf = torch.empty(n, min(BLOCK_COLUMNS, d), dtype=stack.dtype)
    for start in range(0, d, BLOCK_COLUMNS):
        block = stack[:, start : start + BLOCK_COLUMNS]
        b = buf[:, : block.shape[1]]
        torch.sub(block, block.mean(dim=0, keepdim=True), out=b)
        acc.addmm_(b, b.T)
    return acc.double()


def squared_distances(stack: torch.Tensor) -> torch.Tensor:
    """(n, n) float64 matrix of squared Euclidean distances, exact zeros on the diagonal."""
    g = gram_centred(stack)
    sq = g.diagonal()
    dist = (sq[:, None] + sq[None, :] - 2.0 * g).clamp_min_(0.0)
    dist.fill_diagonal_(0.0)
    return dist
