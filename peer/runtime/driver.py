"""One peer: the asyncio driver of peer.runtime.round.RoundState.

The state machine decides (catch-up, rate limits, quorum and deadline, aggregate or skip,
what to log); this class only does the I/O it asks for: training, sealing and sending,
verifying payloads (large ones on worker threads), aggregating, writing the provenance log
and committing checkpoints.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from aggregation import AggregationError, aggregate
from gossip.transport import Transport
from gossip.verify import Verifier
from privacy.secure import MaskError

from ..config.parse import PeerConfig
from ..errors import PeerError
from ..learning.learner import Metrics, make_learner
from ..state.checkpoint import ModelInfo
from ..state.lock import DataDirLock
from ..state.provenance import EventKind, NewEvent, ProvenanceLog
from .checkpoints import Checkpoints
from .inbox import Inbox, off_loop_if_large
from .membership import Membership
from .metrics import PeerMetrics, metric_dict
from .outbox import Outbox
from .parts import PeerParts, build_parts, config_folder
from .privacy_ledger import PeerPrivacy
from .round import (
    Aggregate,
    Checkpoint,
    Command,
    JumpTo,
    Log,
    Phase,
    RequestReveals,
    RoundConfig,
    RoundState,
    Send,
    Skip,
    Unmask,
    rule_params,
)
from .secure_round import sum_hash
from .stack import UpdateStack

log = logging.getLogger("gossipfl.peer")


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


class Peer:
    def __init__(self, parts: PeerParts):
        cfg = self.cfg = parts.cfg
        self.parts, self.identity, self.peer_id = parts, parts.identity, parts.identity.peer_id
        self.neighbours, self.transport, self.model = list(parts.neighbours), parts.transport, parts.model
        self.learner = make_learner(self.model.module, self.model.flat, parts.data, cfg.train,
                                    seed=cfg.data.seed + 7 * cfg.data.shard, base=config_folder(cfg))
        self.secure = parts.secure  # secure_mean: masking, reveals, unmasking (None for other rules)
        self.privacy = PeerPrivacy(cfg.privacy, self.learner)  # after the learner: record mode switches it
        self.model_info = ModelInfo.of(self.model, parts.data.features)  # checkpoints carry it, for export
        self.membership = Membership(self.peer_id, cfg.network, getattr(parts.trust, "admin", None),
                                     set(parts.trust.peers), {n.id: n.addr for n in cfg.neighbours},
                                     Path(cfg.data_dir) / "membership.msgpack")
        self.verifier = Verifier(cfg.network, self.membership.trusted, self.model.schema, self.model.size,
                                 neighbours=set(self.neighbours), max_size=parts.max_message,
                                 max_lag=0, max_lead=cfg.round.max_lead, revoked=self.membership.revoked,
                                 masked_words=self.secure and self.secure.words(len(self.neighbours)))
        self.stack = UpdateStack(self.neighbours, self.model.size, masked=self.secure is not None)
        agg = cfg.aggregation
        self.state = RoundState(RoundConfig(
            frozenset(self.neighbours), agg.rule, agg.f, cfg.round.deadline, cfg.round.quorum,
            cfg.round.inbox_per_neighbour, cfg.round.max_lead, 0, agg.weights == "metropolis_hastings",
            dict(parts.neighbour_degrees), self.peer_id,
            min_senders=self.secure.min_senders if self.secure else 2), keep=self.stack.settle)
        self.lock = DataDirLock(cfg.data_dir)
        self.lock.acquire()  # before the log and the checkpoint are touched
        try:
            self.prov = ProvenanceLog(Path(cfg.data_dir) / "provenance.db", self.identity, cfg.network)
            self.membership.load()  # the admin's records since the trust list, verified again
        except BaseException:
            self.lock.release()
            raise
        self.checkpoints = Checkpoints(self)
        self.history: list[RoundRecord] = []
        self._events: list[NewEvent] = []
        self._wake, self._stop = asyncio.Event(), asyncio.Event()
        self.inbox, self.outbox = Inbox(self), Outbox(self)
        names = {**parts.trust.names, **{n.id: n.name for n in cfg.neighbours if n.name}}
        self.metrics = PeerMetrics(cfg.name or self.peer_id[-8:], self.peer_id, neighbours=len(self.neighbours),
                                   names=names, share_learning_metrics=cfg.metrics.share_learning_metrics)
        self.failure: BaseException | None = None
        self.started = False
        self.resumed_from: int | None = None

    @classmethod
    def from_config(cls, cfg: PeerConfig, transport: Transport | None = None) -> Peer:
        return cls(build_parts(cfg, transport))

    @property
    def round(self) -> int:
        return self.state.round

    @property
    def rejections(self) -> Counter:
        """Messages rejected since start, by reason (rate limiting included)."""
        return self.state.total_rejected

    # --- lifecycle -----------------------------------------------------------------

    def resume(self) -> None:
        self.resumed_from = self.checkpoints.resume()
        self.privacy.restore(self.prov)  # the budget spent so far, from the log (it has every release)
        if self.secure is not None:  # never reveal twice for one (receiver, round), restarts included
            self.secure.restore(self.prov.events(EventKind.REVEALED))

    async def go_offline(self) -> None:
        """Simulated outage: stop receiving (messages sent meanwhile are lost)."""
        await self.inbox.stop()
        await self.transport.close()

    async def go_online(self) -> None:
        await self.inbox.start()

    async def start(self) -> None:
        self.metrics.start(self.cfg.metrics.listen)
        self.resume()
        await self.go_online()
        addrs = self.transport.addresses()
        self._events.append(NewEvent(EventKind.STARTED, self.round, details={
            "neighbours": self.neighbours, "rule": self.cfg.aggregation.rule, "f": self.cfg.aggregation.f,
            "transport": self.cfg.transport.kind, "addresses": addrs, "resumed_from": self.resumed_from,
            "schema": self.model.schema.hex(), "params": self.model.size}))
        if self.resumed_from is None:  # a first checkpoint: a diverging first round has a model to return to
            self.checkpoints.begin(self.round)
            await self.checkpoints.durable()
        self._flush()
        for a in addrs:
            log.info("listening on %s", a)
        log.info("peer %s started at round %d with %d neighbours (%s, f=%d)", self.cfg.name or self.peer_id,
                 self.round, len(self.neighbours), self.cfg.aggregation.rule, self.cfg.aggregation.f)
        self.started = True

    def request_stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def failed(self, what: str, exc: BaseException) -> None:
        """A background task died: say why and stop the peer (never a silent half-alive peer)."""
        if self.started and self.failure is None:
            self.failure = exc
            log.error("%s failed, stopping the peer: %r", what, exc)
            self.request_stop()

    async def close(self, reason: str = "stopped") -> None:
        if not self.started:
            return
        self.started = False
        await self.checkpoints.now()
        await self.outbox.drain(min(5.0, self.cfg.round.deadline))
        self._events.append(NewEvent(EventKind.STOPPED, self.round, details={"reason": reason}))
        self._flush()
        await self.inbox.stop()
        await self.transport.close()
        self.inbox.close()
        self.prov.close()
        self.lock.release()
        self.metrics.stop()
        log.info("peer %s stopped at round %d (%s)", self.cfg.name or self.peer_id, self.round, reason)

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
        if self.failure is not None:
            raise PeerError(f"the peer stopped: {type(self.failure).__name__}: {self.failure}")
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
        await self.inbox.apply_neighbours()
        await self._execute(self.state.start())
        budget = self.privacy.begin_round(self.round)
        if budget is not None and budget.details:  # the budget ran out: said once, in the log too
            self._events.append(self.privacy.event(self.round, budget.details))
        transmit = budget is None or budget.send
        start = self.model.flat.detach().clone() if transmit and self.privacy.mode == "update" else None
        t = time.monotonic()
        if not transmit:  # no more releases: the own data is left alone, the model is only aggregated
            train = Metrics()
        elif self.cfg.round.train_in_thread:
            train = await asyncio.to_thread(self.learner.train, self.round)
        else:
            train = self.learner.train(self.round)
        self._train_s = time.monotonic() - t
        await self.checkpoints.durable()  # the last round's checkpoint, written while this one trained
        if self._stop.is_set():
            return False
        self.checkpoints.check_finite()  # a diverged model is replaced by the checkpoint's before noising
        if transmit and self.privacy.on:  # noised (update mode) and accounted before anything is sent
            self._events.append(self.privacy.event(self.round, self.privacy.spend(
                self.privacy.privatize(start, self.model.flat))))
        t = time.monotonic()
        self._eval = self.learner.evaluate()
        self._eval_s, self._train = time.monotonic() - t, train
        self._own = self.stack.hold_own(self.model.flat.detach())  # what is sent is what is aggregated
        self.outbox.bytes_sent = 0
        await self._execute(self.state.trained(time.monotonic(), {
            **train, **{f"eval_{k}": v for k, v in self._eval.items()}}, transmit=transmit))
        return True

    async def collect_and_aggregate(self) -> RoundRecord | None:
        """Phase 2: wait for neighbours (all, quorum or deadline), aggregate or skip, checkpoint."""
        r = self.round
        if not await self._wait_until(self.state.ready):
            return None
        accepted, rejected = len(self.state.collected), Counter(self.state.rejected)
        heard = list(self.state.collected)
        self._note, self._aggregated = "", False
        await self._execute(self.state.close(time.monotonic()))
        if self.state.phase is Phase.REVEALING:  # secure_mean with drop-outs: the members reveal
            if not await self._wait_until(self.state.reveals_ready):
                return None
            await self._execute(self.state.reveals_done())
        rec = RoundRecord(r, self._train, self._eval, accepted, rejected, self._aggregated, self._note,
                          self.outbox.bytes_sent, time.monotonic() - self._t0, self._train_s, self._eval_s)
        self.history.append(rec)
        await self.transport.status(self.metrics.round_done(
            r, train=self._train, eval=self._eval, heard=heard, aggregated=self._aggregated, seconds=rec.seconds,
            rejected_total=self.state.total_rejected, note=self._note, privacy=self.privacy.status()))
        log.info("round %d: train %s; eval %s; %d/%d neighbours accepted%s, %.2fs", r,
                 self._train.line(), self._eval.line(), accepted, len(self.neighbours),
                 f" ({self._note})" if self._note else "", rec.seconds, extra={
                     "event": "round", "round": r, "accepted": accepted, "neighbours": len(self.neighbours),
                     "rejected": dict(rejected), "aggregated": self._aggregated, "note": self._note,
                     "train": metric_dict(self._train), "eval": metric_dict(self._eval),
                     "seconds": round(rec.seconds, 3)})
        return rec

    async def _wait_until(self, ready) -> bool:
        """Sleep until `ready(now)` (woken by arrivals, bounded by the state's deadline); False on stop."""
        while not self._stop.is_set() and not ready(time.monotonic()):
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), self.state.wait_time(time.monotonic()))
            except TimeoutError:
                pass
        return not self._stop.is_set()

    async def _execute(self, commands: list[Command]) -> None:
        """Carry out what the state machine decided, in order."""
        for cmd in commands:
            match cmd:
                case Log(event):
                    self._events.append(event)
                case JumpTo(target, before):
                    log.info("neighbours are at round %d, jumping from %d", target, before)
                case Send():
                    await self.outbox.send(cmd, self._own)
                case Aggregate():
                    await self._aggregate(cmd)
                case RequestReveals():
                    self.inbox.request_reveals(cmd)
                case Unmask():
                    await self._unmask(cmd)
                case Skip(_, reason):
                    self._note, self.checkpoints.result = reason, self._own
                case Checkpoint():
                    self.checkpoints.begin(cmd.next_round)

    async def _aggregate(self, cmd: Aggregate) -> None:
        agg = self.cfg.aggregation
        inputs = [self.state.collected[s] for s in cmd.senders]
        params = rule_params(agg.rule, agg.params)
        weights = None if cmd.weights is None else torch.tensor(cmd.weights, dtype=torch.float32)
        try:
            out = aggregate(agg.rule, self.stack.stacked(self._own, inputs), weights, f=agg.f, **params)
        except AggregationError as exc:
            await self._execute(self.state.skip(f"kept own model: {exc}"))
            return
        value = out.value.clone() if self.stack.owns(out.value) else out.value  # e.g. Krum's chosen row
        self.model.set(value)
        self.checkpoints.result, self._aggregated = value, True
        await self._execute(self.state.aggregated(cmd.senders, cmd.weights, out.report.to_dict()))

    async def _unmask(self, cmd: Unmask) -> None:
        """secure_mean: the model becomes (own + the unmasked sum of the senders) / (1 + senders)."""
        sec = self.secure
        contributions = {s: self.state.collected[s].contribution for s in cmd.senders}
        try:
            total = await off_loop_if_large(self.model.size * 4, sec.unmask, contributions, cmd.reveals,
                                            self.neighbours)  # a ChaCha20 stream per revealed seed
        except MaskError as exc:
            log.warning("round %d: secure_mean could not unmask: %s", cmd.round, exc)
            await self._execute(self.state.skip(f"kept own model: secure_mean: {exc}"))
            return
        value = sec.average(self._own, total, len(cmd.senders))
        self.model.set(value)
        self.checkpoints.result, self._aggregated = value, True
        report = {"rule": "secure_mean", "bound": sec.bound, "sum_hash": sum_hash(total),
                  "missing": sorted(set(self.neighbours) - set(cmd.senders)),
                  "reveals": {j: sorted(seeds) for j, seeds in sorted(cmd.reveals.items())},
                  "fixed_point_error": sec.fixed_point(len(self.neighbours)).error()}
        await self._execute(self.state.aggregated(cmd.senders, None, report))

    def log_events(self, commands, flush: bool = False) -> None:
        """Queue the Log commands' events for the next provenance transaction."""
        self._events.extend(c.event for c in commands if isinstance(c, Log))
        if flush or len(self._events) >= 64:
            self._flush()

    def wake(self) -> None:
        self._wake.set()

    def _flush(self) -> None:
        if self._events:
            events, self._events = self._events, []
            self.prov.append_many(events)
        self.checkpoints.publish()  # its `checkpoint` event is in the log now
