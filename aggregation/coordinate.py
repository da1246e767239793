"""Coordinate-wise rules: weighted mean, median, trimmed mean, mean-around-median.

Every rule here (and in the other rule modules) takes a batch of stacks (B, n, d) and
optional (B, n) weights and returns (B, d) values with a BatchReport; a peer's single
stack is the batch of one. The rules here read rows in place (aggregation._kernels.Rows)
where the compiled kernels are built, and run the same networks in numpy where not.
"""

from __future__ import annotations

import torch

from . import _kernels as kernels
from ._columns import network, reduce_sorted, trimmed_mean_columns, trimming_network
from ._kernels import Stack
from .report import BatchReport


def combine(coeffs: torch.Tensor, stack: torch.Tensor) -> torch.Tensor:
    """sum_i coeffs[b, i] * stack[b, i] for every batch entry b: (B, n), (B, n, d) -> (B, d)."""
    return torch.bmm(coeffs.to(stack.dtype).unsqueeze(1), stack).squeeze(1)


def weighted_mean(stack: Stack, weights: torch.Tensor | None) -> torch.Tensor:
    """The gossip baseline: sum_i w_i x_i / sum_i w_i (plain mean without weights)."""
    rows = kernels.as_rows(stack)
    if rows is not None:
        if weights is None:
            return kernels.network(rows, (), tuple(range(rows.shape[1])))
        w = weights.to(torch.float32)
        return kernels.network(rows, (), (0,), mix=(w / w.sum(dim=1, keepdim=True))[:, None, :])
    assert isinstance(stack, torch.Tensor)
    if weights is None:
        return stack.mean(dim=1)
    w = weights.to(stack.dtype)
    return combine(w / w.sum(dim=1, keepdim=True), stack)


def mean(stack: Stack, weights: torch.Tensor | None, *, f: int = 0) -> tuple[torch.Tensor, BatchReport]:
    batch, n = stack.shape[:2]
    details: dict[str, object] = {"weighted": weights is not None}
    if f:
        details["note"] = "mean tolerates no Byzantine row; f is recorded only"
    return weighted_mean(stack, weights), BatchReport("mean", n, f, batch, details=details)


def _rows(stack: Stack, mix: torch.Tensor | None) -> int:
    """Rows the rule aggregates: those of mix @ stack when a pre-step's matrices are given."""
    return stack.shape[1] if mix is None else mix.shape[1]


def median(stack: Stack, weights: torch.Tensor | None, *, f: int = 0, mix: torch.Tensor | None = None) -> tuple[torch.Tensor, BatchReport]:
    n = _rows(stack, mix)  # only the middle rank(s) are computed: ranks (n-1)//2 .. n//2
    lo, hi = (n - 1) // 2, n // 2 + 1
    rows = kernels.as_rows(stack)
    if rows is not None:  # the same network, run in C on the rows in place
        value = kernels.network(rows, *network(n, lo, hi), mix=mix)
    else:
        assert isinstance(stack, torch.Tensor)
        value = reduce_sorted(stack, lambda b: b.mean(dim=0), lo, hi, mix=mix)
    return value, BatchReport("median", n, f, stack.shape[0])


def trimmed_mean(stack: Stack, weights: torch.Tensor | None, *, f: int = 0,
                 mix: torch.Tensor | None = None) -> tuple[torch.Tensor, BatchReport]:
    batch, n = stack.shape[0], _rows(stack, mix)
    rows = kernels.as_rows(stack)
    if rows is not None:  # the same selection network, run in C on the rows in place
        if f == 0:
            value = kernels.network(rows, (), tuple(range(n))) if mix is None else \
                kernels.network(rows, (), (0,), mix=mix.mean(dim=1, keepdim=True))
        else:
            value = kernels.network(rows, *trimming_network(n, f), mix=mix)
        return value, BatchReport("trimmed_mean", n, f, batch, details={"trimmed_per_side": f})
    assert isinstance(stack, torch.Tensor)
    if f == 0:
        value = stack.mean(dim=1) if mix is None else combine(mix.mean(dim=1), stack)
        return value, BatchReport("trimmed_mean", n, f, batch, details={"trimmed_per_side": 0})
    value = trimmed_mean_columns(stack, f, mix=mix)  # a selection network: only the middle set, unsorted
    return value, BatchReport("trimmed_mean", n, f, batch, details={"trimmed_per_side": f})


def closest_to_median(block: torch.Tensor, k: int) -> torch.Tensor:
    """Mean of the k values of each sorted column closest to that column's median:
    (n, ...) sorted along dim 0 -> (...).

    The k nearest values of a sorted column y form a contiguous window, and the best one
    holds the middle rank(s) a = (n-1)//2, b = n//2 (m = (y[a] + y[b]) / 2). Between
    windows j and j + 1 that both do, y[j] <= m <= y[j + k], so sliding right changes the
    sum of distances to m by y[j] + y[j + k] - 2m, which grows with j: the first best
    window is the first of those windows plus the number of slides with
    y[j] + y[j + k] < y[a] + y[b] (the one holding the smaller values on a tie).

    Comparing sums of two values, each rounded once, decides exact ties exactly (two equal
    real sums round to the same float): the choice depends on the values alone, never on
    the order a reduction adds them in, which differs with a batch's shape. Summing the
    distances of each window instead broke ties such as NNM's (p, p, p, q, q, q) by
    rounding, a difference of (q - p) / k between a batch and the same stack alone.
    """
    n = block.shape[0]
    if k == n:
        return block.mean(dim=0)
    a, b = (n - 1) // 2, n // 2
    lo, hi = max(0, b - k), min(a + 1, n - k)  # slides j -> j + 1 between windows holding a and b
    twice_median = block[a] + block[b]
    slides = (block[lo:hi] + block[lo + k : hi + k] < twice_median).sum(dim=0, keepdim=True)
    windows = block.unfold(0, k, 1)  # (n - k + 1, ..., k), a view
    return windows.sum(dim=-1).gather(0, slides + lo).squeeze(0) / k


def meamed(stack: torch.Tensor, weights: torch.Tensor | None, *, f: int = 0, mix: torch.Tensor | None = None) -> tuple[torch.Tensor, BatchReport]:
    """MeaMed (Xie et al. 2018): per coordinate, the mean of the n - f values nearest the median."""
    n = _rows(stack, mix)
    value = reduce_sorted(stack, lambda b: closest_to_median(b, n - f), mix=mix)
    return value, BatchReport("meamed", n, f, stack.shape[0], details={"averaged_per_coordinate": n - f})
