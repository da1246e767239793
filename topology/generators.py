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
MAX_NODES = 1_000_000  # the batched engine simulates a million nodes (bench/sim_scale.py)
MAX_EDGES = 5_000_000
MAX_ER_NODES = 5_000  # G(n, p) sampling is quadratic in n


def ring(n: int, seed: int = 0) -> nx.Graph:
    _count(n, 3, "ring:N", "N")
    return nx.cycle_graph(n)


def torus(rows: int, cols: int, seed: int = 0) -> nx.Graph:
    _count(rows, 3, "torus:ROWS,COLS", "ROWS")
    _count(cols, 3, "torus:ROWS,COLS", "COLS")
    _count(rows * cols, 9, "torus:ROWS,COLS", "ROWS * COLS")
    return _relabel(nx.grid_2d_graph(rows, cols, periodic=True))


def grid(rows: int, cols: int, seed: int = 0) -> nx.Graph:
    _count(rows, 1, "grid:ROWS,COLS", "ROWS")
    _count(cols, 1, "grid:ROWS,COLS", "COLS")
    _count(rows * cols, 2, "grid:ROWS,COLS", "ROWS * COLS")
    return _relabel(nx.grid_2d_graph(rows, cols))


def complete(n: int, seed: int = 0) -> nx.Graph:
    _count(n, 2, "complete:N", "N")
    _edges(n * (n - 1) // 2, f"complete:{n}")
    return nx.complete_graph(n)


def star(n: int, seed: int = 0) -> nx.Graph:
    """n nodes: node 0 in the centre. The centralized (server) reference."""
    _count(n, 2, "star:N", "N")
    return nx.star_graph(n - 1)


def regular(n: int, d: int, seed: int = 0) -> nx.Graph:
    _count(n, 2, "regular:N,DEGREE", "N")
    if not 0 < d < n or (n * d) % 2:
        raise TopologyError(f"regular:{n},{d}: needs 0 < d < n and n*d even (DEGREE d, N n)")
    _edges(n * d // 2, f"regular:{n},{d}")
    return _connected(lambda s: nx.random_regular_graph(d, n, seed=s), seed, f"regular:{n},{d}")


def erdos_renyi(n: int, p: float, seed: int = 0) -> nx.Graph:
    _count(n, 2, "er:N,P", "N", high=MAX_ER_NODES)
    if not 0 < p <= 1:
        raise TopologyError(f"er:{n},{p}: P must be in (0, 1]")
    if p < math.log(n) / n * 0.5:
        raise TopologyError(f"er:{n},{p}: P is far below ln(N)/N = {math.log(n) / n:.3f}; "
                            "the graph would almost never be connected")
    _edges(int(p * n * (n - 1) / 2), f"er:{n},{p}")
    return _connected(lambda s: nx.gnp_random_graph(n, p, seed=s), seed, f"er:{n},{p}")


def watts_strogatz(n: int, k: int, p: float, seed: int = 0) -> nx.Graph:
    _count(n, 3, "ws:N,K,P", "N")
    if not 2 <= k < n or k % 2:
        raise TopologyError(f"ws:{n},{k},{p}: K must be even with 2 <= K < N")
    if not 0 <= p <= 1:
        raise TopologyError(f"ws:{n},{k},{p}: P must be in [0, 1]")
    _edges(n * k // 2, f"ws:{n},{k},{p}")
    return _connected(lambda s: nx.watts_strogatz_graph(n, k, p, seed=s), seed, f"ws:{n},{k},{p}")


def barabasi_albert(n: int, m: int, seed: int = 0) -> nx.Graph:
    _count(n, 2, "ba:N,M", "N")
    if not 1 <= m < n:
        raise TopologyError(f"ba:{n},{m}: needs 1 <= M < N")
    _edges(n * m, f"ba:{n},{m}")
    return nx.barabasi_albert_graph(n, m, seed=seed)


def exponential(n: int, seed: int = 0) -> nx.Graph:
    """Each node i linked to i +- 2^k (mod n) for 2^k < n: diameter O(log n), degree ~ 2 log2 n."""
    _count(n, 3, "exp:N", "N")
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
        raise TopologyError(f"unknown topology {name!r:.40}; use one of {forms} (or a graph file)")
    fn, types, form = GENERATORS[name]
    parts = [p.strip() for p in rest.split(",")] if rest else []
    if len(parts) != len(types):
        raise TopologyError(f"{spec!r:.80}: expected {form}")
    args = []
    for t, p in zip(types, parts, strict=True):
        try:
            v = t(p) if len(p) <= 32 else None
        except ValueError:
            v = None
        if v is None or (t is float and not math.isfinite(v)):
            kind = "a whole number" if t is int else "a finite number"
            raise TopologyError(f"{spec!r:.80}: expected {form} with numbers ({kind} where {p!r:.40} is)")
        args.append(v)
    g = fn(*args, seed=seed)
    g.graph["spec"] = spec
    return g


def _relabel(g: nx.Graph) -> nx.Graph:
    return nx.convert_node_labels_to_integers(g, ordering="sorted")


def _count(v: int, low: int, form: str, what: str, high: int = MAX_NODES) -> None:
    if not low <= v <= high:
        raise TopologyError(f"{form}: {what} must be at least {low} and at most {high:,}, got {v}")


def _edges(count: int, what: str) -> None:
    if count > MAX_EDGES:
        raise TopologyError(f"{what}: {count:,} edges, at most {MAX_EDGES:,}")


def _connected(make: Callable[[int], nx.Graph], seed: int, what: str) -> nx.Graph:
    for attempt in range(MAX_RESAMPLES):
        g = make(seed * 1_000_003 + attempt)
        if nx.is_connected(g):
            return g
    raise TopologyError(f"{what}: no connected sample in {MAX_RESAMPLES} tries; raise the degree or p")
