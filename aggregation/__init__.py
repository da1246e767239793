"""Robust aggregation on stacked tensors: pure math, no project imports.

    from aggregation import aggregate
    out = aggregate("krum", stack, f=2)     # stack: (n, d) float tensor
    out.value                               # (d,) tensor
    out.report.to_dict()                    # what the provenance log records

    batch = aggregate("krum", stacks, f=2)  # stacks: (B, n, d), e.g. every node of a simulation
    batch.value                             # (B, d): row b is what stacks[b] alone would give
    batch.report[b]                         # entry b's Report (a BatchReport, read lazily)

The catalogue (names, requirements, parameters) imports without torch, so configs and the
CLI start fast; `aggregate` and the report types load torch on first use.
"""

from .catalog import (
    PRE_REGISTRY,
    PRE_STEPS,
    REGISTRY,
    RULES,
    AggregationError,
    Rule,
    parse_rule,
    tolerates,
)

_LAZY = {"aggregate": "registry", "Aggregate": "report", "BatchReport": "report", "Report": "report"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"aggregation.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'aggregation' has no attribute {name!r}")


__all__ = ["AggregationError", "Aggregate", "BatchReport", "PRE_REGISTRY", "PRE_STEPS", "REGISTRY", "RULES", "Report",
           "Rule", "aggregate", "parse_rule", "tolerates"]
