"""Geometric median by Weiszfeld's algorithm, smoothed (Pillutla, Kakade, Harchaoui 2022) and
with Vardi and Zhang's (2000) step off a row the iterate sits on."""

from __future__ import annotations

import torch

from ._checks import AggregationError
from .coordinate import combine, weighted_mean
from .report import BatchReport


def _step(stack: torch.Tensor, alpha: torch.Tensor, z: torch.Tensor, dist: torch.Tensor,
          on: torch.Tensor) -> torch.Tensor:
    """One Weiszfeld step from z (B, d) for every batch entry. Rows within nu of z (`on`) are
    left out of the weighted mean T, and z goes from T back towards itself by min(1, eta / r):
    eta, the weight of those rows, against r, the pull of the others |sum_i b_i (x_i - z)|.
    Plain Weiszfeld stays on any row it lands on (its weight 1/nu swamps the rest), and the
    mean of rounded values often is a row: it returned a row that is not the median."""
    beta = torch.where(on, 0.0, alpha / dist)  # (B, n)
    total = beta.sum(dim=1)
    target = combine(beta / total.clamp_min(1e-300)[:, None], stack)
    eta = (alpha * on).sum(dim=1)
    pull = total * torch.linalg.vector_norm(target - z, dim=1).double()
    keep = torch.where(eta > 0, (eta / pull.clamp_min(1e-300)).clamp(max=1.0), 0.0)  # every row on z: z stays
    return target + keep[:, None].to(z.dtype) * (z - target)


def geomed(stack: torch.Tensor, weights: torch.Tensor | None, *, f: int = 0, nu: float = 1e-6, tol: float = 1e-7,
           max_iter: int = 100) -> tuple[torch.Tensor, BatchReport]:
    """argmin_z sum_i w_i max(nu, |z - x_i|), iterating z <- sum_i b_i x_i / sum_i b_i with
    b_i = w_i / |z - x_i| over the rows farther than nu from z (see `_step` for the others),
    from the weighted mean, until the objective's relative change falls below `tol` or
    `max_iter` iterations ran.

    A batch iterates together; an entry that has converged keeps its z and its count of
    iterations, so each entry ends where it would alone."""
    batch, n = stack.shape[:2]
    if not nu > 0 or not tol > 0 or not (isinstance(max_iter, int) and max_iter >= 1):
        raise AggregationError("geomed: nu and tol must be > 0 and max_iter a whole number >= 1")
    alpha = torch.ones(batch, n, dtype=torch.float64) if weights is None else weights.double()
    alpha = alpha / alpha.sum(dim=1, keepdim=True)
    z = weighted_mean(stack, weights)
    objective = torch.full((batch,), float("nan"), dtype=torch.float64)
    iterations = torch.zeros(batch, dtype=torch.long)
    running = torch.ones(batch, dtype=torch.bool)
    for step in range(max_iter):
        iterations += running
        raw = torch.linalg.vector_norm(stack - z[:, None, :], dim=2).double()
        dist = raw.clamp_min(nu)
        new_objective = (alpha * dist).sum(dim=1)
        if step:
            settled = (objective - new_objective).abs() <= tol * new_objective.clamp_min(1e-30)
            objective = torch.where(running, new_objective, objective)
            running &= ~settled
            if not bool(running.any()):
                break
        else:
            objective = new_objective
        z = torch.where(running[:, None], _step(stack, alpha, z, dist, raw <= nu), z)
    dist = torch.linalg.vector_norm(stack - z[:, None, :], dim=2)
    return z, BatchReport("geomed", n, f, batch, scores=dist,
                          details={"iterations": iterations, "objective": objective, "nu": nu})
