"""Names -> rules, so configs and the CLI can name them, and the one front door `aggregate`."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from . import clipping, coordinate, geomed, krum, mda, presteps
from ._checks import AggregationError, check_f, check_stack, check_weights, is_uniform
from .report import Aggregate


@dataclass(frozen=True)
class Rule:
    name: str
    fn: Callable
    takes_weights: bool
    requirement: str
    summary: str
    tolerates: Callable[[int, int], bool] = lambda n, f: True  # noqa: E731
    """tolerates(n, f): can the rule aggregate n rows of which f may be Byzantine?"""
    robust: bool = True  # False for mean: it accepts any f but one Byzantine row moves it anywhere

    @property
    def params(self) -> list[str]:
        """Keyword parameters a user may set (`mix` is passed by aggregate itself)."""
        sig = inspect.signature(self.fn)
        return [p for p, v in sig.parameters.items() if v.kind is inspect.Parameter.KEYWORD_ONLY and p != "mix"]

    @property
    def fuses_mix(self) -> bool:
        """The rule takes a pre-step's mixing matrix and applies it per block (mix=)."""
        return "mix" in inspect.signature(self.fn).parameters


def _majority(n: int, f: int) -> bool:
    return n > 2 * f


_RULES = [
    Rule("mean", coordinate.mean, True, "no robustness (f = 0)", "weighted average: the gossip baseline",
         lambda n, f: True, robust=False),
    Rule("median", coordinate.median, False, "n > 2f", "coordinate-wise median", _majority),
    Rule("trimmed_mean", coordinate.trimmed_mean, False, "n > 2f", "coordinate-wise mean after trimming f per side",
         _majority),
    Rule("krum", krum.krum, False, "n > 2f + 2", "the row with the smallest Krum score", lambda n, f: n > 2 * f + 2),
    Rule("multi_krum", krum.multi_krum, True, "n > 2f + 2", "mean of the m best Krum rows",
         lambda n, f: n > 2 * f + 2),
    Rule("bulyan", krum.bulyan, False, "n >= 4f + 3", "Krum selection then mean around the median",
         lambda n, f: n >= 4 * f + 3),
    Rule("geomed", geomed.geomed, True, "n > 2f", "geometric median (smoothed Weiszfeld)", _majority),
    Rule("centered_clip", clipping.centered_clip, True, "n > 2f", "centred clipping around a robust start",
         _majority),
    Rule("self_centered_clip", clipping.self_centered_clip, True, "n > 2f",
         "each neighbour's pull on the own model clipped (ClippedGossip)", _majority),
    Rule("meamed", coordinate.meamed, False, "n > 2f", "coordinate-wise mean of the n - f values nearest the median",
         _majority),
    Rule("mda", mda.mda, True, f"n > 2f and C(n, f) <= {mda.MAX_SUBSETS:,}", "mean of the minimum-diameter n - f rows",
         _majority),
]
PRE_REGISTRY = {
    "nnm": Rule("nnm", presteps.nnm, True, "n > f", "nearest-neighbour mixing", lambda n, f: n > f),
    "bucketing": Rule("bucketing", presteps.bucketing, True, "bucket_size >= 1", "average random buckets"),
}


def tolerates(rule: str, n: int, f: int) -> bool:
    """Whether `rule` (pre-steps allowed, e.g. 'nnm+krum') can aggregate n rows with f Byzantine."""
    pre, name = parse_rule(rule)
    if f > 0 and not REGISTRY[name].robust:
        return False
    return all(PRE_REGISTRY[p].tolerates(n, f) for p in pre) and REGISTRY[name].tolerates(n, f)

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


def _split_params(rule: Rule, steps: list[Rule], params: dict) -> tuple[dict, list[dict]]:
    """Route keyword parameters: `f` goes everywhere, the rest to whichever step names it."""
    known = set(rule.params)
    for s in steps:
        known |= set(s.params)
    unknown = sorted(set(params) - known)
    if unknown:
        raise AggregationError(
            f"unknown parameter(s) {unknown} for {'+'.join([s.name for s in steps] + [rule.name])}; "
            f"allowed: {sorted(known)}")
    rule_params = {k: v for k, v in params.items() if k in rule.params}
    step_params = [{k: v for k, v in params.items() if k in s.params} for s in steps]
    return rule_params, step_params


def aggregate(rule: str, stack: torch.Tensor, weights: torch.Tensor | None = None, *,
              pre: Sequence[str] = (), **params) -> Aggregate:
    """Aggregate the rows of `stack` (n, d) with the named rule: value (d,) and a Report.

    A batch of stacks (B, n, d), with weights (B, n), (n,) or None, is aggregated entry by
    entry in one vectorized pass: value (B, d) and a BatchReport (indexing it gives each
    entry's Report). The (n, d) call is the batch of one, through the same code.

    `rule` may carry pre-steps ('nnm+krum'), or they may be given as `pre=['nnm']`.
    `f` is the number of Byzantine rows the rule must tolerate. Non-uniform weights are
    refused by rules that have no weighted form, rather than silently ignored.
    """
    pre_names, rule_name = parse_rule(rule)
    pre_names = list(pre) + pre_names
    for p in pre_names:
        if p not in PRE_REGISTRY:
            raise AggregationError(f"unknown pre-aggregation step {p!r}; choose from {', '.join(PRE_STEPS)}")
    chosen = REGISTRY[rule_name]
    steps = [PRE_REGISTRY[p] for p in pre_names]
    params.setdefault("f", 0)
    check_f(params["f"])
    rule_params, step_params = _split_params(chosen, steps, params)

    batched = isinstance(stack, torch.Tensor) and stack.dim() == 3
    x = check_stack(stack)  # (B, n, d)
    w = check_weights(weights, x.shape[0], x.shape[1], batched)
    pre_reports, mix = [], None
    for step, sp in zip(steps, step_params, strict=True):
        if mix is not None:  # a later step needs the rows the earlier one made
            x, mix = torch.bmm(mix, x), None
        if not step.tolerates(x.shape[1], params["f"]):
            raise AggregationError(f"{step.name} requires {step.requirement}; got n = {x.shape[1]}, f = {params['f']}")
        mix, w, info = step.fn(x, w, **sp)
        pre_reports.append(info)
    if mix is not None:
        if chosen.fuses_mix:  # applied block by block inside the rule: no (B, n, d) copy
            rule_params["mix"] = mix
        else:
            x, mix = torch.bmm(mix, x), None
    if not chosen.takes_weights and not is_uniform(w):
        raise AggregationError(
            f"{rule_name} has no weighted form; pass weights=None or use one of "
            f"{', '.join(r.name for r in _RULES if r.takes_weights)}")
    if not chosen.takes_weights:
        w = None
    n, f = (x.shape[1] if mix is None else mix.shape[1]), params["f"]
    if not chosen.tolerates(n, f):
        raise AggregationError(f"{rule_name} requires {chosen.requirement}; got n = {n}, f = {f}")
    value, report = chosen.fn(x, w, **rule_params)  # mean with f > 0 is allowed: sweeps compare it
    report.pre = pre_reports
    return Aggregate(value, report) if batched else Aggregate(value[0], report[0])
