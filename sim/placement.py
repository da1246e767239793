"""Which nodes are Byzantine: random, highest degree, or chosen, with an optional cap.

One implementation for both engines. With `cap` > 0 no honest node gets more than `cap`
Byzantine neighbours (nodes that would break the cap are skipped): random placement of 25%
attackers leaves some honest nodes with half or more Byzantine neighbours, which no local
rule can survive, so results are reported for both.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import networkx as nx

from .errors import ScenarioError


def attacker_count(byzantine: float, nodes: int) -> int:
    """`byzantine` is a fraction (0 < x < 1) or a count."""
    return int(round(byzantine * nodes)) if 0 < byzantine < 1 else int(byzantine)


def place_byzantine(graph: nx.Graph, byzantine: float, rng: random.Random, *, placement: str = "random",
                    cap: int = 0, chosen: Sequence = ()) -> list:
    nodes = sorted(graph.nodes)
    count = attacker_count(byzantine, len(nodes))
    if count >= len(nodes):
        raise ScenarioError(f"attack.byzantine = {byzantine} leaves no honest node")
    if placement == "chosen":
        picked = [n for n in chosen if n in graph]
        if len(picked) != len(chosen):
            raise ScenarioError(f"attack.nodes {list(chosen)} are not all nodes of the graph")
        return sorted(picked)
    if count == 0:
        return []
    picked: list = []
    for _attempt in range(200 if placement == "random" else 1):
        order = nodes[:]
        if placement == "degree":
            order.sort(key=lambda v: (-graph.degree(v), v))
        else:
            rng.shuffle(order)
        picked = []
        bad_neighbours = dict.fromkeys(nodes, 0)  # per node: how many Byzantine neighbours so far
        for v in order:
            if len(picked) == count:
                break
            if cap > 0 and _breaks_cap(graph, v, picked, bad_neighbours, cap):
                continue
            picked.append(v)
            for u in graph.neighbors(v):
                bad_neighbours[u] += 1
        if len(picked) == count:
            break
    if len(picked) < count:
        raise ScenarioError(f"cannot place {count} attackers with at most {cap} next to any honest node; "
                            "lower attack.byzantine or raise attack.cap")
    return sorted(picked)


def _breaks_cap(graph: nx.Graph, v, picked: list, bad_neighbours: dict, cap: int) -> bool:
    """Would making `v` Byzantine give an honest node more than `cap` Byzantine neighbours?
    (v itself stops being honest, so only its honest neighbours gain one.)"""
    chosen = set(picked)
    return any(bad_neighbours[u] + 1 > cap for u in graph.neighbors(v) if u not in chosen)
