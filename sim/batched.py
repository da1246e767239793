"""The batched engine: thousands of nodes as rows of one tensor.

All nodes' parameters live in one (N, d) tensor. A round: every online node takes its local
SGD steps at once (torch.func vmap over nodes of grad of the peer's own model through
`functional_call`), in chunks of nodes; which messages arrive (dropout, loss, latency,
stragglers, partition) is drawn per edge; the honest nodes are grouped by how many rows they
aggregate (own + neighbours that delivered) and each group is one batched `aggregate` call
on a (B, n, d) batch of stacks named by row (aggregation._kernels.Rows: the rules read the
models where they are, never a gathered copy): the same aggregation code a peer runs. Attackers' rows are crafted per
target neighbourhood, vectorized (sim.attacks.model_attack_rows); label flip poisons the
attackers' data. No signing, transport or provenance logs: protocol attacks need the
protocol engine (sim.engine), the reference this engine is tested against.

Every random draw is a hash of (seed, node, round, ...) (sim.streams), so chunk sizes and
sharding (sim.sharded: one `Shard` per Ray actor) never change a result.
"""

from __future__ import annotations

import math
import random
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import networkx as nx
import numpy as np
import torch
from torch.func import functional_call, grad, vmap

from aggregation import AggregationError, aggregate
from aggregation._kernels import Rows, finite_rows
from gossip.envelope import max_message_size
from peer.learning.model import build_model
from peer.runtime.exchange import fits, rule_params

from . import datasets, personalize, shift, streams, user
from .attacks import PROTOCOL_ATTACKS, REGISTRY, model_attack_rows
from .batched_mlp import MLPKernel
from .engine import RoundMetrics, RunResult
from .errors import ScenarioError
from .measures import MIN_OWN_SAMPLES
from .placement import place_byzantine
from .privacy import epsilon_spent, privatize_rows, releases_allowed, update_privacy
from .scenario import Scenario

STACK_BUDGET = 4 << 20  # bytes of one gathered (B, n, d) stack (sim.compression): chunks of targets stay below it
VALUE_BUDGET = 16 << 20  # bytes of the (B, d) values one aggregate call returns: targets per call
CHUNK_NODES = 256  # nodes per call of training and evaluation (their intermediates stay in cache)
EVAL_ALL_NODES = 200  # up to this many nodes, the automatic schedule evaluates every round
EVAL_POINTS = 10  # beyond it, about this many evaluated rounds (and always the last)


def eval_every(sc: Scenario, nodes: int) -> int:
    """Rounds between test-set evaluations: the scenario's `eval_every`, or with 0 (automatic)
    1 for small runs and about EVAL_POINTS evaluations over the run for large ones, where
    evaluating every node on the test set each round would cost more than the round itself."""
    every = int(getattr(sc, "eval_every", 0) or 0)
    if every > 0:
        return every
    return 1 if nodes <= EVAL_ALL_NODES else max(1, sc.rounds // EVAL_POINTS)


def evaluated(r: int, rounds: int, every: int) -> bool:
    """Round r is evaluated: every `every` rounds, and always the last."""
    return (r + 1) % every == 0 or r == rounds - 1


def plan_order(graph: nx.Graph) -> list:
    """Node labels in the order of peer.ops.plan (node i gets data shard i in both engines)."""
    return sorted(graph.nodes, key=lambda v: (str(type(v)), v))


def refuse_protocol_attack(attack: str) -> None:
    if attack in PROTOCOL_ATTACKS:
        raise ScenarioError(f"attack.kind = {attack!r} is a protocol attack (bytes on the wire): the batched engine "
                            "has no wire and does not model it; run it with engine = \"protocol\"")


@dataclass
class Topo:
    """The graph as arrays in plan order, with the Byzantine nodes: what every shard shares."""

    labels: list
    ptr: np.ndarray  # (N + 1,) node i's neighbours are nbr[ptr[i] : ptr[i + 1]], ascending
    nbr: np.ndarray
    degree: np.ndarray
    byz: np.ndarray  # (N,) bool

    @property
    def n(self) -> int:
        return len(self.labels)

    @staticmethod
    def of(graph: nx.Graph, byzantine: list) -> Topo:
        labels = plan_order(graph)
        index = {v: i for i, v in enumerate(labels)}
        rows = [sorted(index[u] for u in graph.neighbors(v)) for v in labels]
        degree = np.array([len(r) for r in rows], dtype=np.int64)
        ptr = np.concatenate([[0], np.cumsum(degree)]).astype(np.int64)
        nbr = np.fromiter((u for r in rows for u in r), dtype=np.int64, count=int(ptr[-1]))
        byz = np.zeros(len(labels), dtype=bool)
        byz[[index[b] for b in byzantine]] = True
        return Topo(labels, ptr, nbr, degree, byz)


def _unflatten(names, shapes):
    sizes = [math.prod(s) for s in shapes]

    def params_of(flat: torch.Tensor) -> dict:
        return {n: p.view(s) for n, p, s in zip(names, torch.split(flat, sizes), shapes, strict=True)}
    return params_of


class Shard:
    """The nodes `own` (global plan indices, ascending) of a batched run, plus copies of the
    rows of their neighbours outside the block (the halo), refreshed by `take_halo` each
    round. One shard holding every node is the single-process engine.

    `workers` threads share the chunks of a round (training, aggregation, evaluation), each
    running torch on one thread: numpy and torch release the GIL, and no chunk's numbers
    depend on which thread ran it or on the others in flight."""

    def __init__(self, sc: Scenario, rule: str, topo: Topo, own: np.ndarray,
                 progress: Callable[[int], None] | None = None, workers: int = 1):
        self.sc, self.rule, self.topo = sc, rule, topo
        self.own = np.asarray(own, dtype=np.int64)
        n_all = topo.n
        inner = np.zeros(n_all, dtype=bool)
        inner[self.own] = True
        neigh = np.unique(np.concatenate([topo.nbr[topo.ptr[i]:topo.ptr[i + 1]] for i in self.own])) \
            if len(self.own) else np.zeros(0, dtype=np.int64)
        self.halo = neigh[~inner[neigh]]
        self.view = np.concatenate([self.own, self.halo])
        self.pos = np.full(n_all, -1, dtype=np.int64)
        self.pos[self.view] = np.arange(len(self.view))
        # boundary: own nodes that some other block needs
        outer_nb = [np.any(~inner[topo.nbr[topo.ptr[i]:topo.ptr[i + 1]]]) for i in self.own]
        self.boundary = self.own[np.array(outer_nb, dtype=bool)] if len(self.own) else self.own
        # in-edges of own nodes, grouped by target (ascending), sources ascending
        counts = topo.degree[self.own]
        self.e_row = np.repeat(np.arange(len(self.own)), counts)
        self.e_dst = self.own[self.e_row]
        self.e_src = np.concatenate([topo.nbr[topo.ptr[i]:topo.ptr[i + 1]] for i in self.own]) \
            if len(self.own) else np.zeros(0, dtype=np.int64)

        self.train_data, self.eval_data = datasets.node_data(
            sc.dataset, sc.data_options, partition_=sc.partition, alpha=sc.alpha,
            labels_per_shard=sc.labels_per_shard, seed=sc.seed, nodes=self.own, total=n_all, progress=progress,
            loader=user.loader(sc) if ":" in sc.dataset else None, classes=sc.classes,
            shift=(shift.of(sc), sc.seed), holdout=sc.holdout)
        if REGISTRY[sc.attack].label_map is not None:
            flip = REGISTRY[sc.attack].label_map(sc.classes)
            for k in np.flatnonzero(topo.byz[self.own]):
                lo, c = self.train_data.offset[k], self.train_data.count[k]
                self.train_data.y[lo:lo + c] = flip[self.train_data.y[lo:lo + c]]
        features = self.train_data.x.shape[1]
        module = build_model(sc.model, features, sc.classes, sc.model_options, seed=sc.seed, base=user.folder(sc))
        self.module = module
        names = [k for k, _ in module.named_parameters()]
        shapes = [tuple(p.shape) for _, p in module.named_parameters()]
        params_of = _unflatten(names, shapes)
        init = torch.cat([p.detach().reshape(-1) for p in module.parameters()])
        self.d = init.numel()
        self.params = init.repeat(len(self.view), 1)  # every node starts from the same seeded model
        self._spare: torch.Tensor | None = None  # where aggregate writes the next round's models
        # the user's learner as pure functions (None: the built-in cross-entropy SGD below)
        self.fn = None if sc.learner == "classification" else user.functional(sc)
        if self.fn is None and sc.learner != "classification":
            raise ScenarioError(f"engine batched: {user.batched_refusal(sc)}")
        self.buf = torch.zeros(len(self.own), self.d) if sc.momentum and self.fn is None else None
        self.opt = self.fn.init_state(len(self.own), self.d) if self.fn is not None else None
        self.dp = update_privacy(sc)
        self.releases = releases_allowed(sc)
        # personalization (sim.personalize): local_head's shared columns, ditto's personal rows
        self.pers = personalize.of(sc)
        self.split = personalize.split_of(self.pers, module)
        self.personal = self.params[:len(self.own)].clone() if self.pers.personal_model else None
        self.personal_buf = torch.zeros_like(self.buf) if self.buf is not None and self.personal is not None else None
        self.personal_opt = self.fn.init_state(len(self.own), self.d) \
            if self.fn is not None and self.personal is not None else None

        fn = self.fn

        def loss(flat, x, y):
            out = functional_call(module, params_of(flat), (x,))
            return fn.batch_loss(out, x, y) if fn is not None else torch.nn.functional.cross_entropy(out, y)

        def logits(flat, x):
            return functional_call(module, params_of(flat), (x,))

        kernel = MLPKernel.of(module) if fn is None else None  # built-in learner, plain MLPs: batched matmuls
        self._grad = kernel.grad if kernel else vmap(grad(loss))
        self._logits_common = kernel.logits if kernel else vmap(logits, in_dims=(0, None))
        self._logits_own = kernel.logits if kernel else vmap(logits)
        # torch.func transforms share state across threads: a vmapped model runs on one worker thread
        self.workers = max(1, workers) if kernel else 1
        self._pool: ThreadPoolExecutor | None = None
        self.test = user.test_set(sc)
        self.down = np.zeros(n_all, dtype=bool)
        self.honest_own = np.flatnonzero(~topo.byz[self.own])
        side = np.arange(n_all) < n_all // 2
        self.cross = side[self.e_src] != side[self.e_dst]
        self.slow = self.e_src >= n_all - sc.stragglers if sc.stragglers else np.zeros(len(self.e_src), dtype=bool)

    # --- a round ------------------------------------------------------------------------

    def churn(self, r: int) -> None:
        """Honest nodes go down with probability `dropout` and come back with `rejoin` (every
        shard runs the chain for every node: cheap, and the same in each)."""
        sc = self.sc
        if not sc.dropout:
            return
        u = streams.uniform(sc.seed, streams.CHURN, r, np.arange(self.topo.n))
        honest = ~self.topo.byz
        self.down = np.where(self.down, u >= sc.rejoin, u < sc.dropout) & honest

    def train(self, r: int) -> None:
        """Local SGD for every online own node, chunk by chunk."""
        if r >= self.releases:  # the privacy budget is spent: nobody trains (or sends) any more
            return
        active = np.flatnonzero(~self.down[self.own])

        def run(local: np.ndarray) -> None:
            at = torch.from_numpy(local)
            if self.personal is not None:  # ditto: pulled towards the fleet model this round starts from
                self.personal.index_copy_(0, at, self.personal_training(r, local, self.params.index_select(0, at)))
            self.params.index_copy_(0, at, self.local_training(r, local))

        self._each(run, self._chunks(active))

    def _chunks(self, nodes: np.ndarray) -> list[np.ndarray]:
        """`nodes` in chunks of at most CHUNK_NODES, at least one per worker."""
        size = min(CHUNK_NODES, max(1, -(-len(nodes) // self.workers)))
        return [nodes[lo:lo + size] for lo in range(0, len(nodes), size)]

    def local_training(self, r: int, local: np.ndarray) -> torch.Tensor:
        """The new models (c, d) of own nodes `local` after this round's local SGD steps from
        their current ones: the one place a node's model is formed from its own data (a
        privacy step on the update, new - old, belongs here). Advances their momentum."""
        start = self.params.index_select(0, torch.from_numpy(local))
        p = self._steps(r, local, start, self.buf, self.opt, streams.BATCH)
        if self.dp is not None:  # update-mode differential privacy: what a node keeps and sends is noised
            p = privatize_rows(self.sc, start, p, self.own[local], r)
        return p

    def personal_training(self, r: int, local: np.ndarray, fleet: torch.Tensor) -> torch.Tensor:
        """Ditto: the personal models (c, d) of own nodes `local` after the learner's steps on
        their own batches and the proximal pull towards `fleet` (peer.learning.personal)."""
        from peer.learning.personal import ditto_pull, ditto_strength

        at = torch.from_numpy(local)
        assert self.personal is not None
        p = self._steps(r, local, self.personal.index_select(0, at), self.personal_buf, self.personal_opt,
                        streams.PERSONAL)
        return ditto_pull(p.clone(), fleet, ditto_strength(self.sc.lr, self.pers.lam, self.sc.local_steps))

    def _steps(self, r: int, local: np.ndarray, p: torch.Tensor, buf_all: torch.Tensor | None,
               opt_all: dict | None, stream: int) -> torch.Tensor:
        """local_steps optimizer steps from rows p (c, d) on batches drawn from `stream`;
        advances the rows' momentum or optimizer state in buf_all / opt_all."""
        sc, data = self.sc, self.train_data
        glob = self.own[local]
        at = torch.from_numpy(local)
        batch = np.arange(sc.batch_size)[None, :]
        buf = buf_all.index_select(0, at) if buf_all is not None else None
        opt = {k: v.index_select(0, at) for k, v in opt_all.items()} if opt_all is not None else None
        with torch.no_grad():
            for s in range(sc.local_steps):
                pick = streams.below(sc.seed, stream, data.count[local][:, None], glob[:, None], r, s, batch)
                idx = torch.from_numpy(data.offset[local][:, None] + pick)
                x = data.x.index_select(0, idx.view(-1)).view(*idx.shape, *data.x.shape[1:])
                g = self._grad(p, x, data.y.index_select(0, idx.view(-1)).view(idx.shape))
                if opt is not None:  # the user's functional optimizer (the same step its peers take)
                    p = self.fn.step(p, g, opt, sc)
                    continue
                if buf is not None:
                    buf = buf.mul_(sc.momentum).add_(g)
                    g = buf
                p = torch.add(p, g, alpha=-sc.lr)
        if buf_all is not None and buf is not None:
            buf_all.index_copy_(0, at, buf)
        if opt_all is not None and opt is not None:
            for k, v in opt.items():
                opt_all[k].index_copy_(0, at, v)
        return p

    def export(self) -> tuple[np.ndarray, torch.Tensor]:
        """The trained rows other blocks need (their halo), for the exchange."""
        return self.boundary, self.params[self.pos[self.boundary]]

    def take_halo(self, ids: np.ndarray, rows: torch.Tensor) -> None:
        """Another block's exported rows: keep the ones in this block's halo."""
        p = self.pos[ids]
        keep = p >= len(self.own)
        if keep.any():
            self.params[torch.from_numpy(p[keep])] = rows[torch.from_numpy(np.flatnonzero(keep))]

    def _delivered(self, r: int) -> np.ndarray:
        """Which in-edges of own nodes deliver this round (both ends online, not lost, not cut
        by the partition, not later than the deadline)."""
        sc = self.sc
        ok = ~self.down[self.e_src] & ~self.down[self.e_dst]
        if sc.loss:
            ok &= streams.uniform(sc.seed, streams.LOSS, r, self.e_src, self.e_dst) >= sc.loss
        pr = sc.partition_rounds
        if pr and pr[0] <= r <= pr[1]:
            ok &= ~self.cross
        if sc.latency:
            wait = -np.log1p(-streams.uniform(sc.seed, streams.LATENCY, r, self.e_src, self.e_dst))
            ok &= np.where(self.slow, 10 * sc.latency, sc.latency) * wait <= sc.deadline
        elif sc.stragglers:
            ok &= ~self.slow
        return ok

    def aggregate(self, r: int) -> int:
        """Every online own node aggregates what it received; returns messages delivered."""
        sc = self.sc
        if r >= self.releases:  # nobody sends once the privacy budget is spent
            return 0
        n_own = len(self.own)
        online = ~self.down[self.own]
        ok = self._delivered(r)
        src = self.e_src[ok]
        got = np.bincount(self.e_row[ok], minlength=n_own)
        start = np.concatenate([[0], np.cumsum(got)[:-1]])
        # the new models go to a second buffer, swapped in at the end (a fresh one every round
        # costs page faults); rows not aggregated keep their models
        new = self._spare if self._spare is not None else torch.empty_like(self.params)
        new.copy_(self.params)
        finite = finite_rows(self.params)  # per model, once: the rules' input check
        tasks = []  # (rows aggregated, targets): one batched aggregate call each
        for k in np.unique(got[online] + 1) if online.any() else []:
            if not fits(self.rule, int(k), sc.f):  # as a peer: the rule and f decide when a round has enough rows
                continue  # kept own model, as a peer skips
            targets = np.flatnonzero(online & (got + 1 == k))
            chunk = max(1, min(-(-len(targets) // self.workers), VALUE_BUDGET // (self.d * 4)))
            tasks += [(int(k), targets[lo:lo + chunk]) for lo in range(0, len(targets), chunk)]

        def run(task) -> None:
            k, t = task
            rows = np.empty((len(t), k), dtype=np.int64)
            rows[:, 0] = t
            if k > 1:
                rows[:, 1:] = self.pos[src[start[t][:, None] + np.arange(k - 1)[None, :]]]
            value = self._aggregate_rows(r, t, rows, finite)
            if value is not None:
                new.index_copy_(0, torch.from_numpy(t), value)

        self._each(run, tasks)
        self.params, self._spare = new, self.params
        return int(ok.sum())

    def _aggregate_rows(self, r: int, t: np.ndarray, rows: np.ndarray, finite: np.ndarray) -> torch.Tensor | None:
        """What targets t aggregate from rows (B, k) of params (own first; `finite` per row of
        params): the rule's (B, d) values, or None where the rule refuses the inputs (the
        targets keep their own models)."""
        sc = self.sc
        stack = Rows(self.params, rows, finite[rows])
        if REGISTRY[sc.attack].rows is not None:
            self._craft(r, stack, t, rows)
        weights = self._mh(t, rows) if sc.weights == "metropolis_hastings" else None
        # local_head (only the shared columns) and similarity mixing take the gathered stack
        dense = stack.materialize() if self.split is not None or self.pers.similarity else None
        sent: torch.Tensor | Rows = stack if dense is None else dense
        if self.split is not None:
            sent = self.split.shared(dense)
        if self.pers.similarity:
            value = personalize.mix(sent, weights, sc.f)
        else:
            try:
                value = aggregate(self.rule, sent, weights, f=sc.f, **rule_params(self.rule, sc.rule_params)).value
            except AggregationError:
                return None
        return value if self.split is None else self.split.merge(value, self.split.personal(dense[:, 0]))

    def _each(self, fn: Callable, items: list) -> None:
        """fn(item) for every item, over the shard's worker threads (each chunk's result is its
        own: the order and the thread never change a number)."""
        if self.workers <= 1 or len(items) <= 1:
            for item in items:
                fn(item)
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="batched")
        for _ in self._pool.map(fn, items):
            pass

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def _mh(self, t: np.ndarray, rows: np.ndarray) -> torch.Tensor:
        """Metropolis-Hastings weights of the rows that arrived; a missing neighbour's weight
        stays with the own model (peer.runtime.round does the same)."""
        deg = self.topo.degree
        nb = deg[self.view[rows[:, 1:]]]
        w = 1.0 / (1.0 + np.maximum(deg[self.own[t]][:, None], nb))
        return torch.from_numpy(np.concatenate([1.0 - w.sum(1, keepdims=True), w], 1).astype(np.float32))

    def _craft(self, r: int, stack: Rows, t: np.ndarray, rows: np.ndarray) -> None:
        """Point the Byzantine rows that honest targets received at what an omniscient
        attacker sends each target (from the target's honest neighbourhood)."""
        sc, topo = self.sc, self.topo
        glob_rows = self.view[rows]
        is_bad = topo.byz[glob_rows]
        is_bad[:, 0] = False
        is_bad &= ~topo.byz[self.own[t]][:, None]
        which = np.flatnonzero(is_bad.any(1))
        if len(which) == 0:
            return
        tg = self.own[t[which]]  # global ids of targets under attack
        deg = topo.degree[tg]
        width = int(deg.max()) + 1
        hood = np.full((len(tg), width), -1, dtype=np.int64)
        hood[:, 0] = tg
        bad_count = np.zeros(len(tg), dtype=np.int64)
        for j, v in enumerate(tg):  # honest online neighbours (the attacker sees all they sent)
            nb = topo.nbr[topo.ptr[v]:topo.ptr[v + 1]]
            bad_count[j] = int(topo.byz[nb].sum())
            nb = nb[~topo.byz[nb] & ~self.down[nb]]
            hood[j, 1:1 + len(nb)] = nb
        mask = torch.from_numpy(hood >= 0)
        h = self.params[torch.from_numpy(self.pos[np.maximum(hood, 0)])] * mask[..., None]
        cnt = mask.sum(1, keepdim=True).to(h.dtype)
        mean = h.sum(1) / cnt
        var = (((h - mean[:, None]) * mask[..., None]) ** 2).sum(1) / cnt
        others = torch.where(cnt > 1, (h.sum(1) - h[:, 0]) / (cnt - 1).clamp(min=1), mean)
        bi, bj = np.nonzero(is_bad[which])
        rows_t = which[bi]
        d = self.d

        def noise() -> torch.Tensor:
            return streams.normal(sc.seed, streams.NOISE, r, tg[bi][:, None], glob_rows[rows_t, bj][:, None],
                                  np.arange(d)[None, :])

        crafted = model_attack_rows(
            sc.attack, mean=mean[bi], std=var[bi].sqrt(), target=self.params[torch.from_numpy(rows[rows_t, 0])],
            own=self.params[torch.from_numpy(rows[rows_t, bj])],
            mean_without_target=others[bi], n=torch.from_numpy(deg[bi] + 1), b=torch.from_numpy(bad_count[bi]),
            noise=noise, params=sc.attack_params)
        stack.replace(rows_t, bj, crafted)

    def measure(self, evaluate: bool = True) -> dict:
        """Sums of the honest own models for the consensus distance, and, when `evaluate`, each
        honest own node's metric and loss on the shared test set (or, without one, on its own
        held-out samples), and on its own held-out samples where it has MIN_OWN_SAMPLES or more
        (`own`; `own_small` counts the nodes with fewer, which are not scored on their own data)."""
        idx = self.honest_own
        none = self.own[idx[:0]]
        if not evaluate:  # nothing measured: no consensus either (sim.batched.consensus gives NaN)
            return {"count": 0, "mean": None, "m2": 0.0, "nodes": none, "accuracy": np.zeros(0),
                    "loss": np.zeros(0), "own_nodes": none, "own": np.zeros(0), "own_small": 0, "own_fleet": np.zeros(0)}
        sums = {"nodes": self.own[idx], **self._spread(idx)}
        big = self.eval_data.count[idx] >= MIN_OWN_SAMPLES
        # the model the node uses on its own data: ditto's personal one, else its (fleet) model
        own_acc, own_loss = self._evaluate(idx[big], shared=False, rows=self.personal)
        fleet = self._evaluate(idx[big], shared=False)[0] if self.personal is not None else np.zeros(0)
        if self.test is not None:
            acc, loss = self._evaluate(idx, shared=True)
            nodes = idx
        else:
            acc, loss, nodes = own_acc, own_loss, idx[big]
        return {**sums, "nodes": self.own[nodes], "accuracy": acc, "loss": loss, "own_nodes": self.own[idx[big]],
                "own": own_acc, "own_small": int((~big).sum()), "own_fleet": fleet}

    def _spread(self, idx: np.ndarray) -> dict:
        """count, mean (d,) and m2 (sum of squared distances to the mean) of the models of own
        nodes idx: in float32 a chunk at a time, chunks combined as parallel variances (Chan et
        al.), so no float64 copy of every model and no cancellation of |x|^2 - |mean|^2."""
        count, mean, m2 = 0, torch.zeros(self.d, dtype=torch.float64), 0.0
        for lo in range(0, len(idx), CHUNK_NODES):
            hp = self.params.index_select(0, torch.from_numpy(idx[lo:lo + CHUNK_NODES]))
            c = hp.shape[0]
            mu = hp.mean(0)
            dev = hp - mu
            chunk_m2 = float(torch.dot(dev.view(-1), dev.view(-1)))
            delta = mu.double() - mean
            total = count + c
            m2 += chunk_m2 + float(delta.dot(delta)) * count * c / total
            mean += delta * (c / total)
            count = total
        return {"count": count, "mean": mean, "m2": m2}

    def _evaluate(self, idx: np.ndarray, shared: bool, rows: torch.Tensor | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(metric, loss) of own nodes `idx` on the shared test set or on their own held-out
        samples, with their models in `rows` (own nodes' rows; None: self.params)."""
        source = self.params if rows is None else rows
        acc = np.zeros(len(idx))
        loss = np.zeros(len(idx))

        def run(at: np.ndarray) -> None:
            local = idx[at]
            with torch.no_grad():
                p = source.index_select(0, torch.from_numpy(local))
                if shared:
                    x, y = self.test
                    out = self._logits_common(p, x)  # (c, T, C)
                    yy = y.expand(len(local), *y.shape)
                    xx = x.expand(len(local), *x.shape)
                    mask = None
                else:
                    out, xx, yy, mask = self._own_eval(p, local)
                if self.fn is not None:  # the user's scores per sample
                    scores = vmap(self.fn.per_sample)(out, xx, yy)
                    hit, ce = scores[self.fn.metric].to(out.dtype), scores["loss"].to(out.dtype)
                    self._masked_means(at, hit, ce, mask, acc, loss)
                    return
                # cross-entropy per sample: logsumexp - the true class's logit
                ce = torch.logsumexp(out, dim=2) - out.gather(2, yy.unsqueeze(2)).squeeze(2)
                hit = (out.argmax(dim=2) == yy).to(ce.dtype)
                self._masked_means(at, hit, ce, mask, acc, loss)

        if len(idx):
            self._each(run, self._chunks(np.arange(len(idx))))
        return acc, loss

    @staticmethod
    def _masked_means(at, hit: torch.Tensor, ce: torch.Tensor, mask, acc: np.ndarray, loss: np.ndarray) -> None:
        """acc[at], loss[at]: the means over each node's samples (c, T), only where `mask` is set."""
        if mask is None:
            acc[at] = hit.mean(1).numpy()
            loss[at] = ce.mean(1).numpy()
        else:
            m = mask.to(ce.dtype)
            count = m.sum(1)
            acc[at] = ((hit * m).sum(1) / count).numpy()
            loss[at] = ((ce * m).sum(1) / count).numpy()

    def _own_eval(self, p: torch.Tensor, local: np.ndarray):
        """Each node's own held-out samples, padded to the chunk's largest (with a mask):
        (outputs, inputs, labels, mask)."""
        ev = self.eval_data
        count = ev.count[local]
        width = max(int(count.max()), 1)
        j = np.arange(width)[None, :]
        mask = j < count[:, None]
        idx = torch.from_numpy(ev.offset[local][:, None] + np.where(mask, j, 0))
        x = ev.x[idx]
        return self._logits_own(p, x), x, ev.y[idx], torch.from_numpy(mask)


def consensus(parts: list[dict]) -> float:
    """Mean squared distance of the honest models to their average, from per-shard (count,
    mean, m2) combined as parallel variances; NaN on a round that was not measured."""
    parts = [p for p in parts if p["count"]]
    if not parts:
        return float("nan")
    count = sum(p["count"] for p in parts)
    mean = sum(p["mean"] * p["count"] for p in parts) / count
    m2 = sum(p["m2"] + p["count"] * float((p["mean"] - mean).dot(p["mean"] - mean)) for p in parts)
    return max(m2 / count, 0.0)


def round_metrics(r: int, parts: list[dict], labels: list, delivered: int, sent: int, message_bytes: int,
                  online: int, seconds: float) -> RoundMetrics:
    nodes = np.concatenate([p["nodes"] for p in parts])
    order = np.argsort(nodes, kind="stable")
    names = [labels[v] for v in nodes[order].tolist()]
    acc = dict(zip(names, np.concatenate([p["accuracy"] for p in parts])[order].tolist(), strict=True))
    loss = dict(zip(names, np.concatenate([p["loss"] for p in parts])[order].tolist(), strict=True))
    own_nodes = np.concatenate([p["own_nodes"] for p in parts])
    order = np.argsort(own_nodes, kind="stable")
    own_names = [labels[v] for v in own_nodes[order].tolist()]
    own = dict(zip(own_names, np.concatenate([p["own"] for p in parts])[order].tolist(), strict=True))
    fleet_values = np.concatenate([p.get("own_fleet", np.zeros(0)) for p in parts])
    own_fleet = dict(zip(own_names, fleet_values[order].tolist(), strict=True)) if len(fleet_values) else {}
    return RoundMetrics(r, acc, loss, consensus(parts), sent * message_bytes, Counter(), online, seconds,
                        own=own, own_small=sum(p["own_small"] for p in parts), own_fleet=own_fleet)


def messages_sent(topo: Topo, down: np.ndarray, sending: bool = True) -> int:
    """Every online node sends its update to every neighbour, delivered or not (none once the
    privacy budget is spent: `sending` False)."""
    return int(topo.degree[~down].sum()) if sending else 0


def setup(sc: Scenario, graph: nx.Graph) -> Topo:
    refuse_protocol_attack(sc.attack)
    byz = place_byzantine(graph, sc.byzantine, random.Random(sc.seed + 1), placement=sc.placement, cap=sc.cap,
                          chosen=sc.byzantine_nodes) if sc.attack != "none" else []
    return Topo.of(graph, byz)


class BatchedEngine:
    """One process, one shard holding every node. Same RunResult as the protocol engine."""

    def __init__(self, sc: Scenario, rule: str, graph: nx.Graph, out: Path,
                 progress: Callable[[int], None] | None = None, setup_progress: Callable[[int], None] | None = None,
                 alone: bool = False):
        self.sc, self.rule, self.out = sc, rule, Path(out)  # the graph is not kept: its arrays are (Topo)
        self.alone = alone  # every node trains alone: nothing is sent or aggregated (sim.measures' baseline)
        self.progress, self.setup_progress = progress, setup_progress
        self.topo = setup(sc, graph)
        self.byzantine = [self.topo.labels[i] for i in np.flatnonzero(self.topo.byz)]

    def run(self) -> RunResult:
        sc, topo = self.sc, self.topo
        t_start = time.monotonic()
        workers = torch.get_num_threads()  # as many worker threads as torch was given, one torch thread each
        kind = Shard
        if sc.compression:  # compressed gossip: public copies, sim.compression
            from .compression import CompressedShard as kind
        shard = kind(sc, self.rule, topo, np.arange(topo.n), progress=self.setup_progress, workers=workers)
        self.shard = shard
        torch.set_num_threads(1)
        try:
            return self._rounds(shard, t_start)
        finally:
            shard.close()
            torch.set_num_threads(workers)

    def _rounds(self, shard: Shard, t_start: float) -> RunResult:
        sc, topo = self.sc, self.topo
        size = max_message_size(sc.codec, shard.split.shared_size if shard.split is not None else shard.d)
        metric = user.metric(sc)
        result = RunResult(self.rule, sc, self.byzantine, engine="batched", metric=metric[0],
                           higher_is_better=metric[1])
        every = eval_every(sc, topo.n)
        for r in range(sc.rounds):
            t0 = time.monotonic()
            shard.churn(r)
            shard.train(r)
            delivered = 0 if self.alone else shard.aggregate(r)
            m = shard.measure(evaluated(r, sc.rounds, every))
            sent, per = messages_sent(topo, shard.down, r < shard.releases), size
            if sc.compression:  # every message at its real size (sim.compression)
                sent, per = 1, shard.bytes_sent()
            result.rounds.append(round_metrics(r, [m], topo.labels, delivered, sent, per,
                                               int((~shard.down).sum()), time.monotonic() - t0))
            if self.progress:
                self.progress(1)
        result.seconds = time.monotonic() - t_start
        result.epsilon, result.epsilon_replace = epsilon_spent(sc)
        return result
