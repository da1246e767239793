"""Clipping rules: centred clipping (Karimireddy, He, Jaggi 2021) and self-centred
clipping for gossip (ClippedGossip, He, Karimireddy, Jaggi 2022), on a batch of stacks
(B, n, d); a radius the rule picks itself is picked per batch entry."""

from __future__ import annotations

import torch

from . import _kernels as kernels
from ._checks import AggregationError
from ._kernels import Stack
from .coordinate import combine
from .coordinate import median as coordinate_median
from .report import BatchReport


def _clip_factors(diff_norms: torch.Tensor, tau: float | torch.Tensor) -> torch.Tensor:
    """min(1, tau / |x_i - v|), with 1 where the difference is zero; tau a number or (B, 1)."""
    return torch.where(diff_norms > tau, tau / diff_norms.clamp_min(1e-30), torch.ones_like(diff_norms))


def _start(stack: torch.Tensor, center: object) -> tuple[torch.Tensor, str]:
    batch, n, d = stack.shape
    if isinstance(center, bool):
        raise AggregationError(f"centered_clip: center must be a row index or a name, got {center!r}")
    if isinstance(center, int):
        if not 0 <= center < n:
            raise AggregationError(f"centered_clip: center row {center} is outside 0..{n - 1}")
        return stack[:, center].clone(), f"row {center}"
    if center == "zero":
        return torch.zeros(batch, d, dtype=stack.dtype), "zero"
    if center == "mean":
        return stack.mean(dim=1), "mean"
    if center == "median":
        return coordinate_median(stack, None)[0], "median"
    if isinstance(center, torch.Tensor) and tuple(center.shape) in ((d,), (batch, d)):  # (d,): every entry
        return center.to(stack.dtype).expand(batch, d).clone(), "given vector"
    raise AggregationError(
        "centered_clip: center must be a row index, 'zero', 'mean', 'median', a (d,) or a (B, d) tensor, "
        f"got {center!r}")


def _radius(tau: float, name: str) -> float:
    if not tau > 0:
        raise AggregationError(f"{name}: tau must be > 0, got {tau}")
    return float(tau)


def centered_clip(stack: torch.Tensor, weights: torch.Tensor | None, *, f: int = 0, tau: float | None = None,
                  iters: int = 1, center: int | str | torch.Tensor = "median") -> tuple[torch.Tensor, BatchReport]:
    """v <- v + sum_i w_i (x_i - v) min(1, tau / |x_i - v|), `iters` times from `center`.

    With tau unset, the radius is the median distance of the rows to the starting point,
    so at most half the rows are clipped whatever the scale of the model.
    """
    batch, n = stack.shape[:2]
    if not (isinstance(iters, int) and iters >= 1):
        raise AggregationError(f"centered_clip: iters must be a whole number >= 1, got {iters!r}")
    v, start = _start(stack, center)
    w = torch.full((batch, n), 1.0 / n) if weights is None else weights / weights.sum(dim=1, keepdim=True)
    if tau is None:  # per entry: torch's median of an even count is the lower middle
        tau_used = torch.linalg.vector_norm(stack - v[:, None, :], dim=2).median(dim=1).values
        radius = tau_used[:, None]
    else:
        tau_used = radius = _radius(tau, "centered_clip")
    factors = None
    for _ in range(iters):
        diff = stack - v[:, None, :]
        factors = _clip_factors(torch.linalg.vector_norm(diff, dim=2), radius)
        v = v + combine(w.to(stack.dtype) * factors, diff)
    return v, BatchReport("centered_clip", n, f, batch, scores=factors,
                          details={"tau": tau_used, "iters": iters, "center": start})


def self_centered_clip(stack: Stack, weights: torch.Tensor | None, *, f: int = 0, own: int = 0,
                       tau: float | None = None, clip: int | None = None) -> tuple[torch.Tensor, BatchReport]:
    """x_own + sum_j w_j clip(x_j - x_own, tau): each neighbour may pull the node's own model
    at most tau. With tau unset, it is the distance of the (clip + 1)-th farthest row, so the
    `clip` farthest rows are clipped (clip = 2f by default: clipping 2f beat clipping f)."""
    batch, n = stack.shape[:2]
    if isinstance(own, bool) or not isinstance(own, int) or not 0 <= own < n:
        raise AggregationError(f"self_centered_clip: own must be a row index in 0..{n - 1}, got {own!r}")
    rows = kernels.as_rows(stack)
    if rows is not None:  # distances to the own row from the Gram kernel's diagonal, rows read in place
        norms = kernels.gram(rows, own, diagonal=True).diagonal(dim1=1, dim2=2).sqrt().to(torch.float32)
    else:
        assert isinstance(stack, torch.Tensor)
        x = stack[:, own]
        diff = stack - x[:, None, :]
        norms = torch.linalg.vector_norm(diff, dim=2)
    tau_used: torch.Tensor | float
    radius: torch.Tensor | float
    if tau is None:
        k = 2 * f if clip is None else clip
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < n:
            raise AggregationError(f"self_centered_clip: clip must be a whole number in 0..{n - 1}")
        if k > 0:
            tau_used = norms.sort(dim=1, descending=True).values[:, k]
            radius = tau_used[:, None]
        else:
            tau_used = radius = float("inf")
    else:
        tau_used = radius = _radius(tau, "self_centered_clip")
    w = torch.full((batch, n), 1.0 / n) if weights is None else weights / weights.sum(dim=1, keepdim=True)
    factors = _clip_factors(norms, radius)
    if rows is not None:  # x_own + sum_j w_j f_j (x_j - x_own), in C
        value = kernels.network(rows, (), (0,), mix=(w.to(torch.float32) * factors)[:, None, :], centre=own)
    else:
        value = x + combine(w.to(stack.dtype) * factors, diff)
    return value, BatchReport("self_centered_clip", n, f, batch, scores=factors,
                              details={"tau": tau_used, "own": own})
