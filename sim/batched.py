"""A vectorized robustness simulator for long sweeps (bench/robustness.py).

All nodes' parameters live in one (N, d) tensor; one local SGD step for every node is a
single torch.func.vmap(grad(...)) over `functional_call` of the peer's own model; each
honest node then aggregates its neighbourhood (own row first) with aggregation.aggregate,
the attackers' rows crafted per target by sim.attacks. No signing, transport or logs:
this answers "which rule, on which graph, under which attack", fast; the protocol engine
(sim.engine) is the one that runs the real peer code.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import networkx as nx
import numpy as np
import torch
from torch.func import functional_call, grad, vmap

from aggregation import REGISTRY, aggregate, parse_rule
from peer.data import digits_pool_and_test, partition
from peer.model import build_model
from topology.mixing import metropolis_hastings

from .attacks import MODEL_ATTACKS, label_flip_map, model_attack
from .engine import place_byzantine
from .scenario import Scenario


@dataclass
class BatchedResult:
    mean_accuracy: float
    min_accuracy: float
    byzantine: list
    cap: int


def _loss(module, names, shapes):
    def loss(flat, x, y):
        params, offset = {}, 0
        for n, s in zip(names, shapes, strict=True):
            k = int(np.prod(s))
            params[n] = flat[offset : offset + k].view(s)
            offset += k
        out = functional_call(module, params, (x,))
        return torch.nn.functional.cross_entropy(out, y)
    return loss


def run_batched(graph: nx.Graph, *, rule: str | None, attack: str, byzantine: int, cap: int, f: int, split: str,
                rounds: int, seed: int, lr: float = 0.1, momentum: float = 0.0, batch: int = 32,
                attack_params: dict | None = None) -> BatchedResult:
    """rule=None: local training only (no gossip). `cap` > 0 caps the attackers next to any honest
    node (0: random placement); `f` is what each rule is told to tolerate."""
    torch.manual_seed(seed)
    nodes = sorted(graph.nodes)
    n = len(nodes)
    index = {v: i for i, v in enumerate(nodes)}
    sc = Scenario(byzantine=byzantine, cap=cap, placement="random")
    bad = place_byzantine(graph, sc, random.Random(seed + 1)) if byzantine else []
    bad_idx = {index[v] for v in bad}
    honest = [i for i in range(n) if i not in bad_idx]

    (x_pool, y_pool), (x_test, y_test) = digits_pool_and_test()
    how, extra = ("labels", {"labels_per_shard": 2}) if split == "noniid" else ("iid", {})
    shards = partition(y_pool, n, how, seed=seed, **extra)
    xs = [torch.from_numpy(x_pool[s]) for s in shards]
    ys = [torch.from_numpy(y_pool[s]) for s in shards]
    flip = label_flip_map(10)
    if attack == "label_flip":
        for i in bad_idx:
            ys[i] = flip[ys[i]]
    x_test, y_test = torch.from_numpy(x_test), torch.from_numpy(y_test)

    module = build_model("mlp", 64, 10, {"hidden": [32]}, seed=seed)
    names = [k for k, _ in module.named_parameters()]
    shapes = [tuple(p.shape) for _, p in module.named_parameters()]
    init = torch.cat([p.detach().reshape(-1) for p in module.parameters()])
    params = init.repeat(n, 1)  # every node starts from the same seeded model
    buf = torch.zeros_like(params)
    step = vmap(grad(_loss(module, names, shapes)))
    gen = torch.Generator().manual_seed(seed)

    _, w_mat = metropolis_hastings(graph)
    w_dense = torch.tensor(w_mat.toarray(), dtype=torch.float32)
    neigh = [[index[u] for u in sorted(graph.neighbors(v))] for v in nodes]
    rule_takes_weights = rule is not None and REGISTRY[parse_rule(rule)[1]].takes_weights
    gen_attack = torch.Generator().manual_seed(seed + 99)

    for _ in range(rounds):
        idx = [torch.randint(0, len(y), (min(batch, len(y)),), generator=gen) for y in ys]
        xb = torch.stack([x[i] for x, i in zip(xs, idx, strict=True)])
        yb = torch.stack([y[i] for y, i in zip(ys, idx, strict=True)])
        g = step(params, xb, yb)
        if momentum:
            buf.mul_(momentum).add_(g)
            g = buf
        params = params - lr * g
        if rule is None:
            continue
        new = params.clone()
        for i in honest:
            rows = [i] + neigh[i]
            stack = params[rows].clone()
            for j, r in enumerate(rows):
                if r in bad_idx and attack in MODEL_ATTACKS:
                    hon = [i] + [u for u in neigh[i] if u not in bad_idx]
                    stack[j] = model_attack(attack, params[hon], params[i], params[r], n=len(rows),
                                            b=sum(1 for u in neigh[i] if u in bad_idx), gen=gen_attack,
                                            params=attack_params, honest_without_target=params[hon[1:]])
            weights = w_dense[i, rows] if rule_takes_weights else None
            out = aggregate(rule, stack, weights, f=f, **({"own": 0} if "own" in REGISTRY[parse_rule(rule)[1]].params else {}))
            new[i] = out.value
        params = new

    with torch.no_grad():
        accs = []
        for i in honest:
            p, offset = {}, 0
            for nme, s in zip(names, shapes, strict=True):
                k = int(np.prod(s))
                p[nme] = params[i, offset : offset + k].view(s)
                offset += k
            out = functional_call(module, p, (x_test,))
            accs.append(float((out.argmax(1) == y_test).float().mean()))
    return BatchedResult(float(np.mean(accs)), float(np.min(accs)), bad, cap)


def minimal_cap(graph: nx.Graph, byzantine: int, seed: int) -> int:
    """The smallest per-node cap for which `byzantine` attackers can be placed."""
    if byzantine == 0:
        return 0
    for cap in range(1, max(d for _, d in graph.degree()) + 1):
        try:
            place_byzantine(graph, Scenario(byzantine=byzantine, cap=cap), random.Random(seed + 1))
            return cap
        except Exception:
            continue
    return 0
