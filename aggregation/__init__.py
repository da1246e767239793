"""Robust aggregation on stacked tensors: pure math, no project imports.

    from aggregation import aggregate
    out = aggregate("krum", stack, f=2)     # stack: (n, d) float tensor
    out.value                               # (d,) tensor
    out.report.to_dict()                    # what the provenance log records

    batch = aggregate("krum", stacks, f=2)  # stacks: (B, n, d), e.g. every node of a simulation
    batch.value                             # (B, d): row b is what stacks[b] alone would give
    batch.report[b]                         # entry b's Report (a BatchReport, read lazily)
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
from .report import Aggregate, BatchReport, Report

__all__ = ["AggregationError", "Aggregate", "BatchReport", "PRE_REGISTRY", "PRE_STEPS", "REGISTRY", "RULES", "Report", "Rule",
           "aggregate", "parse_rule", "tolerates"]
