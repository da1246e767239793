"""One call that tells a user what a topology means: size, degrees, distances, how many
failures it survives, how fast gossip mixes on it, and which nodes an attack puts at risk."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import networkx as nx
import numpy as np

from .errors import TopologyError
from .mixing import metropolis_hastings, rounds_to_consensus, second_eigenvalue_modulus
from .robustness import RobustnessReport, analyse

EXACT_LIMIT = 1000  # above this the diameter is a lower bound (double sweep), not exact
CONNECTIVITY_LIMIT = 300  # above this node/edge connectivity are bounded by the minimum degree


@dataclass
class Summary:
    nodes: int
    edges: int
    degree_min: int
    degree_mean: float
    degree_max: int
    connected: bool
    components: int
    diameter: int | None
    diameter_exact: bool
    node_connectivity: int | None
    edge_connectivity: int | None
    connectivity_exact: bool
    spectral_gap: float | None
    rounds_to_1e3: float | None
    robustness: dict | None = field(default=None)  # None: not assessed (no rule and budget given)

    def rows(self) -> list[tuple[str, str]]:
        approx = "" if self.diameter_exact else " (lower bound)"
        conn = "" if self.connectivity_exact else " (upper bound: min degree)"
        out = [("nodes", f"{self.nodes:,}"), ("edges", f"{self.edges:,}"),
               ("degree min / mean / max", f"{self.degree_min} / {self.degree_mean:.2f} / {self.degree_max}"),
               ("connected", f"{self.connected} ({self.components} component{'s' * (self.components > 1)})"),
               ("diameter", f"{self.diameter}{approx}" if self.diameter is not None else "-"),
               ("node failures to disconnect", f"{self.node_connectivity}{conn}" if self.node_connectivity is not None else "-"),
               ("edge cuts to disconnect", f"{self.edge_connectivity}{conn}" if self.edge_connectivity is not None else "-"),
               ("spectral gap (Metropolis-Hastings)", f"{self.spectral_gap:.4g}" if self.spectral_gap is not None else "-"),
               ("gossip rounds to 1e-3 consensus", f"{self.rounds_to_1e3:.1f}" if self.rounds_to_1e3 is not None else "-")]
        r = self.robustness
        if not r:
            out.append(("robustness", "not assessed (no attack budget given)"))
        elif "f" in r:  # a plan's verdict: each node against its own f
            out.append((f"cannot aggregate with {r['rule']} at f={r['f']} per node",
                        f"{len(r['at_risk'])} of {self.nodes} nodes"))
        else:
            out.append((f"at risk under {r['rule']} with {r['budget']} Byzantine",
                        f"{len(r['at_risk'])} of {self.nodes} nodes"))
        return out

    def to_dict(self) -> dict:
        return asdict(self)


def summarize(graph: nx.Graph, rule: str | None = None, byzantine: float | None = None) -> tuple[Summary, RobustnessReport | None]:
    n = graph.number_of_nodes()
    degrees = np.array([d for _, d in graph.degree()])
    components = nx.number_connected_components(graph)
    connected = components == 1
    diameter, d_exact, node_conn, edge_conn, c_exact = None, True, None, None, True
    if connected:
        if n <= EXACT_LIMIT:
            diameter = nx.diameter(graph)
        else:
            diameter, d_exact = nx.approximation.diameter(graph, seed=0), False
        if n <= CONNECTIVITY_LIMIT:
            node_conn, edge_conn = nx.node_connectivity(graph), nx.edge_connectivity(graph)
        else:
            node_conn = edge_conn = int(degrees.min())
            c_exact = False
    else:
        node_conn = edge_conn = 0
    gap = rounds = None
    if connected:
        _, w = metropolis_hastings(graph)
        gap = 1.0 - second_eigenvalue_modulus(w)
        rounds = rounds_to_consensus(gap)
    report = None
    robustness = None
    if byzantine is not None and not (math.isfinite(byzantine) and 0 <= byzantine <= n):
        raise TopologyError(f"the Byzantine budget must be a count in 0..{n} (the nodes) or a fraction below 1, "
                            f"got {byzantine}")
    if rule is not None and byzantine is not None:
        report = analyse(graph, rule, byzantine)
        robustness = {"rule": rule, "budget": report.budget, "at_risk": [str(v) for v in report.at_risk]}
    summary = Summary(n, graph.number_of_edges(), int(degrees.min()), float(degrees.mean()), int(degrees.max()),
                      connected, components, diameter, d_exact, node_conn, edge_conn, c_exact, gap, rounds,
                      robustness)
    return summary, report
