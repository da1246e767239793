"""The rules by name, with what they need and what they take, without importing torch.

Configs, plans, the `gossipfl rules` command and topology analysis only need to know what a
rule is called, what it tolerates and which parameters it takes; they should start in a
fraction of a second. The math lives in the rule modules, imported the first time a rule
runs (`Rule.fn`). A test checks each rule's declared parameters against its function.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass

MAX_MDA_SUBSETS = 200_000  # aggregation.mda.MAX_SUBSETS (checked by a test)


class AggregationError(ValueError):
    """Bad input to a rule, or a rule that cannot work with n rows for this f."""


@dataclass(frozen=True)
class Rule:
    name: str
    where: str  # "module:function" inside aggregation
    takes_weights: bool
    requirement: str
    summary: str
    tolerates: Callable[[int, int], bool] = lambda n, f: True  # noqa: E731
    """tolerates(n, f): can the rule aggregate n rows of which f may be Byzantine?"""
    robust: bool = True  # False for mean: it accepts any f but one Byzantine row moves it anywhere
    params: tuple[str, ...] = ("f",)  # keyword parameters a user may set (`mix` is passed by aggregate)
    reads_rows: bool = False  # takes aggregation._kernels.Rows (rows read in place) as well as a tensor

    @functools.cached_property
    def fn(self) -> Callable:
        module, name = self.where.split(":")
        return getattr(importlib.import_module(f"aggregation.{module}"), name)

    @functools.cached_property
    def fuses_mix(self) -> bool:
        """The rule takes a pre-step's mixing matrix and applies it per block (mix=)."""
        return "mix" in inspect.signature(self.fn).parameters


def _majority(n: int, f: int) -> bool:
    return n > 2 * f


_RULES = [
    Rule("mean", "coordinate:mean", True, "no robustness (f = 0)", "weighted average: the gossip baseline",
         lambda n, f: True, robust=False, reads_rows=True),
    Rule("median", "coordinate:median", False, "n > 2f", "coordinate-wise median", _majority, reads_rows=True),
    Rule("trimmed_mean", "coordinate:trimmed_mean", False, "n > 2f", "coordinate-wise mean after trimming f per side",
         _majority, reads_rows=True),
    Rule("krum", "krum:krum", False, "n > 2f + 2", "the row with the smallest Krum score", lambda n, f: n > 2 * f + 2,
         reads_rows=True),
    Rule("multi_krum", "krum:multi_krum", True, "n > 2f + 2", "mean of the m best Krum rows",
         lambda n, f: n > 2 * f + 2, params=("f", "m"), reads_rows=True),
    Rule("bulyan", "krum:bulyan", False, "n >= 4f + 3", "Krum selection then mean around the median",
         lambda n, f: n >= 4 * f + 3, reads_rows=True),
    Rule("geomed", "geomed:geomed", True, "n > 2f", "geometric median (smoothed Weiszfeld)", _majority,
         params=("f", "nu", "tol", "max_iter")),
    Rule("centered_clip", "clipping:centered_clip", True, "n > 2f", "centred clipping around a robust start",
         _majority, params=("f", "tau", "iters", "center")),
    Rule("self_centered_clip", "clipping:self_centered_clip", True, "n > 2f",
         "each neighbour's pull on the own model clipped (ClippedGossip)", _majority,
         params=("f", "own", "tau", "clip"), reads_rows=True),
    Rule("meamed", "coordinate:meamed", False, "n > 2f", "coordinate-wise mean of the n - f values nearest the median",
         _majority),
    Rule("mda", "mda:mda", True, f"n > 2f and C(n, f) <= {MAX_MDA_SUBSETS:,}",
         "mean of the minimum-diameter n - f rows", _majority),
    Rule("secure_mean", "secure:secure_mean", False, "f = 0 and n >= 3 (two neighbours or more)",
         "mean of masked updates: a node learns only its neighbours' sum (secure aggregation)",
         lambda n, f: n >= 3, robust=False, params=("f", "bound", "threshold")),
]
PRE_REGISTRY = {
    "nnm": Rule("nnm", "presteps:nnm", True, "n > f", "nearest-neighbour mixing", lambda n, f: n > f,
                reads_rows=True),
    "bucketing": Rule("bucketing", "presteps:bucketing", True, "bucket_size >= 1", "average random buckets",
                      params=("f", "bucket_size", "seed"), reads_rows=True),
}
REGISTRY: dict[str, Rule] = {r.name: r for r in _RULES}
RULES: tuple[str, ...] = tuple(REGISTRY)
PRE_STEPS: tuple[str, ...] = tuple(PRE_REGISTRY)


def parse_rule(spec: str) -> tuple[list[str], str]:
    """'nnm+krum' -> (['nnm'], 'krum'): pre-steps joined to the rule with '+'."""
    parts = [p.strip() for p in spec.split("+")] if isinstance(spec, str) else []
    if not parts or not all(parts):
        raise AggregationError(f"aggregation rule must be a name such as 'median' or 'nnm+krum', got {spec!r}")
    *pre, rule = parts
    if rule not in REGISTRY:
        raise AggregationError(f"unknown aggregation rule {rule!r}; choose one of {', '.join(RULES)}")
    for p in pre:
        if p not in PRE_REGISTRY:
            raise AggregationError(f"unknown pre-aggregation step {p!r}; choose from {', '.join(PRE_STEPS)}")
    return pre, rule


def tolerates(rule: str, n: int, f: int) -> bool:
    """Whether `rule` (pre-steps allowed, e.g. 'nnm+krum') can aggregate n rows with f Byzantine."""
    pre, name = parse_rule(rule)
    if f > 0 and not REGISTRY[name].robust:
        return False
    return all(PRE_REGISTRY[p].tolerates(n, f) for p in pre) and REGISTRY[name].tolerates(n, f)
