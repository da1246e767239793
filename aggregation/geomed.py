"""Geometric median by the smoothed Weiszfeld algorithm (Pillutla, Kakade, Harchaoui 2022)."""

from __future__ import annotations

import torch

from ._checks import AggregationError
from .coordinate import weighted_mean
from .report import Report


def geomed(stack, weights, *, f: int = 0, nu: float = 1e-6, tol: float = 1e-7, max_iter: int = 100):
    """argmin_z sum_i w_i max(nu, |z - x_i|), iterating z <- sum_i b_i x_i / sum_i b_i with
    b_i = w_i / max(nu, |z - x_i|), from the weighted mean, until the objective's relative
    change falls below `tol` or `max_iter` iterations ran."""
    n = stack.shape[0]
    if not nu > 0 or not tol > 0 or not (isinstance(max_iter, int) and max_iter >= 1):
        raise AggregationError("geomed: nu and tol must be > 0 and max_iter a whole number >= 1")
    alpha = torch.ones(n, dtype=torch.float64) if weights is None else weights.double()
    alpha = alpha / alpha.sum()
    z = weighted_mean(stack, None if weights is None else weights)
    objective = None
    iterations = 0
    for _ in range(max_iter):
        iterations += 1
        dist = torch.linalg.vector_norm(stack - z, dim=1).double().clamp_min(nu)
        new_objective = float((alpha * dist).sum())
        if objective is not None and abs(objective - new_objective) <= tol * max(new_objective, 1e-30):
            objective = new_objective
            break
        objective = new_objective
        beta = alpha / dist
        z = (beta / beta.sum()).to(stack.dtype) @ stack
    dist = torch.linalg.vector_norm(stack - z, dim=1)
    return z, Report("geomed", n, f, scores=dist.tolist(),
                     details={"iterations": iterations, "objective": objective, "nu": nu})
