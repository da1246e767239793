"""Coordinate-wise rules: weighted mean, median, trimmed mean, mean-around-median.

Every rule here (and in the other rule modules) takes a batch of stacks (B, n, d) and
optional (B, n) weights and returns (B, d) values with a BatchReport; a peer's single
stack is the batch of one.
"""

from __future__ import annotations

import torch

from ._columns import reduce_sorted, trimmed_mean_columns
from .report import BatchReport


def combine(coeffs: torch.Tensor, stack: torch.Tensor) -> torch.Tensor:
    """sum_i coeffs[b, i] * stack[b, i] for every batch entry b: (B, n), (B, n, d) -> (B, d)."""
    return torch.bmm(coeffs.to(stack.dtype).unsqueeze(1), stack).squeeze(1)


def weighted_mean(stack: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """The gossip baseline: sum_i w_i x_i / sum_i w_i (plain mean without weights)."""
    if weights is None:
        return stack.mean(dim=1)
    w = weights.to(stack.dtype)
    return combine(w / w.sum(dim=1, keepdim=True), stack)


def mean(stack, weights, *, f: int = 0):
    batch, n = stack.shape[:2]
    details = {"weighted": weights is not None}
    if f:
        details["note"] = "mean tolerates no Byzantine row; f is recorded only"
    return weighted_mean(stack, weights), BatchReport("mean", n, f, batch, details=details)


def _middle(block: torch.Tensor) -> torch.Tensor:
    """Median of each sorted column, numpy's definition (mean of the two middles if even)."""
    n = block.shape[0]
    if n % 2:
        return block[n // 2].clone()
    return (block[n // 2 - 1] + block[n // 2]) * 0.5


def _rows(stack: torch.Tensor, mix: torch.Tensor | None) -> int:
    """Rows the rule aggregates: those of mix @ stack when a pre-step's matrices are given."""
    return stack.shape[1] if mix is None else mix.shape[1]


def median(stack, weights, *, f: int = 0, mix=None):
    n = _rows(stack, mix)  # only the middle rank(s) are computed: ranks (n-1)//2 .. n//2
    value = reduce_sorted(stack, lambda b: b.mean(dim=0), (n - 1) // 2, n // 2 + 1, mix=mix)
    return value, BatchReport("median", n, f, stack.shape[0])


def trimmed_mean(stack, weights, *, f: int = 0, mix=None):
    batch, n = stack.shape[0], _rows(stack, mix)
    if f == 0:
        value = stack.mean(dim=1) if mix is None else combine(mix.mean(dim=1), stack)
        return value, BatchReport("trimmed_mean", n, f, batch, details={"trimmed_per_side": 0})
    value = trimmed_mean_columns(stack, f, mix=mix)  # a selection network: only the middle set, unsorted
    return value, BatchReport("trimmed_mean", n, f, batch, details={"trimmed_per_side": f})


def closest_to_median(block: torch.Tensor, k: int) -> torch.Tensor:
    """Mean of the k values of each sorted column closest to that column's median:
    (n, ...) sorted along dim 0 -> (...).

    The k nearest values of a sorted column form a contiguous window; of the n - k + 1
    windows, keep the one with the smallest sum of distances to the median (the first,
    i.e. the one holding the smaller values, on a tie).
    """
    n = block.shape[0]
    if k == n:
        return block.mean(dim=0)
    m = _middle(block)
    windows = block.unfold(0, k, 1)  # (n - k + 1, ..., k), a view
    spread = (windows - m.unsqueeze(0).unsqueeze(-1)).abs_().sum(dim=-1)  # (n - k + 1, ...)
    best = spread.argmin(dim=0, keepdim=True)
    return windows.sum(dim=-1).gather(0, best).squeeze(0) / k


def meamed(stack, weights, *, f: int = 0, mix=None):
    """MeaMed (Xie et al. 2018): per coordinate, the mean of the n - f values nearest the median."""
    n = _rows(stack, mix)
    value = reduce_sorted(stack, lambda b: closest_to_median(b, n - f), mix=mix)
    return value, BatchReport("meamed", n, f, stack.shape[0], details={"averaged_per_coordinate": n - f})
