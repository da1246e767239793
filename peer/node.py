"""One peer: the asyncio driver of peer.round.RoundState.

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
from gossip.envelope import seal_update
from gossip.transport import Transport
from gossip.verify import Verifier

from . import checkpoint as ckpt
from .checkpoint import ModelInfo
from .commit import CheckpointWriter
from .config import PeerConfig
from .errors import PeerError
from .inbox import VERIFY_IN_THREAD_BYTES, Inbox
from .learner import Metrics, make_learner
from .lock import DataDirLock
from .membership import Membership
from .metrics import PeerMetrics, metric_dict
from .parts import PeerParts, build_parts, config_folder
from .provenance import EventKind, NewEvent, ProvenanceLog
from .resume import load_for_resume
from .round import (
    Aggregate,
    Checkpoint,
    Command,
    JumpTo,
    Log,
    RoundConfig,
    RoundState,
    Send,
    Skip,
    rule_params,
)
from .stack import UpdateStack

log = logging.getLogger("gossipfl.peer")
MAX_DIVERGED = 3  # rounds in a row with a non-finite model before the peer stops


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
        self.model_info = ModelInfo.of(self.model, parts.data.features)  # checkpoints carry it, for export
        self.membership = Membership(self.peer_id, cfg.network, getattr(parts.trust, "admin", None),
                                     set(parts.trust.peers), {n.id: n.addr for n in cfg.neighbours},
                                     Path(cfg.data_dir) / "membership.msgpack")
        self.verifier = Verifier(cfg.network, self.membership.trusted, self.model.schema, self.model.size,
                                 neighbours=set(self.neighbours), max_size=parts.max_message,
                                 max_lag=0, max_lead=cfg.round.max_lead, revoked=self.membership.revoked)
        self.stack = UpdateStack(self.neighbours, self.model.size)
        agg = cfg.aggregation
        self.state = RoundState(RoundConfig(
            frozenset(self.neighbours), agg.rule, agg.f, cfg.round.deadline, cfg.round.quorum,
            cfg.round.inbox_per_neighbour, cfg.round.max_lead, 0, agg.weights == "metropolis_hastings",
            dict(parts.neighbour_degrees), self.peer_id), keep=self.stack.settle)
        self.lock = DataDirLock(cfg.data_dir)
        self.lock.acquire()  # before the log and the checkpoint are touched
        try:
            self.prov = ProvenanceLog(Path(cfg.data_dir) / "provenance.db", self.identity, cfg.network)
            self.membership.load()  # the admin's records since the trust list, verified again
        except BaseException:
            self.lock.release()
            raise
        self.ckpt_path = Path(cfg.data_dir) / "checkpoint.msgpack"
        self.commits = CheckpointWriter(self.ckpt_path)
        self.history: list[RoundRecord] = []
        self._events: list[NewEvent] = []
        self._result: torch.Tensor | None = None  # the model the next checkpoint holds
        self._wake, self._stop = asyncio.Event(), asyncio.Event()
        self._receiver: asyncio.Task | None = None
        self._sending: dict[str, asyncio.Task] = {}  # neighbour -> the transmission in flight
        self.inbox = Inbox(self)
        names = {**parts.trust.names, **{n.id: n.name for n in cfg.neighbours if n.name}}
        self.metrics = PeerMetrics(cfg.name or self.peer_id[-8:], self.peer_id, neighbours=len(self.neighbours),
                                   names=names)
        self._diverged = 0
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
        """Continue from the checkpoint, after checking it against the log's last checkpoint event."""
        ck = load_for_resume(self.ckpt_path, self.prov, self.model.schema, self.model.size)
        if ck is not None:
            self.model.set(ck.params)
            self.learner.load_state(ck.learner_state())
            self.state.resume(ck.round, ck.parents, ck.replay)
            self.resumed_from = ck.round

    async def go_offline(self) -> None:
        """Simulated outage: stop receiving (messages sent meanwhile are lost)."""
        if self._receiver:
            self._receiver.cancel()
            self._receiver = None
        await self.transport.close()

    async def go_online(self) -> None:
        if self._receiver is not None and not self._receiver.done():
            return  # one receiver at a time
        loop = asyncio.get_running_loop()
        self.transport.on_failure = lambda exc: loop.call_soon_threadsafe(self._failed, "the transport", exc)
        await self.transport.start()
        self._receiver = asyncio.get_running_loop().create_task(self.inbox.run())
        self._receiver.add_done_callback(self._receiver_ended)

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
            self._begin_checkpoint(self.round)
            await self._durable()
        self._flush()
        for a in addrs:
            log.info("listening on %s", a)
        log.info("peer %s started at round %d with %d neighbours (%s, f=%d)", self.cfg.name or self.peer_id,
                 self.round, len(self.neighbours), self.cfg.aggregation.rule, self.cfg.aggregation.f)
        self.started = True

    def request_stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def _receiver_ended(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            self._failed("the receive loop", task.exception())

    def _failed(self, what: str, exc: BaseException) -> None:
        """A background task died: say why and stop the peer (never a silent half-alive peer)."""
        if self.started and self.failure is None:
            self.failure = exc
            log.error("%s failed, stopping the peer: %r", what, exc)
            self.request_stop()

    async def close(self, reason: str = "stopped") -> None:
        if not self.started:
            return
        self.started = False
        await self._checkpoint_now()
        in_flight = [t for t in self._sending.values() if not t.done()]
        if in_flight:  # let the last updates go out, within reason
            _, late = await asyncio.wait(in_flight, timeout=min(5.0, self.cfg.round.deadline))
            for t in late:
                t.cancel()
        self._events.append(NewEvent(EventKind.STOPPED, self.round, details={"reason": reason}))
        self._flush()
        if self._receiver:
            self._receiver.cancel()
            try:
                await self._receiver
            except asyncio.CancelledError:
                pass
            except Exception as exc:  # already reported by _receiver_ended
                log.debug("receive loop ended with %r", exc)
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
        t = time.monotonic()
        if self.cfg.round.train_in_thread:
            train = await asyncio.to_thread(self.learner.train, self.round)
        else:
            train = self.learner.train(self.round)
        self._train_s = time.monotonic() - t
        await self._durable()  # the last round's checkpoint, written while this one trained
        if self._stop.is_set():
            return False
        await self._check_finite()
        t = time.monotonic()
        self._eval = self.learner.evaluate()
        self._eval_s, self._train = time.monotonic() - t, train
        self._own = self.stack.hold_own(self.model.flat.detach())  # what is sent is what is aggregated
        self._bytes_sent = 0
        await self._execute(self.state.trained(time.monotonic(), {
            **train, **{f"eval_{k}": v for k, v in self._eval.items()}}))
        return True

    async def collect_and_aggregate(self) -> RoundRecord | None:
        """Phase 2: wait for neighbours (all, quorum or deadline), aggregate or skip, checkpoint."""
        r = self.round
        while not self._stop.is_set() and not self.state.ready(time.monotonic()):
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), self.state.wait_time(time.monotonic()))
            except TimeoutError:
                pass
        if self._stop.is_set():
            return None
        accepted, rejected = len(self.state.collected), Counter(self.state.rejected)
        heard = list(self.state.collected)
        self._note, self._aggregated = "", False
        await self._execute(self.state.close())
        rec = RoundRecord(r, self._train, self._eval, accepted, rejected, self._aggregated, self._note,
                          self._bytes_sent, time.monotonic() - self._t0, self._train_s, self._eval_s)
        self.history.append(rec)
        await self.transport.status(self.metrics.round_done(
            r, train=self._train, eval=self._eval, heard=heard, aggregated=self._aggregated, seconds=rec.seconds,
            rejected_total=self.state.total_rejected, note=self._note))
        log.info("round %d: train %s; eval %s; %d/%d neighbours accepted%s, %.2fs", r,
                 self._train.line(), self._eval.line(), accepted, len(self.neighbours),
                 f" ({self._note})" if self._note else "", rec.seconds, extra={
                     "event": "round", "round": r, "accepted": accepted, "neighbours": len(self.neighbours),
                     "rejected": dict(rejected), "aggregated": self._aggregated, "note": self._note,
                     "train": metric_dict(self._train), "eval": metric_dict(self._eval),
                     "seconds": round(rec.seconds, 3)})
        return rec

    async def _execute(self, commands: list[Command]) -> None:
        """Carry out what the state machine decided, in order."""
        for cmd in commands:
            match cmd:
                case Log(event):
                    self._events.append(event)
                case JumpTo(target, before):
                    log.info("neighbours are at round %d, jumping from %d", target, before)
                case Send():
                    await self._send(cmd)
                case Aggregate():
                    await self._aggregate(cmd)
                case Skip(_, reason):
                    self._note, self._result = reason, self._own
                case Checkpoint():
                    self._begin_checkpoint(cmd.next_round)

    async def _check_finite(self) -> None:
        """A model that diverged is never sent: log it and return to the last checkpoint."""
        flat = self.model.flat
        lo, hi = torch.aminmax(flat)
        if bool(torch.isfinite(lo)) and bool(torch.isfinite(hi)):
            self._diverged = 0
            return
        self._diverged += 1
        ck = ckpt.load(self.commits.latest, self.model.schema, self.model.size)
        self._events.append(NewEvent(EventKind.DIVERGED, self.round, details={
            "times": self._diverged, "restored_round": None if ck is None else ck.round}))
        self._flush()
        if ck is None or self._diverged >= MAX_DIVERGED:
            raise PeerError(f"the model diverged (NaN or Inf parameters after training) in {self._diverged} "
                            "round(s) in a row and there is no good checkpoint to return to; lower train.lr")
        log.warning("round %d: the model diverged after training; back to the checkpoint of round %d",
                    self.round, ck.round)
        self.model.set(ck.params)
        self.learner.load_state(ck.learner_state())

    async def _send(self, cmd: Send) -> None:
        codec = self.cfg.round.codec
        fields = dict(net=self.cfg.network, round=cmd.round, schema=self.model.schema, codec=codec,
                      parents=[bytes.fromhex(p) for p in cmd.parents], deg=len(self.neighbours))
        if self._own.numel() * 4 >= VERIFY_IN_THREAD_BYTES:  # hashing tens of MB off the event loop
            sealed = await asyncio.to_thread(seal_update, self.identity, self._own, **fields)
        else:
            sealed = seal_update(self.identity, self._own, **fields)
        size = len(sealed.data)
        await self._execute(self.state.sent(sealed.update_id, [
            (nb, sealed.update_id, {"bytes": size, "codec": codec}) for nb in self.neighbours]))
        self._flush()  # `sent` is durable before transmission: never a receipt without a send
        loop = asyncio.get_running_loop()
        for nb in self.neighbours:  # at once: a slow or stalled neighbour never holds up the others
            pending = self._sending.get(nb)
            if pending is not None and not pending.done():
                log.warning("round %d: the last update to %s is still in flight; not sending this one",
                            cmd.round, nb)
                continue
            self._sending[nb] = loop.create_task(self._transmit(nb, sealed.data, cmd.round))

    async def _transmit(self, nb: str, data: bytes, round_: int) -> None:
        if await self.transport.send(nb, data):
            self._bytes_sent += len(data)
            self.metrics.bytes_out(len(data))
        else:
            log.debug("round %d: update to %s not delivered", round_, nb)

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
        self._result, self._aggregated = value, True
        await self._execute(self.state.aggregated(cmd.senders, cmd.weights, out.report.to_dict()))

    def _begin_checkpoint(self, next_round: int) -> None:
        """Hash and write the state the next round starts from while it trains; logged once durable."""
        params = self.model.flat.detach().clone() if self._result is None else self._result
        self._result = None
        state = {k: v.clone() for k, v in self.learner.state().items()}
        self.commits.begin(ckpt.Checkpoint(next_round, self.model.schema, params, None,
                                           sorted([s, r] for s, r in self.state.seen), list(self.state.parents),
                                           self.model_info, state))

    async def _durable(self) -> None:
        done = await self.commits.durable()
        if done is not None:
            await self._execute(self.state.committed(*done))

    async def _checkpoint_now(self) -> None:
        await self._durable()
        self._begin_checkpoint(self.round)
        await self._durable()
        self._flush()

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
        self.commits.publish()  # its `checkpoint` event is in the log now
