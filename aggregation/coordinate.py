"""Coordinate-wise rules: weighted mean, median, trimmed mean, mean-around-median."""

from __future__ import annotations

import torch

from ._columns import reduce_sorted
from .report import Report


def weighted_mean(stack: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """The gossip baseline: sum_i w_i x_i / sum_i w_i (plain mean without weights)."""
    if weights is None:
        return stack.mean(dim=0)
    w = weights.to(stack.dtype)
    return (w / w.sum()) @ stack


def mean(stack, weights, *, f: int = 0):
    n = stack.shape[0]
    details = {"weighted": weights is not None}
    if f:
        details["note"] = "mean tolerates no Byzantine row; f is recorded only"
    return weighted_mean(stack, weights), Report("mean", n, f, details=details)


def _middle(block: torch.Tensor) -> torch.Tensor:
    """Median of each sorted column, numpy's definition (mean of the two middles if even)."""
    n = block.shape[0]
    if n % 2:
        return block[n // 2].clone()
    return (block[n // 2 - 1] + block[n // 2]) * 0.5


def _rows(stack: torch.Tensor, mix: torch.Tensor | None) -> int:
    """Rows the rule aggregates: those of mix @ stack when a pre-step's matrix is given."""
    return stack.shape[0] if mix is None else mix.shape[0]


def median(stack, weights, *, f: int = 0, mix=None):
    n = _rows(stack, mix)  # only the middle rank(s) are computed: ranks (n-1)//2 .. n//2
    value = reduce_sorted(stack, lambda b: b.mean(dim=0), (n - 1) // 2, n // 2 + 1, mix=mix)
    return value, Report("median", n, f)


def trimmed_mean(stack, weights, *, f: int = 0, mix=None):
    n = _rows(stack, mix)
    if f == 0:
        value = stack.mean(dim=0) if mix is None else mix.mean(dim=0) @ stack
        return value, Report("trimmed_mean", n, f, details={"trimmed_per_side": 0})
    value = reduce_sorted(stack, lambda b: b.mean(dim=0), f, n - f, mix=mix)
    return value, Report("trimmed_mean", n, f, details={"trimmed_per_side": f})


def closest_to_median(block: torch.Tensor, k: int) -> torch.Tensor:
    """Mean of the k values of each sorted column closest to that column's median.

    The k nearest values of a sorted column form a contiguous window; of the n - k + 1
    windows, keep the one with the smallest sum of distances to the median (the first,
    i.e. the one holding the smaller values, on a tie).
    """
    n = block.shape[0]
    if k == n:
        return block.mean(dim=0)
    m = _middle(block)
    windows = block.unfold(0, k, 1)  # (n - k + 1, C, k), a view
    spread = (windows - m[None, :, None]).abs_().sum(dim=-1)  # (n - k + 1, C)
    best = spread.argmin(dim=0, keepdim=True)
    return windows.sum(dim=-1).gather(0, best).squeeze(0) / k


def meamed(stack, weights, *, f: int = 0, mix=None):
    """MeaMed (Xie et al. 2018): per coordinate, the mean of the n - f values nearest the median."""
    n = _rows(stack, mix)
    value = reduce_sorted(stack, lambda b: closest_to_median(b, n - f), mix=mix)
    return value, Report("meamed", n, f, details={"averaged_per_coordinate": n - f})
