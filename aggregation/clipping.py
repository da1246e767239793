"""Clipping rules: centred clipping (Karimireddy, He, Jaggi 2021) and self-centred
clipping for gossip (ClippedGossip, He, Karimireddy, Jaggi 2022)."""

from __future__ import annotations

import torch

from ._checks import AggregationError
from .coordinate import median as coordinate_median
from .report import Report


def _clip_factors(diff_norms: torch.Tensor, tau: float) -> torch.Tensor:
    """min(1, tau / |x_i - v|), with 1 where the difference is zero."""
    return torch.where(diff_norms > tau, tau / diff_norms.clamp_min(1e-30), torch.ones_like(diff_norms))


def _start(stack: torch.Tensor, center) -> tuple[torch.Tensor, str]:
    n = stack.shape[0]
    if isinstance(center, bool):
        raise AggregationError(f"centered_clip: center must be a row index or a name, got {center!r}")
    if isinstance(center, int):
        if not 0 <= center < n:
            raise AggregationError(f"centered_clip: center row {center} is outside 0..{n - 1}")
        return stack[center].clone(), f"row {center}"
    if center == "zero":
        return torch.zeros(stack.shape[1], dtype=stack.dtype), "zero"
    if center == "mean":
        return stack.mean(dim=0), "mean"
    if center == "median":
        return coordinate_median(stack, None)[0], "median"
    if isinstance(center, torch.Tensor) and center.shape == stack.shape[1:]:
        return center.to(stack.dtype).clone(), "given vector"
    raise AggregationError(
        "centered_clip: center must be a row index, 'zero', 'mean', 'median' or a (d,) tensor, "
        f"got {center!r}")


def centered_clip(stack, weights, *, f: int = 0, tau: float | None = None, iters: int = 1,
                  center="median"):
    """v <- v + sum_i w_i (x_i - v) min(1, tau / |x_i - v|), `iters` times from `center`.

    With tau unset, the radius is the median distance of the rows to the starting point,
    so at most half the rows are clipped whatever the scale of the model.
    """
    n = stack.shape[0]
    if not (isinstance(iters, int) and iters >= 1):
        raise AggregationError(f"centered_clip: iters must be a whole number >= 1, got {iters!r}")
    v, start = _start(stack, center)
    w = torch.full((n,), 1.0 / n) if weights is None else weights / weights.sum()
    w = w.to(stack.dtype)
    if tau is None:
        tau_used = float(torch.linalg.vector_norm(stack - v, dim=1).median())
    else:
        if not tau > 0:
            raise AggregationError(f"centered_clip: tau must be > 0, got {tau}")
        tau_used = float(tau)
    factors = None
    for _ in range(iters):
        diff = stack - v
        factors = _clip_factors(torch.linalg.vector_norm(diff, dim=1), tau_used)
        v = v + (w * factors) @ diff
    return v, Report("centered_clip", n, f, scores=factors.tolist(),
                     details={"tau": tau_used, "iters": iters, "center": start})


def self_centered_clip(stack, weights, *, f: int = 0, own: int = 0, tau: float | None = None,
                       clip: int | None = None):
    """x_own + sum_j w_j clip(x_j - x_own, tau): each neighbour may pull the node's own model
    at most tau. With tau unset, it is the distance of the (clip + 1)-th farthest row, so the
    `clip` farthest rows are clipped (clip = 2f by default: clipping 2f beat clipping f)."""
    n = stack.shape[0]
    if isinstance(own, bool) or not isinstance(own, int) or not 0 <= own < n:
        raise AggregationError(f"self_centered_clip: own must be a row index in 0..{n - 1}, got {own!r}")
    x = stack[own]
    diff = stack - x
    norms = torch.linalg.vector_norm(diff, dim=1)
    if tau is None:
        k = 2 * f if clip is None else clip
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < n:
            raise AggregationError(f"self_centered_clip: clip must be a whole number in 0..{n - 1}")
        tau_used = float(norms.sort(descending=True).values[k]) if k > 0 else float("inf")
    else:
        if not tau > 0:
            raise AggregationError(f"self_centered_clip: tau must be > 0, got {tau}")
        tau_used = float(tau)
    w = torch.full((n,), 1.0 / n) if weights is None else weights / weights.sum()
    factors = _clip_factors(norms, tau_used)
    value = x + (w.to(stack.dtype) * factors) @ diff
    return value, Report("self_centered_clip", n, f, scores=factors.tolist(),
                         details={"tau": tau_used, "own": own})
