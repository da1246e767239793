"""Geometric median by the smoothed Weiszfeld algorithm (Pillutla, Kakade, Harchaoui 2022)."""

from __future__ import annotations

import torch

from ._checks import AggregationError
from .coordinate import combine, weighted_mean
from .report import BatchReport


def geomed(stack, weights, *, f: int = 0, nu: float = 1e-6, tol: float = 1e-7, max_iter: int = 100):
    """argmin_z sum_i w_i max(nu, |z - x_i|), iterating z <- sum_i b_i x_i / sum_i b_i with
    b_i = w_i / max(nu, |z - x_i|), from the weighted mean, until the objective's relative
    change falls below `tol` or `max_iter` iterations ran.

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
        dist = torch.linalg.vector_norm(stack - z[:, None, :], dim=2).double().clamp_min(nu)
        new_objective = (alpha * dist).sum(dim=1)
        if step:
            settled = (objective - new_objective).abs() <= tol * new_objective.clamp_min(1e-30)
            objective = torch.where(running, new_objective, objective)
            running &= ~settled
            if not bool(running.any()):
                break
        else:
            objective = new_objective
        beta = alpha / dist
        moved = combine(beta / beta.sum(dim=1, keepdim=True), stack)
        z = torch.where(running[:, None], moved, z)
    dist = torch.linalg.vector_norm(stack - z[:, None, :], dim=2)
    return z, BatchReport("geomed", n, f, batch, scores=dist,
                          details={"iterations": iterations, "objective": objective, "nu": nu})
