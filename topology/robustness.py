"""Per-node robustness: can each node's aggregation rule survive the attackers it may face?

A node aggregates its own model and its neighbours' (n_i = degree + 1 rows). In the worst
placement, b_i = min(F, degree) of its neighbours are Byzantine (F = the attack budget).
The node is safe if its rule tolerates (n_i, b_i), per aggregation's own requirements.
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx

from aggregation import AggregationError, parse_rule, tolerates

from .errors import TopologyError


@dataclass
class NodeVerdict:
    node: object
    degree: int
    byzantine_neighbours: int
    safe: bool


@dataclass
class RobustnessReport:
    rule: str
    budget: int
    nodes: list[NodeVerdict]

    @property
    def at_risk(self) -> list:
        return [v.node for v in self.nodes if not v.safe]


def budget_of(graph: nx.Graph, byzantine: float) -> int:
    """A count (>= 1) or a fraction (< 1) of the nodes."""
    if byzantine < 0:
        raise TopologyError(f"the number of Byzantine peers must be >= 0, got {byzantine}")
    if 0 < byzantine < 1:
        return int(round(byzantine * graph.number_of_nodes()))
    if byzantine != int(byzantine):
        raise TopologyError(f"Byzantine peers: a whole count or a fraction below 1, got {byzantine}")
    return int(byzantine)


def max_byzantine(rule: str, degree: int) -> int:
    """Largest b such that the rule tolerates b Byzantine among degree + 1 rows."""
    best = -1
    for b in range(degree + 1):
        if tolerates(rule, degree + 1, b):
            best = b
        else:
            break
    return best


def analyse(graph: nx.Graph, rule: str, byzantine: float) -> RobustnessReport:
    try:
        parse_rule(rule)
    except AggregationError as exc:
        raise TopologyError(str(exc)) from None
    budget = budget_of(graph, byzantine)
    verdicts = []
    for v in graph.nodes:
        deg = graph.degree(v)
        b = min(budget, deg)
        verdicts.append(NodeVerdict(v, deg, b, tolerates(rule, deg + 1, b)))
    return RobustnessReport(rule, budget, verdicts)
