"""Minimum-diameter averaging (El Mhamdi et al. 2020): the mean of the n - f rows whose
largest pairwise distance is smallest. Combinatorial, so bounded by MAX_SUBSETS per
batch entry; a batch enumerates the subsets once and scores them for every entry."""

from __future__ import annotations

import itertools
import math

import torch

from ._checks import AggregationError
from .coordinate import weighted_mean
from .distances import squared_distances
from .report import BatchReport

MAX_SUBSETS = 200_000
_CELLS_PER_CHUNK = 1 << 22  # (B, subsets, n, n) cells scored at once: bounds the memory


def mda(stack: torch.Tensor, weights: torch.Tensor | None, *, f: int = 0) -> tuple[torch.Tensor, BatchReport]:
    batch, n = stack.shape[:2]
    count = math.comb(n, f)
    if count > MAX_SUBSETS:
        raise AggregationError(
            f"mda enumerates C(n, f) = C({n}, {f}) = {count:,} subsets, more than the "
            f"{MAX_SUBSETS:,} allowed; use a smaller neighbourhood or another rule (e.g. multi_krum)")
    dist = squared_distances(stack)
    best_diameter = torch.full((batch,), math.inf, dtype=dist.dtype)
    best_keep = torch.ones(batch, n, dtype=torch.bool)
    # Enumerate the f rows to drop; each kept set's diameter is a masked max, a chunk at a time.
    dropped = itertools.combinations(range(n), f)
    per_chunk = max(1, _CELLS_PER_CHUNK // (batch * n * n))
    while True:
        chunk = list(itertools.islice(dropped, per_chunk))
        if not chunk:
            break
        keep = torch.ones(len(chunk), n, dtype=torch.bool)
        if f:
            keep.scatter_(1, torch.tensor(chunk, dtype=torch.long), False)
        pair = keep[:, :, None] & keep[:, None, :]  # (S, n, n)
        diam = torch.where(pair, dist[:, None], torch.zeros((), dtype=dist.dtype)).amax(dim=(2, 3))  # (B, S)
        i = diam.argmin(dim=1)  # the first of equal minima, as a loop over subsets would keep
        low = diam.gather(1, i[:, None]).squeeze(1)
        better = low < best_diameter
        best_diameter = torch.where(better, low, best_diameter)
        best_keep = torch.where(better[:, None], keep[i], best_keep)
    chosen = torch.nonzero(best_keep)[:, 1].view(batch, n - f)  # ascending within each entry
    mask = best_keep.to(stack.dtype)
    value = weighted_mean(stack, mask if weights is None else mask * weights)
    return value, BatchReport("mda", n, f, batch, selected=chosen,
                              details={"diameter": best_diameter.sqrt(), "subsets": count})
