"""Krum, Multi-Krum (Blanchard et al. 2017) and Bulyan (El Mhamdi et al. 2018)."""

from __future__ import annotations

import torch

from ._checks import AggregationError
from ._columns import reduce_sorted
from .coordinate import closest_to_median, weighted_mean
from .distances import squared_distances
from .report import Report


def krum_scores(dist: torch.Tensor, f: int) -> torch.Tensor:
    """Score of each row: sum of squared distances to its n - f - 2 nearest other rows."""
    n = dist.shape[0]
    k = n - f - 2
    if k <= 0:
        return torch.zeros(n, dtype=dist.dtype)
    others = dist + torch.diag(torch.full((n,), float("inf"), dtype=dist.dtype))
    return others.topk(k, dim=1, largest=False).values.sum(dim=1)


def _order(scores: torch.Tensor) -> torch.Tensor:
    """Rows by ascending score; ties broken by row index so the choice is deterministic."""
    return torch.from_numpy(scores.numpy().argsort(kind="stable"))


def krum(stack, weights, *, f: int = 0):
    n = stack.shape[0]
    scores = krum_scores(squared_distances(stack), f)
    best = int(_order(scores)[0])
    return stack[best].clone(), Report("krum", n, f, selected=[best], scores=scores.tolist())


def multi_krum(stack, weights, *, f: int = 0, m: int | None = None):
    """Average (weighted, if weights are given) of the m best-scoring rows, m = n - f by default."""
    n = stack.shape[0]
    m = n - f if m is None else m
    if isinstance(m, bool) or not isinstance(m, int) or not 1 <= m <= n:
        raise AggregationError(f"multi_krum: m must be a whole number in [1, n = {n}], got {m!r}")
    scores = krum_scores(squared_distances(stack), f)
    chosen = _order(scores)[:m].sort().values
    mask = torch.zeros(n, dtype=stack.dtype)
    mask[chosen] = 1.0
    value = weighted_mean(stack, mask if weights is None else mask * weights)  # no row copies
    return value, Report("multi_krum", n, f, selected=chosen.tolist(), scores=scores.tolist(),
                         details={"m": m})


def bulyan(stack, weights, *, f: int = 0):
    """Select theta = n - 2f rows by repeated Krum, then average, per coordinate, the
    beta = theta - 2f selected values nearest the coordinate's median."""
    n = stack.shape[0]
    theta = n - 2 * f
    dist = squared_distances(stack)
    remaining = list(range(n))
    chosen: list[int] = []
    first_scores = None
    for _ in range(theta):  # theta Krum selections, each over the rows still left
        idx = torch.tensor(remaining)
        scores = krum_scores(dist[idx][:, idx], f)
        if first_scores is None:
            first_scores = scores.tolist()
        pick = remaining[int(_order(scores)[0])]
        chosen.append(pick)
        remaining.remove(pick)
    chosen.sort()
    beta = theta - 2 * f
    value = reduce_sorted(stack[chosen], lambda b: closest_to_median(b, beta))
    return value, Report("bulyan", n, f, selected=chosen, scores=first_scores,
                         details={"theta": theta, "beta": beta})
