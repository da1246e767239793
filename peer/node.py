"""One peer: train, sign, gossip, verify, robustly aggregate, log, checkpoint, repeat.

The asyncio driver of peer.round.RoundLogic. A silent neighbour never holds a round past
its deadline; a restarted peer resumes from its checkpoint and catches up with its
neighbours' round; a flooding neighbour is rate-limited before any verification work.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch

from aggregation import REGISTRY, AggregationError, aggregate, parse_rule
from gossip.envelope import seal_update
from gossip.identity import Identity, load_key
from gossip.transport import Transport
from gossip.trust import TrustList, load_trust_list
from gossip.verify import Accepted, Rejected, Verifier
from topology.mixing import mh_weights

from . import checkpoint as ckpt
from .config import PeerConfig
from .data import LocalData, digits_shard, load_csv, load_npz, split_holdout
from .errors import ConfigError, DataError
from .model import FlatModel, build_model, load_object
from .provenance import ProvenanceLog
from .round import RoundLogic
from .stack import UpdateStack
from .training import Metrics, Trainer

log = logging.getLogger("gossipfl.peer")
VERIFY_IN_THREAD_BYTES = 1 << 20
VERIFY_WORKERS = 2  # SHA-256 releases the GIL: two updates hash at once on a 2-core gateway

# craft(round, recipient PeerId, honest params) -> params to send (attack simulations only)
Craft = Callable[[int, str, torch.Tensor], torch.Tensor]


@dataclass
class RoundRecord:
    round: int
    train: Metrics
    eval: Metrics
    accepted: int
    rejected: Counter
    aggregated: bool
    note: str
    bytes_sent: int
    seconds: float
    train_seconds: float = 0.0
    eval_seconds: float = 0.0  # local evaluation on the held-out split (neither training nor protocol)


@dataclass
class SentRound:
    """What phase 1 of a round (train and send) hands to phase 2 (collect and aggregate)."""

    round: int
    own: torch.Tensor  # the model that was sent, row 0 of the aggregation stack
    own_id: str
    bytes_sent: int
    train: Metrics
    eval: Metrics
    train_seconds: float
    eval_seconds: float


@dataclass
class PeerParts:
    """Everything a peer is made of; `Peer.from_config` builds it from a peer.toml."""

    identity: Identity
    trust: TrustList
    neighbours: list[str]
    transport: Transport
    model: FlatModel
    data: LocalData
    cfg: PeerConfig
    neighbour_degrees: dict[str, int] = field(default_factory=dict)


def load_local_data(cfg: PeerConfig) -> LocalData:
    d = cfg.data
    if d.source == "digits":
        return digits_shard(d.shard, d.shards, d.partition, alpha=d.alpha, labels_per_shard=d.labels_per_shard,
                            seed=d.seed, holdout=d.holdout)
    if d.source == "npz":
        x, y = load_npz(d.path, d.x_key, d.y_key)
    elif d.source == "csv":
        x, y = load_csv(d.path, d.label_column)
    else:
        loader = load_object(d.source, "data.source")
        try:
            x, y = loader(shard=d.shard, shards=d.shards, seed=d.seed, **d.options)
        except DataError:
            raise
        except Exception as exc:  # user code: report, do not crash with a traceback
            raise DataError(f"data.source {d.source} failed: {type(exc).__name__}: {exc}") from None
        x, y = torch.as_tensor(x).float().reshape(len(y), -1).numpy(), torch.as_tensor(y).long().numpy()
    return split_holdout(x, y, d.holdout, d.seed + 1000 + d.shard, cfg.model.classes)


def build_parts(cfg: PeerConfig, transport: Transport | None = None, identity: Identity | None = None) -> PeerParts:
    """Load key, trust list, data and model, checking everything before any round starts."""
    identity = identity or load_key(cfg.key)
    trust = load_trust_list(cfg.trust)
    if trust.network != cfg.network:
        raise ConfigError(f"trust list {cfg.trust} is for network {trust.network!r}, this peer is in {cfg.network!r}")
    neighbours = [n.id for n in cfg.neighbours]
    untrusted = [n for n in neighbours if n not in trust]
    if untrusted:
        raise ConfigError(f"network.neighbours: {untrusted[0]} is not on the trust list {cfg.trust}")
    if identity.peer_id in neighbours:
        raise ConfigError("network.neighbours lists this peer itself")
    data = load_local_data(cfg)
    module = build_model(cfg.model.name, data.features, cfg.model.classes, cfg.model.options, cfg.model.seed)
    try:
        with torch.no_grad():
            out = module(data.x_train[:2])
    except Exception as exc:
        raise ConfigError(f"model {cfg.model.name} does not accept the data ({data.features} features): {exc}") from None
    if out.shape[-1] != cfg.model.classes:
        raise ConfigError(f"model {cfg.model.name} outputs {out.shape[-1]} classes, model.classes = {cfg.model.classes}")
    if transport is None:
        from .transports import make_transport
        transport = make_transport(cfg, identity)
    degrees = {n.id: n.degree for n in cfg.neighbours if n.degree is not None}
    return PeerParts(identity, trust, neighbours, transport, FlatModel(module), data, cfg, degrees)


class Peer:
    def __init__(self, parts: PeerParts, craft: Craft | None = None, label_map: torch.Tensor | None = None,
                 mangle: Callable[[int, str, bytes], list[bytes]] | None = None):
        cfg = parts.cfg
        self.parts, self.cfg = parts, cfg
        self.identity = parts.identity
        self.peer_id = parts.identity.peer_id
        self.neighbours = list(parts.neighbours)
        self.transport = parts.transport
        self.model = parts.model
        self.trainer = Trainer(self.model.module, self.model.flat, parts.data, cfg.train,
                               seed=cfg.data.seed + 7 * cfg.data.shard)
        self.verifier = Verifier(cfg.network, parts.trust.peers, self.model.schema, self.model.size,
                                 neighbours=set(self.neighbours),
                                 max_size=int(cfg.round.max_message_mb * 1024 * 1024),
                                 max_lag=0, max_lead=cfg.round.max_lead)
        self.stack = UpdateStack(self.neighbours, self.model.size)
        self.logic = RoundLogic(frozenset(self.neighbours), 0, cfg.round.inbox_per_neighbour, cfg.round.max_lead,
                                keep=self.stack.settle)  # a counted update's message is let go at once
        self.prov = ProvenanceLog(Path(cfg.data_dir) / "provenance.db", self.identity, cfg.network)
        self.ckpt_path = Path(cfg.data_dir) / "checkpoint.msgpack"
        # attack simulation hooks: craft the values sent, poison labels, rewrite the bytes sent
        self.craft, self.label_map, self.mangle = craft, label_map, mangle
        self.parents: list[str] = []
        self.history: list[RoundRecord] = []
        self.rejections: Counter = Counter()
        self.neighbour_degrees = dict(parts.neighbour_degrees)
        self._pending_events: list[tuple] = []
        self._commit: tuple[asyncio.Future, int, tuple | None] | None = None  # checkpoint on its way to disk
        self._round_result: tuple[torch.Tensor, tuple | None] | None = None  # (model, aggregated event)
        self._round_rejections: Counter = Counter()
        self._last_accepted = 0
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._receiver: asyncio.Task | None = None
        self._verify_pool = ThreadPoolExecutor(max_workers=VERIFY_WORKERS, thread_name_prefix="verify")
        self.started = False
        self.resumed_from: int | None = None

    @classmethod
    def from_config(cls, cfg: PeerConfig, transport: Transport | None = None, **kw) -> Peer:
        return cls(build_parts(cfg, transport), **kw)

    # --- lifecycle -----------------------------------------------------------------

    @property
    def round(self) -> int:
        return self.logic.round

    def resume(self) -> None:
        ck = ckpt.load(self.ckpt_path, self.model.schema, self.model.size)
        if ck is None:
            return
        self.model.set(ck.params)
        self.trainer.load_momentum(ck.momentum)
        self.verifier.restore(ck.replay)
        self.parents = list(ck.parents)
        self.logic.advance(ck.round)
        self.resumed_from = ck.round

    async def go_offline(self) -> None:
        """Simulated outage: stop receiving (messages sent meanwhile are lost)."""
        if self._receiver:
            self._receiver.cancel()
        await self.transport.close()

    async def go_online(self) -> None:
        await self.transport.start()
        self._receiver = asyncio.get_running_loop().create_task(self._receive_loop())

    async def start(self) -> None:
        self.resume()
        await self.transport.start()
        self._receiver = asyncio.get_running_loop().create_task(self._receive_loop())
        addrs = self.transport.addresses()
        self.prov.append("started", self.round, details={
            "neighbours": self.neighbours, "rule": self.cfg.aggregation.rule, "f": self.cfg.aggregation.f,
            "transport": self.cfg.transport.kind, "addresses": addrs, "resumed_from": self.resumed_from,
            "schema": self.model.schema.hex(), "params": self.model.size})
        for a in addrs:
            log.info("listening on %s", a)
        log.info("peer %s started at round %d with %d neighbours (%s, f=%d)", self.peer_id, self.round,
                 len(self.neighbours), self.cfg.aggregation.rule, self.cfg.aggregation.f)
        self.started = True

    def request_stop(self) -> None:
        self._stop.set()
        self._wake.set()

    async def close(self, reason: str = "stopped") -> None:
        if not self.started:
            return
        self.started = False
        await self._checkpoint(wait=True)
        self._pending_events.append(("stopped", self.round, None, None, {"reason": reason}))
        self._flush_events()
        if self._receiver:
            self._receiver.cancel()
            try:
                await self._receiver
            except (asyncio.CancelledError, Exception):
                pass
        await self.transport.close()
        self._verify_pool.shutdown(wait=False)
        self.prov.close()
        log.info("peer %s stopped at round %d (%s)", self.peer_id, self.round, reason)

    async def run(self, rounds: int | None = None) -> list[RoundRecord]:
        """Run rounds until `rounds` are done (config round.rounds; 0 = forever) or a stop request."""
        rounds = self.cfg.round.rounds if rounds is None else rounds
        if not self.started:
            await self.start()
        done = 0
        try:
            while not self._stop.is_set() and (rounds == 0 or done < rounds):
                started = time.monotonic()
                await self.run_round()
                done += 1
                pause = self.cfg.round.interval - (time.monotonic() - started)
                if pause > 0 and (rounds == 0 or done < rounds):
                    try:
                        await asyncio.wait_for(self._stop.wait(), pause)
                    except TimeoutError:
                        pass
        finally:
            await self.close("stop requested" if self._stop.is_set() else "rounds done")
        return self.history

    # --- one round -------------------------------------------------------------------

    async def run_round(self) -> RoundRecord | None:
        """One full round: train and send, then collect and aggregate."""
        if not await self.train_and_send():
            return None
        return await self.collect_and_aggregate()

    async def train_and_send(self) -> bool:
        """Phase 1 (the simulator runs it for every peer before phase 2, in lock-step)."""
        self._t0 = time.monotonic()
        target = self.logic.catch_up_target(self.cfg.aggregation.f)
        if target is not None:
            log.info("neighbours are at round %d, jumping from %d", target, self.round)
            self._start_round(target)
        r = self.round
        t_train = time.monotonic()
        if self.cfg.round.train_in_thread:
            train_metrics = await asyncio.to_thread(self.trainer.train_round, self.label_map)
        else:
            train_metrics = self.trainer.train_round(self.label_map)
        t_train = time.monotonic() - t_train
        await self._checkpoint_durable()  # the last round's, written while this one trained
        if self._stop.is_set():
            return False
        t_eval = time.monotonic()
        eval_metrics = self.trainer.evaluate()
        t_eval = time.monotonic() - t_eval
        own = self.stack.hold_own(self.model.flat.detach())  # what is sent is what is aggregated
        # logged in one transaction with the `sent` events
        self._pending_events.append(("trained", r, None, None, {
            "loss": train_metrics.loss, "accuracy": train_metrics.accuracy, "samples": train_metrics.samples,
            "eval_loss": eval_metrics.loss, "eval_accuracy": eval_metrics.accuracy,
            "eval_samples": eval_metrics.samples}))
        own_id, bytes_sent = await self._broadcast(r, own)
        self._sent = SentRound(r, own, own_id, bytes_sent, train_metrics, eval_metrics, t_train, t_eval)
        return True

    async def collect_and_aggregate(self) -> RoundRecord | None:
        """Phase 2: wait for neighbours (all, quorum or deadline), aggregate, checkpoint."""
        sent = self._sent
        r = sent.round
        await self._collect()
        if self._stop.is_set():
            return None
        aggregated, note = self._aggregate(r, sent.own, sent.own_id)
        rejected = Counter(self._round_rejections)
        self._start_round(r + 1)
        await self._checkpoint()
        rec = RoundRecord(r, sent.train, sent.eval, self._last_accepted, rejected, aggregated, note,
                          sent.bytes_sent, time.monotonic() - self._t0, sent.train_seconds, sent.eval_seconds)
        self.history.append(rec)
        await self.transport.status({"round": r, "eval_accuracy": round(sent.eval.accuracy, 4),
                                     "neighbours_seen": rec.accepted, "neighbours": len(self.neighbours),
                                     "aggregated": aggregated, "ts": time.time()})
        log.info("round %d: train loss %.3f, eval acc %.3f, %d/%d neighbours accepted%s, %.2fs", r,
                 sent.train.loss, sent.eval.accuracy, rec.accepted, len(self.neighbours),
                 f" ({note})" if note else "", rec.seconds)
        return rec

    def _start_round(self, new_round: int) -> None:
        self.logic.advance(new_round)
        self.verifier.forget_before(new_round)
        self._round_rejections = Counter()

    async def _broadcast(self, r: int, own: torch.Tensor) -> tuple[str, int]:
        codec = self.cfg.round.codec
        common = dict(net=self.cfg.network, round=r, schema=self.model.schema, codec=codec,
                      parents=[bytes.fromhex(p) for p in self.parents], deg=len(self.neighbours))
        if own.numel() * 4 >= VERIFY_IN_THREAD_BYTES:  # hashing tens of MB off the event loop
            sealed = await asyncio.to_thread(seal_update, self.identity, own, **common)
        else:
            sealed = seal_update(self.identity, own, **common)
        outgoing, sent_events = [], []
        for nb in self.neighbours:
            msg = sealed
            if self.craft is not None:
                msg = seal_update(self.identity, self.craft(r, nb, own).to(torch.float32), **common)
            datas = [msg.data] if self.mangle is None else self.mangle(r, nb, msg.data)
            outgoing.append((nb, datas))
            sent_events.append(("sent", r, nb, msg.update_id, {
                "parents": self.parents, "bytes": sum(len(d) for d in datas), "codec": codec}))
        # logged before transmission: a crash between the two leaves a `sent` with no receipt,
        # never a receipt with no `sent`
        self._pending_events.extend(sent_events)
        self._flush_events()
        total = 0
        for nb, datas in outgoing:
            for data in datas:
                if not await self.transport.send(nb, data):
                    log.debug("round %d: update to %s not delivered", r, nb)
                total += len(data)
        return sealed.update_id, total

    async def _collect(self) -> None:
        deadline = time.monotonic() + self.cfg.round.deadline
        while not self._stop.is_set() and not self.logic.complete(self.cfg.round.quorum):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), remaining)
            except TimeoutError:
                break

    def _aggregate(self, r: int, own: torch.Tensor, own_id: str) -> tuple[bool, str]:
        agg_cfg = self.cfg.aggregation
        inputs = self.logic.inputs()
        self._last_accepted = len(inputs)
        n = 1 + len(inputs)
        rule = REGISTRY[parse_rule(agg_cfg.rule)[1]]
        params = dict(agg_cfg.params)
        if "own" in rule.params:
            params.setdefault("own", 0)
        weights = self._weights(inputs) if rule.takes_weights else None
        try:  # aggregate() checks the rule's requirement on n and f: too few rows is an error
            out = aggregate(agg_cfg.rule, self.stack.stacked(own, inputs), weights, f=agg_cfg.f, **params)
        except AggregationError as exc:
            note = f"kept own model: {exc}"
            self._pending_events.append(("skipped", r, None, None, {"reason": note, "have": n}))
            self.parents = [own_id]
            self._round_result = (own, None)
            return False, note
        value = out.value.clone() if self.stack.owns(out.value) else out.value  # e.g. Krum's chosen row
        self.model.set(value)
        input_ids = [own_id] + [a.update_id for a in inputs]
        # logged with the model's hash once _checkpoint has computed it off the loop
        self._round_result = (value, ("aggregated", r, None, None, {
            "rule": agg_cfg.rule, "f": agg_cfg.f, "inputs": input_ids,
            "senders": [self.peer_id] + [a.sender for a in inputs],
            "weights": None if weights is None else [round(float(w), 6) for w in weights],
            "report": out.report.to_dict()}))
        self.parents = input_ids
        return True, ""

    def _weights(self, inputs: list[Accepted]) -> torch.Tensor | None:
        if self.cfg.aggregation.weights != "metropolis_hastings":
            return None
        degrees = {n: self.neighbour_degrees.get(n) or 1 for n in self.neighbours}
        for a in inputs:  # the degree a neighbour signed into its update wins over the plan's
            degrees[a.sender] = int(a.envelope.header.get("deg") or degrees.get(a.sender) or 1)
        self_w, nbr = mh_weights(len(self.neighbours), degrees)
        present = {a.sender for a in inputs}
        # neighbours missing this round: their weight stays with the own model
        missing = sum(w for n, w in nbr.items() if n not in present)
        return torch.tensor([self_w + missing] + [nbr[a.sender] for a in inputs], dtype=torch.float32)

    async def _checkpoint(self, wait: bool = False) -> None:
        """Checkpoint the state the next round starts from, on a worker thread while the
        next round trains (`wait`: here and now). The thread hashes the model, writes the
        file and commits it (fsync, rename); the `aggregated` event (which carries that
        hash) and the `checkpoint` event are logged once it is durable, by
        _checkpoint_durable(). It reads the aggregation output (or the own model row),
        which nothing changes before then, never the model that is training."""
        await self._checkpoint_durable()
        if self._round_result is None:  # no round since the last checkpoint: the model is idle
            params, aggregated_event = self.model.flat.detach().clone(), None
        else:
            (params, aggregated_event), self._round_result = self._round_result, None
        momentum = self.trainer.momentum_state()
        ck = ckpt.Checkpoint(self.round, self.model.schema, params, None if momentum is None else momentum.clone(),
                             self.verifier.state(), list(self.parents))

        def hash_and_save() -> str:
            digest = hashlib.sha256(params.numpy()).hexdigest()
            ckpt.save(self.ckpt_path, ck)
            return digest

        self._commit = (asyncio.get_running_loop().run_in_executor(None, hash_and_save), ck.round, aggregated_event)
        if wait:
            await self._checkpoint_durable()

    async def _checkpoint_durable(self) -> None:
        if self._commit is not None:
            (job, next_round, aggregated_event), self._commit = self._commit, None
            params_hash = await job
            if aggregated_event is not None:
                kind, r, cp, _, details = aggregated_event
                self._pending_events.append((kind, r, cp, params_hash, details))
            self._pending_events.append(("checkpoint", next_round, None, None,
                                         {"next_round": next_round, "params_hash": params_hash}))

    # --- receiving ---------------------------------------------------------------------

    async def _receive_loop(self) -> None:
        loop = asyncio.get_running_loop()
        slots = asyncio.Semaphore(VERIFY_WORKERS)  # bounds the messages held while being verified
        async for hint, data in self.transport:
            if not self._admit(hint):
                continue
            if len(data) < VERIFY_IN_THREAD_BYTES:
                self._take(hint, data, self.verifier.verify(data, self.round))
                continue
            # hashing megabytes would stall the event loop: worker threads verify, the loop takes
            await slots.acquire()
            job = loop.run_in_executor(self._verify_pool, self.verifier.verify, data, self.round)
            job.add_done_callback(functools.partial(self._verified, slots, hint, data))

    def _verified(self, slots: asyncio.Semaphore, hint: str | None, data: bytes, job: asyncio.Future) -> None:
        slots.release()
        if not self.started or job.cancelled():
            return
        if job.exception() is not None:  # the verifier returns Rejected for bad input; this is a bug
            log.error("verifying a message from %s failed: %r", hint, job.exception())
            return
        self._take(hint, data, job.result())

    def handle_message(self, hint: str | None, data: bytes) -> None:
        """Admit, verify and take one message synchronously (tests, small messages)."""
        if self._admit(hint):
            self._take(hint, data, self.verifier.verify(data, self.round))

    def _admit(self, hint: str | None) -> bool:
        admitted, first = self.logic.admit(hint)
        if not admitted:
            self.rejections["rate_limited"] += 1
            if first:
                self._pending_events.append(("rate_limited", self.round, hint, None,
                                             {"limit": self.logic.per_neighbour_limit}))
                log.warning("rate-limiting %s: more than %d messages this round", hint,
                            self.logic.per_neighbour_limit)
        return admitted

    def _take(self, hint: str | None, data: bytes, result: Accepted | Rejected) -> None:
        offered = self.logic.offer(result)
        if isinstance(result, Rejected):
            self.rejections[result.reason.value] += 1
            self._round_rejections[result.reason.value] += 1
            env = result.envelope
            self._pending_events.append(("rejected", result.round, result.sender or hint,
                                         env.update_id if env is not None else None,
                                         {"reason": result.reason.value, "detail": result.detail[:300],
                                          "bytes": len(data), "hint": hint}))
            log.debug("rejected from %s: %s (%s)", result.sender or hint, result.reason.value, result.detail)
        elif offered.kind in ("accepted", "buffered"):
            sh = result.envelope.signed_header()
            self._pending_events.append(("received", result.envelope.round, result.sender, result.update_id,
                                         {"header": sh["header"].hex(), "sig": sh["sig"].hex(),
                                          "bytes": len(data)}))
        if len(self._pending_events) >= 64:
            self._flush_events()
        if offered.kind == "accepted":
            self._wake.set()

    def _flush_events(self) -> None:
        if self._pending_events:
            events, self._pending_events = self._pending_events, []
            self.prov.append_many(events)
