"""One peer: the asyncio driver of peer.runtime.round.RoundState.

The state machine decides (catch-up, rate limits, quorum, deadline, combine or skip, what to
log); this class is its only caller and only interpreter of its commands (`_execute`), doing the
I/O through parts that get only what they need: the rule's wire, the payload verifier, the
outbox, the checkpoints, the journal (provenance log), the privacy ledger. Time is the event
loop's clock (virtual in the simulator); background work lives in one tracked TaskSet."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from pathlib import Path

from gossip.transport import Transport

from ..config.parse import PeerConfig
from ..errors import PeerError, RevokedError
from ..learning.learner import make_learner
from ..state.checkpoint import ModelInfo
from ..state.lock import DataDirLock
from ..state.provenance import EventKind, NewEvent, ProvenanceLog
from . import commands as do
from .checkpoints import Checkpoints
from .context import RoundContext, RoundRecord, log_round
from .inbox import Inbox, Listener
from .journal import Journal
from .membership import allowed_peers
from .membership import restore as restore_membership
from .metrics import PeerMetrics
from .outbox import Outbox, upload_budget
from .parts import PeerParts, build_parts, config_folder, membership_of, policy_of, verifier_of
from .personalize import Personalizer
from .privacy_ledger import PeerPrivacy
from .round import OfferKind, Phase, RoundState
from .stack import UpdateStack
from .tasks import TaskSet
from .wires import make_wire
from .witness import Witness, confirm_past

log = logging.getLogger("gossipfl.peer")
OWED_MAX = 30.0  # seconds a stopping peer gives neighbours' rounds to get what they need from it


class Peer:
    def __init__(self, parts: PeerParts):
        cfg = self.cfg = parts.cfg
        self.parts, self.identity, self.peer_id = parts, parts.identity, parts.identity.peer_id
        self.neighbours, self.transport, self.model = list(parts.neighbours), parts.transport, parts.model
        seed, base = cfg.data.seed + 7 * cfg.data.shard, config_folder(cfg)
        self.learner = make_learner(self.model.module, self.model.flat, parts.data, cfg.train, seed=seed, base=base)
        self.personal = Personalizer(cfg.personalization, self.model, parts.split, parts.data, cfg.train, seed, base)
        self.privacy = PeerPrivacy(cfg.privacy, self.learner, parts.noise, parts.split)  # after the learner (record)
        self.model_info = ModelInfo.of(self.model, parts.data.features)  # checkpoints carry it, for export
        self.membership = membership_of(parts)
        self.stack = UpdateStack(self.neighbours, parts.wire_size, masked=parts.secure is not None)
        self.wire = make_wire(parts, self.stack)
        self.verifier = verifier_of(parts, self.membership, self.wire.words(len(self.neighbours)))
        policy = policy_of(parts)
        self.state = RoundState(policy, self.wire.exchange(policy), keep=self.stack.settle)
        self.lock = DataDirLock(cfg.data_dir)
        self.lock.acquire()  # before the log and the checkpoint are touched
        try:
            self.prov = ProvenanceLog(Path(cfg.data_dir) / "provenance.db", self.identity, cfg.network)
            restore_membership(self.membership, self.prov)  # from the verified log (and its cache file)
            if self.membership.own_revocation is not None:
                raise RevokedError(f"this peer ({self.peer_id}) was revoked by the network admin at epoch "
                                   f"{self.membership.own_revocation}; it cannot rejoin with this key")
            parts.allowed.clear()  # who may connect: as the membership says, on every path
            parts.allowed.update(allowed_peers(self.membership.neighbours, self.membership.admin))
        except BaseException:
            self.lock.release()
            raise
        self.checkpoints = Checkpoints(Path(cfg.data_dir) / "checkpoint.msgpack", self.model, self.learner,
                                       self.model_info, self.personal)
        names = {**parts.trust.names, **{n.id: n.name for n in cfg.neighbours if n.name}}
        self.metrics = PeerMetrics(cfg.name or self.peer_id[-8:], self.peer_id, neighbours=len(self.neighbours),
                                   names=names, share_learning_metrics=cfg.metrics.share_learning_metrics,
                                   personal=self.personal.serves == "personal")
        self.tasks = TaskSet(self.failed)
        self.inbox = Inbox(self.verifier, self.wire, self.membership, self.metrics.bytes_in, self.tasks,
                           self._execute)
        self.outbox = Outbox(self.transport, self.tasks, self.metrics.bytes_out, retry_cap=cfg.round.interval
                             or cfg.round.deadline, upload=upload_budget(cfg.transport.max_upload_kbps))
        self.journal = Journal(self.prov, self.checkpoints.publish, self.outbox, self.failed)
        self.listener = Listener(self.transport, self.tasks, self.receive, self.failed)
        self.inbox.witness = self.witness = Witness(self.prov, self.peer_id, cfg.network, self.verifier)
        self.history: list[RoundRecord] = []
        self.ctx, self._wake, self._stop = RoundContext(started=0.0), asyncio.Event(), asyncio.Event()
        self.failure: BaseException | None = None  # what stopped it
        self.revoked_at: int | None = None  # the epoch at which it was revoked
        self.started = False
        self.resumed_from: int | None = None  # the round of the checkpoint it resumed

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

    @staticmethod
    def clock() -> float:
        """The event loop's clock: monotonic time on a gateway, virtual time in a simulation."""
        return asyncio.get_running_loop().time()

    # --- lifecycle -----------------------------------------------------------------

    def resume(self) -> None:
        ck = self.checkpoints.resume(self.prov)
        if ck is not None:
            self.state.resume(ck.round, ck.parents, ck.replay)
            self.resumed_from = ck.round
        self.privacy.restore(self.prov)  # the budget spent so far, from the log (it has every release)
        self.wire.restore(self.prov)  # e.g. secure_mean: the member's ledger (never a second session or set)

    async def go_offline(self) -> None:
        """Simulated outage: stop receiving (messages sent meanwhile are lost)."""
        await self.listener.stop()
        await self.transport.close()

    async def go_online(self) -> None:
        await self.listener.start()

    async def start(self) -> None:
        self.metrics.start(self.cfg.metrics.listen, transport=self.transport)
        self.resume()
        await self.go_online()
        await self._apply_neighbours()  # the stored membership records count from the start
        addrs, past = self.transport.addresses(), await confirm_past(self)  # neighbours witness its past
        self.journal.add(NewEvent(EventKind.STARTED, self.round, details={
            "neighbours": self.neighbours, "rule": self.cfg.aggregation.rule, "f": self.cfg.aggregation.f,
            "transport": self.cfg.transport.kind, "addresses": addrs, "resumed_from": self.resumed_from,
            "schema": self.parts.wire_schema.hex(), "params": self.parts.wire_size, "personalization": self.personal.mode,
            **past}))
        if self.resumed_from is None:  # a first checkpoint: a diverging first round has a model to return to
            await self._execute(self.state.persist())
            await self._commit_durable()
        await self.journal.flush()
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
        await self._answer_what_is_owed()
        await self._commit_durable()
        await self._execute(self.state.persist())
        await self._commit_durable()
        await self.outbox.drain(min(5.0, self.cfg.round.deadline))
        self.journal.add(NewEvent(EventKind.STOPPED, self.round, details={"reason": reason}))
        await self.journal.close()
        await self.listener.stop()
        await self.transport.close("revoked" if self.revoked_at is not None else "stopped")  # the retained status
        await self.tasks.cancel()
        self.inbox.close()
        self.prov.close()
        self.lock.release()
        self.metrics.stop()
        log.info("peer %s stopped at round %d (%s)", self.cfg.name or self.peer_id, self.round, reason)

    async def _answer_what_is_owed(self) -> None:
        """Before stopping: let neighbours' rounds get what they still need from this peer (a
        secure_mean member's consents and reveals), for at most two round deadlines and OWED_MAX
        seconds (a systemd unit allows 60 s to stop)."""
        end = self.clock() + min(2 * self.cfg.round.deadline, OWED_MAX)
        while self.state.owes() and self.failure is None and self.clock() < end:
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), min(0.5, end - self.clock()))
            except TimeoutError:
                pass

    async def run(self, rounds: int | None = None) -> list[RoundRecord]:
        """Run rounds until a stop request and: `rounds` more are done (0 = forever), or without
        `rounds`, until this peer's round reaches round.rounds (the round to stop at; 0 = forever)."""
        if not self.started:
            await self.start()
        done = 0

        def more() -> bool:
            return not self.cfg.round.reached(self.round) if rounds is None else rounds == 0 or done < rounds

        try:
            while not self._stop.is_set() and more():
                started = self.clock()
                await self.run_round()
                done += 1
                pause = self.cfg.round.interval - (self.clock() - started)
                if pause > 0 and more():
                    try:
                        await asyncio.wait_for(self._stop.wait(), pause)
                    except TimeoutError:
                        pass
        finally:
            await self.close("revoked" if self.revoked_at is not None
                             else "stop requested" if self._stop.is_set() else "rounds done")
        if self.revoked_at is not None:
            raise RevokedError(f"this peer ({self.peer_id}) was revoked by the network admin at epoch "
                               f"{self.revoked_at}; it stopped and must not be restarted with this key")
        if self.failure is not None:
            raise self.failure if isinstance(self.failure, PeerError) else PeerError(  # its own exit status
                f"the peer stopped: {type(self.failure).__name__}: {self.failure}")
        return self.history

    # --- one round -------------------------------------------------------------------

    async def run_round(self) -> RoundRecord | None:
        """One full round: train and send, then collect and aggregate (none once told to stop)."""
        if self._stop.is_set() or not await self.train_and_send():
            return None
        return await self.collect_and_aggregate()

    async def train_and_send(self) -> bool:
        """Phase 1 (the simulator runs it for every peer before phase 2, in lock-step)."""
        ctx = self.ctx = RoundContext(started=self.clock())
        await self._apply_neighbours()
        await self._execute(self.state.start(self.clock()))
        transmit, events = self.privacy.before_training(self.round, self.model.flat)
        self.journal.add(*events)  # the budget ran out: said once, in the log too
        t = self.clock()
        ctx.train, ctx.personal_train = await self.personal.train(self.learner, self.round, transmit,
                                                                  self.cfg.round.train_in_thread)
        ctx.train_s = self.clock() - t
        await self._commit_durable()  # the last round's checkpoint, written while this one trained
        if self._stop.is_set():
            return False
        diverged = self.checkpoints.restore_if_diverged(self.round)  # back to the checkpoint before noising
        if diverged is not None:
            self.journal.add(diverged)
            await self.journal.flush()
            if self.checkpoints.gave_up:
                raise PeerError(self.checkpoints.gave_up)
        self.journal.add(*self.privacy.after_training(self.round, self.model.flat))  # noised, accounted
        t = self.clock()
        ctx.eval = self.learner.evaluate()
        ctx.personal_eval = self.personal.evaluate(ctx.eval)  # the model the gateway serves, where personal
        ctx.eval_s = self.clock() - t
        ctx.own = ctx.result = self.stack.hold_own(self.personal.outgoing())  # what is sent is what is aggregated
        self.outbox.new_round()
        await self._execute(self.state.trained(self.clock(), ctx.trained(), transmit=transmit))
        return True

    async def collect_and_aggregate(self) -> RoundRecord | None:
        """Phase 2: wait for neighbours (all, quorum or deadline), combine or skip, checkpoint."""
        ctx, r = self.ctx, self.round
        if not await self._wait_until_ready():
            return None
        accepted, rejected = len(self.state.collected), Counter(self.state.rejected)
        heard = list(self.state.collected)
        await self._execute(self.state.close(self.clock()))
        if self.state.phase is Phase.EXCHANGING:  # the rule's wire needs more messages (e.g. consents, reveals)
            if not await self._wait_until_ready():
                return None
            await self._execute(self.state.exchange_done())
        rec = ctx.record(r, accepted, rejected, self.outbox.bytes_sent, self.clock())
        self.history.append(rec)
        await self.transport.status(self.metrics.round_done(
            r, train=ctx.train, eval=ctx.eval, personal=ctx.personal_eval, heard=heard, aggregated=ctx.aggregated,
            seconds=rec.seconds, rejected_total=self.state.total_rejected, note=ctx.note, privacy=self.privacy.status()))
        log_round(rec, len(self.neighbours))
        return rec

    async def _wait_until_ready(self) -> bool:
        """Sleep until the round is ready (woken by arrivals, bounded by its deadlines and the
        exchange's own, which `tick` serves); False on stop."""
        while not self._stop.is_set():
            await self._execute(self.state.tick(self.clock()))
            if self.state.ready(self.clock()):
                break
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), self.state.wait_time(self.clock()))
            except TimeoutError:
                pass
        return not self._stop.is_set()

    async def _apply_neighbours(self) -> None:
        """New or revoked neighbours count from a round boundary (the stack has one row each)."""
        wanted = self.membership.neighbours
        if set(wanted) == set(self.neighbours):
            return
        log.info("neighbours now %s", ", ".join(sorted(wanted)) or "none")
        self.neighbours = sorted(wanted)
        self.stack.set_neighbours(self.neighbours)
        self.state.set_neighbours(frozenset(wanted))
        self.verifier.neighbours = set(wanted)
        self.verifier.masked_words = self.wire.words(len(wanted))
        self.metrics.set_neighbours(len(wanted))
        await self.transport.set_neighbours(dict(wanted))

    # --- carrying out the state machine's commands ----------------------------------

    async def _execute(self, commands: list[do.Command]) -> None:
        """Carry out what the state machine (or the wire, for its exchange) decided, in order."""
        ctx = self.ctx
        for cmd in commands:
            match cmd:
                case do.Log(event, durable):
                    if durable:  # one write for every durable event of this turn of the loop
                        self.journal.durable(event)
                    else:
                        self.journal.add(event)
                case do.JumpTo(target, before):
                    log.info("neighbours are at round %d, jumping from %d", target, before)
                case do.Resend(peer):
                    self.outbox.again(peer)
                case do.Send():
                    await self._send(cmd)
                case do.Screened(result):
                    await self._execute(self.state.screened(result))
                case do.Finish(envelope):
                    await self._execute(await self.inbox.finish(envelope, self.neighbours))
                case do.Offer(result, size):
                    kind, out = self.state.offer(result, size)
                    await self._execute(out)
                    if kind is OfferKind.ACCEPTED:
                        self._wake.set()
                case do.Skip(_, reason):
                    ctx.note, ctx.result = reason, ctx.own
                case do.Persist(next_round):
                    self.checkpoints.begin(next_round, self.personal.full(ctx.result), self.state.seen, self.state.parents)
                    ctx.result = None
                case do.Adopt(value, senders, weights, report):
                    self.personal.adopt(value)
                    ctx.result, ctx.aggregated = value, True
                    await self._execute(self.state.aggregated(senders, weights, report))
                case do.Refuse(reason):
                    await self._execute(self.state.skip(reason))
                case do.Transmit():
                    self.journal.send(cmd)
                case do.Reject(reason, detail, claimed, authenticated):
                    await self._execute(self.state.reject(reason, detail, claimed, authenticated))
                case do.Forget(peer):  # revoked: from now on its updates are rejected, this round's dropped
                    self.state.forget(peer)
                case do.Revoked(epoch):
                    log.warning("this peer was revoked by the network admin (epoch %d): stopping for good", epoch)
                    self.revoked_at = epoch
                    self.request_stop()
                case do.SetAllowed(peers):  # the transport reads this set live
                    self.parts.allowed.clear()
                    self.parts.allowed.update(peers)
                case do.Exchanged(sender, round_, content):
                    await self._execute(self.state.exchanged(sender, round_, content, self.clock()))
                    self._wake.set()
                case _ if self.wire.carries(cmd):
                    await self._execute(await self.wire.carry_out(cmd, ctx.sent(), self.state.collected,
                                                                  self.neighbours))
                case _:  # pragma: no cover - a command nobody carries out is a bug
                    raise PeerError(f"no one carries out {cmd!r}")

    async def _send(self, cmd: do.Send) -> None:
        """Seal the own update; log `sent` durably before anything leaves (never a receipt
        without a send); then transmit each neighbour its bytes."""
        fields = dict(net=self.cfg.network, round=cmd.round, schema=self.parts.wire_schema, codec=self.cfg.round.codec,
                      parents=[bytes.fromhex(x) for x in cmd.parents], deg=len(self.neighbours),
                      eps=self.privacy.signed())
        out = await self.wire.seal(self.ctx.sent(), self.neighbours, fields, cmd.transmit)
        await self._execute(self.state.sent(out.update_id, [
            (nb, s.update_id, {"bytes": len(s.data), **out.details}) for nb, s in out.per_neighbour.items()]))
        await self.journal.flush()
        self.outbox.updates({nb: s.data for nb, s in out.per_neighbour.items()}, cmd.round)

    async def sync(self) -> None:
        """Make what the last round produced durable now: its checkpoint written and logged."""
        await self._commit_durable()
        await self.journal.flush()

    async def _commit_durable(self) -> None:
        done = await self.checkpoints.durable()
        if done is not None:
            await self._execute(self.state.committed(*done))

    # --- receiving ---------------------------------------------------------------------

    async def receive(self, hint: str | None, data) -> None:
        """One message from the transport (`hint`: the sender it claims, unproven)."""
        await self._execute(self.inbox.sort(hint, data, self.round, self.state.seen, self.neighbours))
