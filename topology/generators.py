"""Graph generators by name, and the compact spec strings the CLI takes.

    ring:16  torus:4,4  grid:4,4  complete:8  regular:32,4  er:50,0.1  ws:40,4,0.1
    ba:50,2  star:9  exp:16

Every generator is seeded; random ones are resampled until connected.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import networkx as nx

from .errors import TopologyError

MAX_RESAMPLES = 200


def ring(n: int, seed: int = 0) -> nx.Graph:
    _at_least(n, 3, "ring")
    return nx.cycle_graph(n)


def torus(rows: int, cols: int, seed: int = 0) -> nx.Graph:
    _at_least(rows, 3, "torus rows")
    _at_least(cols, 3, "torus cols")
    return _relabel(nx.grid_2d_graph(rows, cols, periodic=True))


def grid(rows: int, cols: int, seed: int = 0) -> nx.Graph:
    _at_least(rows * cols, 2, "grid")
    return _relabel(nx.grid_2d_graph(rows, cols))


def complete(n: int, seed: int = 0) -> nx.Graph:
    _at_least(n, 2, "complete")
    return nx.complete_graph(n)


def star(n: int, seed: int = 0) -> nx.Graph:
    """n nodes: node 0 in the centre. The centralized (server) reference."""
    _at_least(n, 2, "star")
    return nx.star_graph(n - 1)


def regular(n: int, d: int, seed: int = 0) -> nx.Graph:
    if not 0 < d < n or (n * d) % 2:
        raise TopologyError(f"regular:{n},{d}: needs 0 < d < n and n*d even")
    return _connected(lambda s: nx.random_regular_graph(d, n, seed=s), seed, f"regular:{n},{d}")


def erdos_renyi(n: int, p: float, seed: int = 0) -> nx.Graph:
    if not 0 < p <= 1:
        raise TopologyError(f"er:{n},{p}: p must be in (0, 1]")
    if p < math.log(max(n, 2)) / n * 0.5:
        raise TopologyError(f"er:{n},{p}: p is far below ln(n)/n = {math.log(n) / n:.3f}; "
                            "the graph would almost never be connected")
    return _connected(lambda s: nx.gnp_random_graph(n, p, seed=s), seed, f"er:{n},{p}")


def watts_strogatz(n: int, k: int, p: float, seed: int = 0) -> nx.Graph:
    if not 2 <= k < n or k % 2:
        raise TopologyError(f"ws:{n},{k},{p}: k must be even with 2 <= k < n")
    if not 0 <= p <= 1:
        raise TopologyError(f"ws:{n},{k},{p}: p must be in [0, 1]")
    return _connected(lambda s: nx.watts_strogatz_graph(n, k, p, seed=s), seed, f"ws:{n},{k},{p}")


def barabasi_albert(n: int, m: int, seed: int = 0) -> nx.Graph:
    if not 1 <= m < n:
        raise TopologyError(f"ba:{n},{m}: needs 1 <= m < n")
    return nx.barabasi_albert_graph(n, m, seed=seed)


def exponential(n: int, seed: int = 0) -> nx.Graph:
    """Each node i linked to i +- 2^k (mod n) for 2^k < n: diameter O(log n), degree ~ 2 log2 n."""
    _at_least(n, 3, "exp")
    g = nx.Graph()
    g.add_nodes_from(range(n))
    k = 1
    while k < n:
        for i in range(n):
            j = (i + k) % n
            if j != i:
                g.add_edge(i, j)
        k *= 2
    return g


GENERATORS: dict[str, tuple[Callable[..., nx.Graph], tuple[type, ...], str]] = {
    "ring": (ring, (int,), "ring:N"),
    "torus": (torus, (int, int), "torus:ROWS,COLS"),
    "grid": (grid, (int, int), "grid:ROWS,COLS"),
    "complete": (complete, (int,), "complete:N"),
    "star": (star, (int,), "star:N"),
    "regular": (regular, (int, int), "regular:N,DEGREE"),
    "er": (erdos_renyi, (int, float), "er:N,P"),
    "ws": (watts_strogatz, (int, int, float), "ws:N,K,P"),
    "ba": (barabasi_albert, (int, int), "ba:N,M"),
    "exp": (exponential, (int,), "exp:N"),
}


def from_spec(spec: str, seed: int = 0) -> nx.Graph:
    """Build a graph from 'name:arg,arg'; errors list the accepted forms."""
    name, _, rest = spec.strip().partition(":")
    if name not in GENERATORS:
        forms = ", ".join(v[2] for v in GENERATORS.values())
        raise TopologyError(f"unknown topology {name!r}; use one of {forms} (or a graph file)")
    fn, types, form = GENERATORS[name]
    parts = [p.strip() for p in rest.split(",")] if rest else []
    if len(parts) != len(types):
        raise TopologyError(f"{spec!r}: expected {form}")
    try:
        args = [t(p) for t, p in zip(types, parts, strict=True)]
    except ValueError:
        raise TopologyError(f"{spec!r}: expected {form} with numbers") from None
    g = fn(*args, seed=seed)
    g.graph["spec"] = spec
    return g


def _relabel(g: nx.Graph) -> nx.Graph:
    return nx.convert_node_labels_to_integers(g, ordering="sorted")


def _at_least(v: int, low: int, what: str) -> None:
    if v < low:
        raise TopologyError(f"{what} needs at least {low}, got {v}")


def _connected(make: Callable[[int], nx.Graph], seed: int, what: str) -> nx.Graph:
    for attempt in range(MAX_RESAMPLES):
        g = make(seed * 1_000_003 + attempt)
        if nx.is_connected(g):
            return g
    raise TopologyError(f"{what}: no connected sample in {MAX_RESAMPLES} tries; raise the degree or p")
