"""Robust aggregation on stacked tensors: pure math, no project imports.

    from aggregation import aggregate
    out = aggregate("krum", stack, f=2)     # stack: (n, d) float tensor
    out.value                               # (d,) tensor
    out.report.to_dict()                    # what the provenance log records
"""

from ._checks import AggregationError
from .registry import (
           PRE_REGISTRY,
           PRE_STEPS,
           REGISTRY,
           RULES,
           Rule,
           aggregate,
           parse_rule,
           tolerates,
)
from .report import Aggregate, Report

__all__ = ["AggregationError", "Aggregate", "PRE_REGISTRY", "PRE_STEPS", "REGISTRY", "RULES", "Report", "Rule",
           "aggregate", "parse_rule", "tolerates"]
