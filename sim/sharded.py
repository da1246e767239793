"""Simulation beyond one machine, on Ray (an optional extra: pip install 'gossipfl[ray]').

- `run_jobs`: the runs of a sweep as Ray tasks across the cluster; results come back to the
  driver, which writes them into one folder.
- `run_sharded`: one batched run split over Ray actors by a graph partition. Each actor
  owns a block of nodes (a `sim.batched.Shard`); each round it trains its block, puts the
  trained rows that other blocks need (its boundary) into the object store, takes the rows
  its own nodes need from theirs (its halo), and aggregates. Randomness is keyed by node, not
  by position (sim.streams), so the result equals the single-process run's for the same seed.

Ray moves objects between our own processes with its own serialization; nothing read from
the network outside the cluster is unpickled here.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import networkx as nx
import numpy as np

from gossip.envelope import max_message_size

from . import user
from .batched import Shard, Topo, eval_every, evaluated, round_metrics, setup
from .engine import RunResult
from .errors import ScenarioError
from .privacy import epsilon_spent
from .scenario import Scenario

RAY_HINT = "Ray is not installed: pip install 'gossipfl[ray]'"


def connect(address: str):
    """ray, initialised: an existing instance in this process, the cluster at ADDRESS, or with
    "auto" a running cluster if there is one, else a local instance."""
    try:
        import ray
    except ImportError:
        raise ScenarioError(RAY_HINT) from None
    if ray.is_initialized():
        return ray
    env = {"env_vars": {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}}
    try:
        if address == "auto":
            try:
                ray.init(address="auto", runtime_env=env, log_to_driver=False)
            except ConnectionError:
                ray.init(runtime_env=env, log_to_driver=False)
        else:
            ray.init(address=address, runtime_env=env, log_to_driver=False)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise ScenarioError(f"--ray {address}: cannot reach a Ray cluster: {exc}") from None
    return ray


def partition_blocks(topo: Topo, blocks: int) -> list[np.ndarray]:
    """`blocks` node sets of near-equal size, each grown breadth-first from its lowest
    unassigned node, so neighbourhoods mostly stay inside one block (few rows cross the cut)."""
    n = topo.n
    blocks = max(1, min(blocks, n))
    size = -(-n // blocks)
    owner = np.full(n, -1, dtype=np.int64)
    nxt = 0
    for b in range(blocks):
        want = min(size, n - b * size) if b < blocks - 1 else int((owner < 0).sum())
        taken = 0
        queue: deque = deque()
        while taken < want:
            if not queue:
                while owner[nxt] >= 0:
                    nxt += 1
                queue.append(nxt)
                owner[nxt] = b
                taken += 1
                continue
            v = queue.popleft()
            for u in topo.nbr[topo.ptr[v]:topo.ptr[v + 1]]:
                if taken >= want:
                    break
                if owner[u] < 0:
                    owner[u] = b
                    taken += 1
                    queue.append(int(u))
    return [np.flatnonzero(owner == b) for b in range(blocks)]


class ShardWorker:
    """What one Ray actor runs: a Shard, one thread."""

    def __init__(self, sc: Scenario, rule: str, topo: Topo, own: np.ndarray):
        import torch

        torch.set_num_threads(1)
        self.shard = Shard(sc, rule, topo, own)

    def train(self, r: int):
        self.shard.churn(r)
        self.shard.train(r)
        ids, rows = self.shard.export()
        return ids, rows.numpy()

    def aggregate(self, r: int, evaluate: bool, *exports) -> dict:
        import torch

        for ids, rows in exports:
            self.shard.take_halo(ids, torch.from_numpy(rows))
        delivered = self.shard.aggregate(r)
        m = self.shard.measure(evaluate)
        s = self.shard
        up = ~s.down[s.own]
        sent = int(s.topo.degree[s.own][up].sum()) if r < s.releases else 0  # none once the privacy budget is spent
        return {**m, "delivered": delivered, "sent": sent, "online": int(up.sum())}

    def dimension(self) -> int:
        return self.shard.d

    def counts(self) -> np.ndarray:
        return self.shard.train_data.count


def run_sharded(sc: Scenario, rule: str, graph: nx.Graph, shards: int, *, address: str = "auto",
                progress: Callable[[int], None] | None = None) -> tuple[RunResult, np.ndarray]:
    """One batched run over `shards` Ray actors; (result, training samples per node)."""
    ray = connect(address)
    t_start = time.monotonic()
    topo = setup(sc, graph)
    blocks = partition_blocks(topo, shards)
    topo_ref = ray.put(topo)
    actor = ray.remote(num_cpus=0)(ShardWorker)  # actors wait on each other: never block on free CPUs
    actors = [actor.options(scheduling_strategy="SPREAD").remote(sc, rule, topo_ref, own) for own in blocks]
    try:
        # which blocks each block takes rows from: those owning a node of its halo
        owner = np.empty(topo.n, dtype=np.int64)
        for b, own in enumerate(blocks):
            owner[own] = b
        sources = []
        for b, own in enumerate(blocks):
            nb = np.unique(np.concatenate([topo.nbr[topo.ptr[i]:topo.ptr[i + 1]] for i in own]))
            sources.append(sorted(set(owner[nb].tolist()) - {b}))
        counts = np.zeros(topo.n, dtype=np.int64)
        for own, c in zip(blocks, ray.get([a.counts.remote() for a in actors]), strict=True):
            counts[own] = c
        size = None
        byz = [topo.labels[i] for i in np.flatnonzero(topo.byz)]
        metric = user.metric(sc)
        result = RunResult(rule, sc, byz, engine="batched", metric=metric[0], higher_is_better=metric[1])
        every = eval_every(sc, topo.n)
        for r in range(sc.rounds):
            t0 = time.monotonic()
            exports = [a.train.remote(r) for a in actors]
            evaluate = evaluated(r, sc.rounds, every)
            parts = ray.get([a.aggregate.remote(r, evaluate, *[exports[j] for j in sources[b]])
                             for b, a in enumerate(actors)])
            if size is None:
                size = max_message_size(sc.codec, int(ray.get(actors[0].dimension.remote())))
            result.rounds.append(round_metrics(r, parts, topo.labels, sum(p["delivered"] for p in parts),
                                               sum(p["sent"] for p in parts), size, sum(p["online"] for p in parts),
                                               time.monotonic() - t0))
            if progress:
                progress(1)
    finally:
        for a in actors:
            ray.kill(a)
    result.seconds = time.monotonic() - t_start
    result.epsilon, result.epsilon_replace = epsilon_spent(sc)
    return result, counts


def _point(sc: Scenario, rule: str, run_dir: str, engine: str | None):
    """One sweep point, run inside a Ray task."""
    import torch

    torch.set_num_threads(1)
    from .run import run_one

    return run_one(sc, rule, Path(run_dir), engine=engine)


def run_jobs(jobs: list, address: str, *, engine: str | None = None, shards: int = 0, quiet: bool = False) -> list:
    """[(scenario, rule, run_dir)] -> [(RunResult, warnings)] in the same order: as Ray tasks
    (or, with shards > 1, one sharded run after another)."""
    ray = connect(address)
    if shards > 1:
        from .run import run_one

        return [run_one(sc, rule, run_dir, engine="batched" if engine in (None, "auto") else engine, shards=shards)
                for sc, rule, run_dir in jobs]
    task = ray.remote(num_cpus=1)(_point)
    refs = [task.remote(sc, rule, str(run_dir), engine) for sc, rule, run_dir in jobs]
    pending, done = list(refs), 0
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        done += len(ready)
        if not quiet:
            print(f"sweep: {done}/{len(refs)} runs done", flush=True)
    return ray.get(refs)
