"""The protocol engine: real peers (signing, verification, aggregation, provenance) over the
memory transport in one event loop, driven in lock-step rounds so runs are reproducible:
every online honest peer trains and sends, then the attackers craft from what the honest
peers just sent (omniscient), then every peer collects and aggregates.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import networkx as nx
import torch

from aggregation import REGISTRY, parse_rule
from gossip.identity import Identity
from gossip.transport import LinkFaults, MemoryHub
from peer.ops.plan import write_plan
from peer.runtime.driver import Peer
from peer.runtime.local import memory_peer
from peer.runtime.parts import PeerParts
from peer.runtime.process import configure_process
from privacy.dp import seeded_generator

from . import personalize, shift, user
from .attacks import REGISTRY as ATTACK_REGISTRY
from .attacks import AttackTransport, ModelAttacker, ProtocolAttacker, model_attack, poison_labels
from .measures import MIN_OWN_SAMPLES
from .placement import place_byzantine
from .scenario import Scenario


@dataclass
class RoundMetrics:
    round: int
    accuracy: dict  # node -> global test accuracy (honest nodes)
    loss: dict
    consensus: float
    bytes_sent: int
    rejected: Counter
    online: int
    seconds: float
    own: dict = field(default_factory=dict)  # node -> metric on its own held-out data (nodes with enough of it)
    own_small: int = 0  # honest nodes with too few held-out samples to be scored on their own data
    own_fleet: dict = field(default_factory=dict)  # ditto: the fleet model on the node's own held-out data


@dataclass
class RunResult:
    rule: str
    scenario: Scenario
    byzantine: list
    rounds: list[RoundMetrics] = field(default_factory=list)
    peer_dirs: list[Path] = field(default_factory=list)
    seconds: float = 0.0
    engine: str = "protocol"  # "batched": no wire, no provenance logs
    epsilon: float | None = None  # differential privacy: the largest epsilon an honest node spent (None: off)
    epsilon_replace: float | None = None  # the same under replacement (epsilon is add/remove)
    metric: str = "accuracy"  # what RoundMetrics.accuracy holds: the learner's headline figure
    higher_is_better: bool = True


def _identity(seed: int, node) -> Identity:
    return Identity.from_seed(hashlib.sha256(f"gossipfl-sim/{seed}/{node}".encode()).digest())


def data_overrides(sc: Scenario) -> dict:
    if ":" in sc.dataset:  # the user's loader, imported from the scenario's folder (sim.user)
        return {"source": sc.dataset, "options": dict(sc.data_options), "seed": sc.seed, "holdout": sc.holdout}
    if sc.dataset == "digits":
        return {"source": "digits", "partition": sc.partition, "alpha": sc.alpha,
                "labels_per_shard": sc.labels_per_shard, "seed": sc.seed, "holdout": sc.holdout}
    opts = dict(sc.data_options)
    if sc.dataset == "fashion_mnist":
        opts.update({"partition_": sc.partition, "alpha": sc.alpha, "labels_per_shard": sc.labels_per_shard})
    return {"source": f"sim.datasets:{sc.dataset}", "options": opts, "seed": sc.seed, "holdout": sc.holdout}


class ProtocolEngine:
    def __init__(self, sc: Scenario, rule: str, graph: nx.Graph, out: Path,
                 progress: Callable[[int], None] | None = None):
        self.sc, self.rule, self.graph, self.out = sc, rule, graph, Path(out)
        self.progress = progress
        self.rng = random.Random(sc.seed)
        self.byzantine = place_byzantine(graph, sc.byzantine, random.Random(sc.seed + 1), placement=sc.placement,
                                         cap=sc.cap, chosen=sc.byzantine_nodes) if sc.attack != "none" else []
        self.gen = torch.Generator().manual_seed(sc.seed)

    def _faults(self) -> LinkFaults:
        """Loss, exponential per-message latency (mean `latency`), stragglers (the last
        `stragglers` nodes: 10x the latency, or 1.5 deadlines when no latency is set, so
        their updates miss the round) and the partition window."""
        sc = self.sc
        rng = random.Random(sc.seed + 2)
        slow = 10 * sc.latency if sc.latency else 1.5 * sc.deadline

        def latency(sender: str, to: str) -> float:
            if sender in self._straggler_ids:
                return slow * rng.expovariate(1.0) if sc.latency else slow
            return sc.latency * rng.expovariate(1.0) if sc.latency else 0.0

        return LinkFaults(loss=sc.loss, latency=latency if (sc.latency or sc.stragglers) else None,
                          blocked=self._blocked, rng=random.Random(sc.seed + 3))

    def _blocked(self, sender: str, to: str) -> bool:
        pr = self.sc.partition_rounds
        if not pr or not pr[0] <= self.current_round <= pr[1]:
            return False
        return self.side.get(sender) != self.side.get(to)

    def build(self) -> list[Peer]:
        sc = self.sc
        overrides = {
            "model": {"name": sc.model, "options": sc.model_options, "classes": sc.classes, "seed": sc.seed},
            "data": data_overrides(sc),
            "train": {"local_steps": sc.local_steps, "batch_size": sc.batch_size, "lr": sc.lr, "momentum": sc.momentum,
                      "learner": sc.learner, "options": sc.learner_options},
            # f means nothing to a non-robust rule (and secure_mean refuses f > 0)
            # (similarity: f sets the clipping radius whatever the rule)
            "aggregation": {"rule": self.rule, "f": sc.f if REGISTRY[parse_rule(self.rule)[1]].robust or sc.similarity
                            else 0,
                            "weights": sc.weights, "params": sc.rule_params},
            "round": {"deadline": sc.deadline, "train_in_thread": False, "codec": sc.codec,
                      "max_message_mb": sc.max_message_mb, "max_lead": 2},
        }
        if sc.personalization != "shared" or sc.similarity:  # the peers' own [personalization]
            overrides["personalization"] = personalize.table(sc)
        if sc.privacy != "off":
            overrides["privacy"] = {"mode": sc.privacy, "noise_multiplier": sc.noise_multiplier, "clip": sc.clip,
                                    "delta": sc.delta, "epsilon": sc.epsilon, "accountant": sc.accountant}
        user.check(sc)  # the user's modules, imported from the scenario's folder: the peers find them loaded
        idents = {v: _identity(sc.seed, v) for v in self.graph.nodes}
        self.nodes = write_plan(self.graph, self.out / "peers", network_id=f"sim-{sc.name}", transport="memory",
                                overrides=overrides, identities=idents, force=True, draw=False)
        # the digits partition is per plan index; for Byzantine data attacks use label maps
        self.hub = MemoryHub(self._faults(), queue_size=1024)
        self.node_of = {n.peer_id: n.label for n in self.nodes}
        self.label_of = {str(v): v for v in self.graph.nodes}
        self.id_of = {self.label_of[n.label]: n.peer_id for n in self.nodes}
        stragglers = sorted(self.graph.nodes)[-self.sc.stragglers:] if self.sc.stragglers else []
        self._straggler_ids = {self.id_of[v] for v in stragglers}
        halves = sorted(self.graph.nodes)
        self.side = {self.id_of[v]: i < len(halves) // 2 for i, v in enumerate(halves)}
        self.current_round = 0
        peers = []
        for idx, n in enumerate(self.nodes):
            v = self.label_of[n.label]
            peers.append(memory_peer(n.config, self.hub, functools.partial(self._prepare, v, idx, idents[v])))
        self.peers = dict(zip([self.label_of[n.label] for n in self.nodes], peers, strict=True))
        return peers

    def _prepare(self, v, idx: int, ident: Identity, parts: PeerParts) -> None:
        """Before node v's peer is built: reproducible noise (the simulator only), and for an
        attacker its poisoned data or a transport that rewrites what it sends (crafted models,
        protocol attacks). The peer itself has no attack code path."""
        if parts.cfg.privacy.mode != "off":
            parts.noise = seeded_generator(self.sc.seed * 7919 + idx)
        # [data.shift]: keyed by the peer's data shard, the batched engine's node index
        parts.data = shift.apply_local(shift.of(self.sc), self.sc.seed, parts.cfg.data.shard, parts.data)
        if v not in self.byzantine:
            return
        kind = self.sc.attack
        attack = ATTACK_REGISTRY[kind]
        if attack.label_map is not None:
            parts.data = poison_labels(parts.data, attack.label_map(self.sc.classes))
        elif attack.rewrite is not None:
            parts.transport = AttackTransport(parts.transport, ProtocolAttacker(kind, ident, parts.max_message))
        elif attack.rows is not None:
            def craft(r: int, recipient: str, own: torch.Tensor) -> torch.Tensor:
                t = self.label_of[self.node_of[recipient]]
                neigh = [u for u in self.graph.neighbors(t) if u not in self.byzantine]
                honest_models = torch.stack([self.sent[t]] + [self.sent[u] for u in neigh if u in self.sent]) \
                    if t in self.sent else own[None]
                without = honest_models[1:] if len(honest_models) > 1 else honest_models
                b = sum(1 for u in self.graph.neighbors(t) if u in self.byzantine)
                return model_attack(kind, honest_models, self.sent.get(t, own), own, n=self.graph.degree(t) + 1,
                                    b=b, gen=self.gen, params=self.sc.attack_params, honest_without_target=without)
            if parts.secure is not None:  # secure_mean: the crafted model is what gets masked (it hides in the sum)
                parts.secure.input_for = lambda receiver, round_, own: craft(round_, receiver, own)
            else:
                parts.transport = AttackTransport(parts.transport, ModelAttacker(ident, craft))

    async def run(self) -> RunResult:
        sc = self.sc
        configure_process()
        peers = self.build()
        honest = [v for v in sorted(self.graph.nodes) if v not in self.byzantine]
        test_xy = user.test_set(sc)
        self.metric = user.metric(sc)
        result = RunResult(self.rule, sc, self.byzantine, peer_dirs=[n.dir for n in self.nodes],
                           metric=self.metric[0], higher_is_better=self.metric[1])
        down: dict = {}
        churn_rng = random.Random(sc.seed + 4)
        t_start = time.monotonic()
        for p in peers:
            await p.start()
        try:
            for r in range(sc.rounds):
                self.current_round = r
                t0 = time.monotonic()
                # churn: honest peers go down with probability `dropout`, come back with `rejoin`
                if sc.dropout:
                    for v in honest:
                        if v in down:
                            if churn_rng.random() < sc.rejoin:
                                del down[v]
                                await self.peers[v].go_online()
                        elif churn_rng.random() < sc.dropout:
                            down[v] = r
                            await self.peers[v].go_offline()
                online = [v for v in sorted(self.graph.nodes) if v not in down]
                self.sent: dict = {}
                for v in online:
                    if v not in self.byzantine:
                        await self.peers[v].train_and_send()
                        self.sent[v] = self.peers[v].model.get()
                for v in online:
                    if v in self.byzantine:
                        await self.peers[v].train_and_send()
                recs = await asyncio.gather(*(self.peers[v].collect_and_aggregate() for v in online))
                rejected = Counter()
                bytes_sent = 0
                for v, rec in zip(online, recs, strict=True):
                    if rec is None:
                        continue
                    bytes_sent += rec.bytes_sent
                    if v not in self.byzantine:
                        rejected.update(rec.rejected)
                result.rounds.append(self._measure(r, honest, test_xy, bytes_sent, rejected, len(online),
                                                   time.monotonic() - t0))
                if self.progress:
                    self.progress(1)
        finally:
            for v in down:
                await self.peers[v].go_online()
            for p in peers:
                await p.close("simulation done")
        result.seconds = time.monotonic() - t_start
        if sc.privacy != "off":
            result.epsilon = max(self.peers[v].privacy.epsilon() for v in honest)
            result.epsilon_replace = max(self.peers[v].privacy.epsilon_replace() for v in honest)
        return result

    def _measure(self, r, honest, test_xy, bytes_sent, rejected, online, seconds) -> RoundMetrics:
        acc, loss, own, own_fleet = {}, {}, {}, {}
        models = []
        small = 0
        name = self.metric[0]
        for v in honest:
            p = self.peers[v]
            data = getattr(p.learner, "data", None)
            held = 0 if data is None else len(data.y_eval)
            if held >= MIN_OWN_SAMPLES:  # scored on its own held-out data only when there is enough of it
                m = p.learner.evaluate()
                own[v] = m.get(name, float("nan"))
                if p.personal.learner is not None:  # ditto: the personal model is what the gateway uses
                    own_fleet[v] = own[v]
                    m = p.personal.learner.evaluate()
                    own[v] = m.get(name, float("nan"))
                if test_xy is None:
                    acc[v], loss[v] = own[v], m.get("loss", float("nan"))
            else:
                small += 1
            if test_xy is not None:
                m = p.learner.evaluate(*test_xy)
                acc[v], loss[v] = m.get(name, float("nan")), m.get("loss", float("nan"))
            models.append(p.model.flat)
        stack = torch.stack(models)
        consensus = float(((stack - stack.mean(0)) ** 2).sum(1).mean())
        return RoundMetrics(r, acc, loss, consensus, bytes_sent, rejected, online, seconds, own=own, own_small=small,
                            own_fleet=own_fleet)
