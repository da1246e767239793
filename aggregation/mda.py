"""Minimum-diameter averaging (El Mhamdi et al. 2020): the mean of the n - f rows whose
largest pairwise distance is smallest. Combinatorial, so bounded by MAX_SUBSETS."""

from __future__ import annotations

import itertools
import math

import torch

from ._checks import AggregationError
from .coordinate import weighted_mean
from .distances import squared_distances
from .report import Report

MAX_SUBSETS = 200_000
_SUBSETS_PER_BATCH = 20_000


def mda(stack, weights, *, f: int = 0):
    n = stack.shape[0]
    count = math.comb(n, f)
    if count > MAX_SUBSETS:
        raise AggregationError(
            f"mda enumerates C(n, f) = C({n}, {f}) = {count:,} subsets, more than the "
            f"{MAX_SUBSETS:,} allowed; use a smaller neighbourhood or another rule (e.g. multi_krum)")
    dist = squared_distances(stack)
    best_diameter, best_subset = math.inf, None
    # Enumerate the f rows to drop; the kept set's diameter is a masked max, a batch at a time.
    dropped = itertools.combinations(range(n), f)
    while True:
        batch = list(itertools.islice(dropped, _SUBSETS_PER_BATCH))
        if not batch:
            break
        keep = torch.ones(len(batch), n, dtype=torch.bool)
        if f:
            keep.scatter_(1, torch.tensor(batch, dtype=torch.long), False)
        pair = keep[:, :, None] & keep[:, None, :]
        diam = torch.where(pair, dist[None], torch.zeros((), dtype=dist.dtype)).amax(dim=(1, 2))
        i = int(diam.argmin())
        if float(diam[i]) < best_diameter:
            best_diameter, best_subset = float(diam[i]), keep[i]
    chosen = torch.nonzero(best_subset).flatten()
    mask = best_subset.to(stack.dtype)
    value = weighted_mean(stack, mask if weights is None else mask * weights)
    return value, Report("mda", n, f, selected=chosen.tolist(),
                         details={"diameter": math.sqrt(best_diameter), "subsets": count})
