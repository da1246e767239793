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


MIN_DEGREE_SEARCH = 64  # a rule that no degree up to this satisfies for f is reported as "no degree"


@dataclass
class PlanCheck:
    """Whether every node of a plan can aggregate: a node of degree d runs `rule` over d + 1
    rows and must tolerate its own `f` (the peer keeps its own model every round otherwise).
    When some cannot, what would work: a minimum degree, the largest f every node tolerates,
    and the other rules that fit every node at this f."""

    rule: str
    f: int
    weak: list  # nodes whose neighbourhood is too small
    safe_count: int
    degrees: dict  # node -> degree, for the weak ones
    min_degree: int | None  # smallest degree at which rule tolerates f (None: none does)
    max_f: int  # largest f that every node tolerates under rule (-1: not even f = 0)
    fitting_rules: list[str]

    @property
    def ok(self) -> bool:
        return not self.weak

    def to_dict(self) -> dict:
        """The robustness verdict analysis.json carries."""
        return {"rule": self.rule, "f": self.f, "budget": self.f, "per": "node (f Byzantine neighbours each)",
                "ok": self.ok, "at_risk": [str(v) for v in self.weak], "min_degree": self.min_degree,
                "max_f": self.max_f, "fitting_rules": self.fitting_rules}

    def problem(self) -> str:
        """One sentence: which nodes cannot aggregate and why."""
        shown = ", ".join(f"{v} (degree {self.degrees[v]})" for v in self.weak[:8])
        more = f" and {len(self.weak) - 8} more" if len(self.weak) > 8 else ""
        return (f"{len(self.weak)} of {len(self.weak) + self.safe_count} node(s) cannot aggregate with {self.rule} "
                f"at f={self.f} ({_requirement(self.rule)}): {shown}{more}")

    def suggestions(self) -> list[str]:
        """What would work, as the flags of `topology plan` (an empty list when nothing is known)."""
        out: list[str] = []
        if self.ok:
            return out
        if self.min_degree is not None:
            n, d = self.safe_count + len(self.weak), self.min_degree
            d += (n * d) % 2  # a d-regular graph on n nodes needs n * d even
            example = f" (e.g. regular:{n},{d})" if d < n else f" (so at least {self.min_degree + 1} nodes)"
            out.append(f"a graph in which every node has degree >= {self.min_degree}{example}")
        if 0 <= self.max_f < self.f:
            out.append(f"--f {self.max_f}")
        if self.fitting_rules:
            more = f" (or {len(self.fitting_rules) - 4} more)" if len(self.fitting_rules) > 4 else ""
            out.append(f"--rule {' or '.join(self.fitting_rules[:4])}{more}")
        return out


def _requirement(rule: str) -> str:
    from aggregation import PRE_REGISTRY, REGISTRY

    pre, name = parse_rule(rule)
    if not REGISTRY[name].robust:
        return f"{name} tolerates no Byzantine neighbour: f must be 0"
    parts = [PRE_REGISTRY[p].requirement for p in pre] + [REGISTRY[name].requirement]
    return f"{rule} requires " + " and ".join(parts) + " with n = degree + 1"


def min_degree(rule: str, f: int, limit: int = MIN_DEGREE_SEARCH) -> int | None:
    """Smallest degree d such that the rule tolerates f Byzantine among d + 1 rows."""
    for d in range(limit + 1):
        if tolerates(rule, d + 1, f):
            return d
    return None


def check_plan(graph: nx.Graph, rule: str, f: int) -> PlanCheck:
    """Every node's neighbourhood against the rule's requirement for f; pure, no I/O."""
    from aggregation import REGISTRY

    try:
        parse_rule(rule)
    except AggregationError as exc:
        raise TopologyError(str(exc)) from None
    if isinstance(f, bool) or not isinstance(f, int) or f < 0:
        raise TopologyError(f"f must be a whole number >= 0, got {f!r}")
    degrees = dict(graph.degree())
    distinct = sorted(set(degrees.values()))
    weak = [v for v in graph.nodes if not tolerates(rule, degrees[v] + 1, f)]
    max_f = min((max_byzantine(rule, d) for d in distinct), default=-1)
    fitting = [name for name in REGISTRY if name != rule
               and all(tolerates(name, d + 1, f) for d in distinct)] if weak else []
    return PlanCheck(rule, f, weak, len(degrees) - len(weak), {v: degrees[v] for v in weak}, min_degree(rule, f),
                     max_f, fitting)
