"""Names -> rules, so configs and the CLI can name them, and the one front door `aggregate`."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from . import _kernels as kernels
from ._checks import check_f, check_stack, check_weights, is_uniform
from ._kernels import Rows
from .catalog import (
    _RULES,
    PRE_REGISTRY,
    PRE_STEPS,
    REGISTRY,
    AggregationError,
    Rule,
    parse_rule,
)
from .report import Aggregate


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


def aggregate(rule: str, stack: torch.Tensor | Rows, weights: torch.Tensor | None = None, *,
              pre: Sequence[str] = (), **params) -> Aggregate:
    """Aggregate the rows of `stack` (n, d) with the named rule: value (d,) and a Report.

    A batch of stacks (B, n, d), with weights (B, n), (n,) or None, is aggregated entry by
    entry in one vectorized pass: value (B, d) and a BatchReport (indexing it gives each
    entry's Report). The (n, d) call is the batch of one, through the same code.

    `rule` may carry pre-steps ('nnm+krum'), or they may be given as `pre=['nnm']`.
    `f` is the number of Byzantine rows the rule must tolerate. Non-uniform weights are
    refused by rules that have no weighted form, rather than silently ignored.

    `stack` may also be aggregation._kernels.Rows (a batch named by rows read in place): rules
    that read rows (`Rule.reads_rows`) take it as it is, the others get it gathered.
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

    batched = isinstance(stack, Rows) or (isinstance(stack, torch.Tensor) and stack.dim() == 3)
    x = check_stack(stack)  # (B, n, d)
    w = check_weights(weights, x.shape[0], x.shape[1], batched)
    if isinstance(x, Rows) and not (len(steps) <= 1 and kernels.available() and chosen.reads_rows
                                    and all(s.reads_rows for s in steps)):
        x = x.materialize()
    pre_reports, mix = [], None
    for step, sp in zip(steps, step_params, strict=True):
        if mix is not None:  # a later step needs the rows the earlier one made
            assert isinstance(x, torch.Tensor)  # Rows take one step at most (gathered above)
            x, mix = torch.bmm(mix, x), None
        if not step.tolerates(x.shape[1], params["f"]):
            raise AggregationError(f"{step.name} requires {step.requirement}; got n = {x.shape[1]}, f = {params['f']}")
        mix, w, info = step.fn(x, w, **sp)
        pre_reports.append(info)
    if mix is not None:
        if chosen.fuses_mix:  # applied block by block inside the rule: no (B, n, d) copy
            rule_params["mix"] = mix
        else:
            x, mix = torch.bmm(mix, x.materialize() if isinstance(x, Rows) else x), None
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
