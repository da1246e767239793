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

from collections.abc import Iterator

import torch

from . import _kernels as kernels
from ._kernels import Stack

BLOCK_COLUMNS = 16384
BLOCK_ELEMENTS = 1 << 19  # with short rows, batch entries per block fill (b, n, C) up to this
ALIGN = 16  # elements: 64 bytes of float32


def centred_blocks(stack: torch.Tensor, row: int = 0) -> Iterator[tuple[slice, slice, torch.Tensor]]:
    """Yield (batch slice, column slice, block): the columns of `stack` (B, n, d) minus those of
    its row `row`, a cache-sized block at a time (scratch reused for the next block)."""
    batch, n, d = stack.shape
    cols = min(d, BLOCK_COLUMNS)
    bb = min(batch, max(1, BLOCK_ELEMENTS // (n * cols)))  # several entries per block when d is short
    # Each entry's block starts on a 64-byte boundary, as a lone entry's would: MKL's rounding
    # depends on alignment, and an entry's results must not depend on its batch neighbours
    # (Krum's or NNM's choice among near-equal rows would).
    entry = -(-n * cols // ALIGN) * ALIGN
    buf = torch.empty(bb * entry, dtype=stack.dtype).as_strided((bb, n, cols), (entry, cols, 1))
    for b0 in range(0, batch, bb):
        b1 = min(batch, b0 + bb)
        for start in range(0, d, cols):
            block = stack[b0:b1, :, start : start + cols]
            c = buf[: b1 - b0, :, : block.shape[2]]
            torch.sub(block, block[:, row : row + 1], out=c)
            yield slice(b0, b1), slice(start, start + block.shape[2]), c


def gram_centred(stack: Stack, row: int = 0) -> torch.Tensor:
    """G[b] = Xc Xc^T (returned as float64) where Xc is stack[b] (n, d) minus its row `row`,
    for every batch entry b of `stack` (B, n, d): in C on the rows in place where the kernels
    are built (float32 blocks of columns summed in float64), else block by block in torch."""
    rows = kernels.as_rows(stack)
    if rows is not None:
        return kernels.gram(rows, row)  # exactly symmetric
    assert isinstance(stack, torch.Tensor)
    batch, n, _ = stack.shape
    acc = torch.zeros(batch, n, n, dtype=stack.dtype)
    for entries, _, c in centred_blocks(stack, row):
        acc[entries].baddbmm_(c, c.transpose(1, 2))
    g = acc.double()
    return (g + g.mT) * 0.5  # exactly symmetric: d(i, j) == d(j, i), so equal scores tie exactly


def squared_distances(stack: Stack, row: int = 0) -> torch.Tensor:
    """(B, n, n) float64 squared Euclidean distances, exact zeros on the diagonals; the
    distances to row `row` (the Gram matrix's centre) are the most precise."""
    g = gram_centred(stack, row)
    sq = g.diagonal(dim1=1, dim2=2)
    dist = (sq[:, :, None] + sq[:, None, :] - 2.0 * g).clamp_min_(0.0)
    dist.diagonal(dim1=1, dim2=2).zero_()
    return dist
