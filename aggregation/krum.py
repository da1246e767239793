"""Krum, Multi-Krum (Blanchard et al. 2017) and Bulyan (El Mhamdi et al. 2018), on a
batch of stacks (B, n, d): scores from the batch's Gram matrices, selections by a
stable sort per batch entry and a gather, never a loop over the batch."""

from __future__ import annotations

import torch

from ._checks import AggregationError
from ._columns import reduce_sorted
from ._kernels import Rows, Stack
from .coordinate import closest_to_median, weighted_mean
from .distances import squared_distances
from .report import BatchReport


def krum_scores(dist: torch.Tensor, f: int, gone: torch.Tensor | None = None) -> torch.Tensor:
    """(B, n, n) squared distances -> (B, n) scores: each row's sum of squared distances to
    its k = (rows left) - f - 2 nearest other rows. Rows marked in `gone` (B, n), the same
    number in every batch entry, are left out: no one's neighbour, and scored +inf."""
    batch, n = dist.shape[:2]
    left = n if gone is None else n - int(gone[0].sum())
    k = left - f - 2
    if k <= 0:
        scores = torch.zeros(batch, n, dtype=dist.dtype)
    else:
        others = dist + torch.diag(torch.full((n,), float("inf"), dtype=dist.dtype))
        if gone is not None:
            others.masked_fill_(gone[:, None, :], float("inf"))
        scores = others.topk(k, dim=2, largest=False).values.sum(dim=2)
    if gone is not None:
        scores.masked_fill_(gone, float("inf"))
    return scores


def _order(scores: torch.Tensor) -> torch.Tensor:
    """Rows of each batch entry by ascending score; ties broken by row index so the choice
    is deterministic."""
    return torch.from_numpy(scores.numpy().argsort(axis=1, kind="stable"))


def _rows_of(stack: Stack, rows: torch.Tensor) -> torch.Tensor:
    """stack[b, rows[b]] for every batch entry: (B, n, d), (B, k) -> (B, k, d)."""
    if isinstance(stack, Rows):
        return stack.pick(rows)
    return stack[torch.arange(stack.shape[0])[:, None], rows]


def krum(stack: Stack, weights: torch.Tensor | None, *, f: int = 0) -> tuple[torch.Tensor, BatchReport]:
    batch, n = stack.shape[:2]
    scores = krum_scores(squared_distances(stack), f)
    best = _order(scores)[:, :1]
    return _rows_of(stack, best)[:, 0], BatchReport("krum", n, f, batch, selected=best, scores=scores)


def multi_krum(stack: Stack, weights: torch.Tensor | None, *, f: int = 0,
               m: int | None = None) -> tuple[torch.Tensor, BatchReport]:
    """Average (weighted, if weights are given) of the m best-scoring rows, m = n - f by default."""
    batch, n = stack.shape[:2]
    m = n - f if m is None else m
    if isinstance(m, bool) or not isinstance(m, int) or not 1 <= m <= n:
        raise AggregationError(f"multi_krum: m must be a whole number in [1, n = {n}], got {m!r}")
    scores = krum_scores(squared_distances(stack), f)
    chosen = _order(scores)[:, :m].sort(dim=1).values
    mask = torch.zeros(batch, n, dtype=stack.dtype).scatter_(1, chosen, 1.0)
    value = weighted_mean(stack, mask if weights is None else mask * weights)  # no row copies
    return value, BatchReport("multi_krum", n, f, batch, selected=chosen, scores=scores, details={"m": m})


def bulyan(stack: Stack, weights: torch.Tensor | None, *, f: int = 0) -> tuple[torch.Tensor, BatchReport]:
    """Select theta = n - 2f rows by repeated Krum, then average, per coordinate, the
    beta = theta - 2f selected values nearest the coordinate's median.

    The theta selections are sequential by definition (each Krum runs over the rows the
    earlier ones left); each is one vectorized step over the whole batch."""
    batch, n = stack.shape[:2]
    theta = n - 2 * f
    dist = squared_distances(stack)
    gone = torch.zeros(batch, n, dtype=torch.bool)
    first_scores = None
    every = torch.arange(batch)
    for _ in range(theta):
        scores = krum_scores(dist, f, gone)
        if first_scores is None:
            first_scores = scores
        gone[every, _order(scores)[:, 0]] = True
    chosen = torch.nonzero(gone)[:, 1].view(batch, theta)  # ascending within each entry
    beta = theta - 2 * f
    value = reduce_sorted(_rows_of(stack, chosen), lambda b: closest_to_median(b, beta))
    return value, BatchReport("bulyan", n, f, batch, selected=chosen, scores=first_scores,
                              details={"theta": theta, "beta": beta})
