"""Similarity-aware mixing: a node weights the neighbours whose models are close to its own
more, and each neighbour's pull is clipped to a radius, so a gateway that sees a different
world is not voted down by the fleet and a Byzantine neighbour still cannot drag it far.

For a stack (n, d) or a batch of stacks (B, n, d), row 0 the node's own model x_0:

    d_j  = |x_j - x_0|                                   distance of row j to the own model
    s    = median of d_j over the neighbours (j >= 1)    the scale: the typical neighbour
    w_j  ~ p_j * exp(-(d_j / s)^2 / temperature)         own row: exp(0) = 1, the largest
    tau  = the (2f + 1)-th largest d_j over the neighbours (f = 0: inf, nothing clipped)
    out  = x_0 + sum_j w_j * (x_j - x_0) * min(1, tau / d_j)

p_j are optional prior weights (Metropolis-Hastings), the w_j are normalised to sum to 1
over the rows (own included). With s = 0 (every neighbour equals the own model) all rows
weigh alike; with f = 0 nothing is clipped (the node trusts every neighbour).

How it bounds a Byzantine neighbour (this *is* the robust rule when a node mixes by
similarity; it replaces the configured rule, as self_centered_clip would):

- the radius: among the neighbours at most f are Byzantine, so the (2f + 1)-th largest
  distance is at most some honest neighbour's distance: tau <= the farthest honest one.
  Every row's pull is at most w_j * tau.
- pretending to be similar buys weight but no reach: a row at distance d_j pulls at most
  w_j * min(d_j, tau); close means both a high weight and a short pull. No row weighs more
  than the own row (exp(0) = 1 is the largest factor), so f Byzantine rows together hold at
  most f / (f + 1) of the weight and move the model by at most tau * f / (f + 1): never
  farther than the farthest honest neighbour is.
- the scale s is a median over the neighbours: fewer than half of them cannot change it
  beyond the honest distances, so they cannot make the honest rows look dissimilar.

Like self-centred clipping (ClippedGossip), a node then keeps its own model when the
clipping radius is 0 (fewer than 2f + 2 neighbours delivered: no honest row can be told
from a Byzantine one).

Everything is vectorized over the batch and the rows: one norm, one sort, one weighted sum.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._checks import AggregationError


@dataclass
class SimilarityMix:
    value: torch.Tensor  # (B, d) or (d,)
    weights: torch.Tensor  # (B, n) or (n,): the normalised similarity weights, own row first
    radius: torch.Tensor  # (B,) or (): the clipping radius tau (inf: nothing clipped)
    scale: torch.Tensor  # (B,) or (): s, the median neighbour distance


def _check(temperature: float, f: int) -> None:
    if isinstance(temperature, bool) or not isinstance(temperature, int | float) or not temperature > 0:
        raise AggregationError(f"similarity: temperature must be a number > 0, got {temperature!r}")
    if isinstance(f, bool) or not isinstance(f, int) or f < 0:
        raise AggregationError(f"similarity: f must be a whole number >= 0, got {f!r}")


def distances(stack: torch.Tensor) -> torch.Tensor:
    """(B, n): each row's Euclidean distance to row 0 (the node's own model)."""
    return torch.linalg.vector_norm(stack - stack[:, :1], dim=2)


def similarity_weights(dist: torch.Tensor, prior: torch.Tensor | None = None,
                       temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights (B, n) summing to 1 per entry, scale s (B,)) from distances to the own row
    (B, n), column 0 being the own row (distance 0)."""
    batch, n = dist.shape
    if n > 1:  # the lower middle of the neighbours' distances, as torch.median gives it
        scale = dist[:, 1:].median(dim=1).values
    else:
        scale = torch.zeros(batch, dtype=dist.dtype)
    ratio = torch.where(scale[:, None] > 0, dist / scale.clamp_min(1e-30)[:, None], torch.zeros_like(dist))
    w = torch.exp(-(ratio * ratio) / float(temperature))
    if prior is not None:
        w = w * prior.to(dist.dtype)
    return w / w.sum(dim=1, keepdim=True).clamp_min(1e-30), scale


def clip_radius(dist: torch.Tensor, f: int) -> torch.Tensor:
    """(B,): the (2f + 1)-th largest neighbour distance (inf with f = 0; 0 when there are
    fewer than 2f + 1 neighbours: then only the own model is certainly honest)."""
    batch, n = dist.shape
    if f == 0:
        return torch.full((batch,), float("inf"), dtype=dist.dtype)
    k = 2 * f
    if n - 1 <= k:
        return torch.zeros(batch, dtype=dist.dtype)
    return dist[:, 1:].sort(dim=1, descending=True).values[:, k]


def similarity_mix(stack: torch.Tensor, weights: torch.Tensor | None = None, *, f: int = 0,
                   temperature: float = 1.0) -> SimilarityMix:
    """Mix the rows of `stack` (n, d) or (B, n, d), row 0 the own model, by similarity to
    it, each row's pull clipped to the radius (module docstring). `weights`: optional prior
    weights (n,) or (B, n) (e.g. Metropolis-Hastings), multiplied into the similarity ones."""
    _check(temperature, f)
    single = stack.dim() == 2
    if single:
        stack = stack[None]
        weights = None if weights is None else weights.reshape(1, -1)
    if stack.dim() != 3 or stack.shape[1] < 1:
        raise AggregationError(f"similarity: expected a stack (n, d) or (B, n, d) with n >= 1, got {tuple(stack.shape)}")
    if weights is not None and tuple(weights.shape) != tuple(stack.shape[:2]):
        raise AggregationError(f"similarity: weights {tuple(weights.shape)} do not match the stack {tuple(stack.shape)}")
    dist = distances(stack)
    w, scale = similarity_weights(dist, weights, temperature)
    tau = clip_radius(dist, f)
    factor = torch.where(dist > tau[:, None], tau[:, None] / dist.clamp_min(1e-30), torch.ones_like(dist))
    diff = stack - stack[:, :1]
    value = stack[:, 0] + torch.einsum("bn,bnd->bd", (w * factor).to(stack.dtype), diff)
    if single:
        return SimilarityMix(value[0], w[0], tau[0], scale[0])
    return SimilarityMix(value, w, tau, scale)
