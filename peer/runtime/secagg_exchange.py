"""How a secure_mean round runs in a peer (pure): double masking (privacy.secagg) with its
sub-phases, their deadlines and the member's ledger. The driver's half (masking, sealing,
unmasking off the event loop) is peer.runtime.secure_mean.

Each round r this peer plays two parts:
- the receiver of its own neighbourhood: one ReceiverSession per round, opened when the round
  starts (adverts for the next `max_lead` rounds are kept until then). Its phases close when
  every member expected answered, or at their deadlines (D = round.deadline):
      KEYS      opened at the round's start               -> BOOK to the members that advertised
      DEALS     opened when KEYS closed                   -> FORWARD to the members that dealt
      MASKED    the round's collection window: until every dealer's masked input arrived, or
                D after this peer trained (and at least D after MASKED opened)
                                                          -> SURVIVORS (close: EXCHANGING)
      CONSENTS  opened at SURVIVORS                       -> PROOF
      REVEALS   opened at PROOF                           -> `Unmask` (the wire sums off the loop)
  A phase with fewer than t answers fails the session: the round keeps the own model and says
  why. Up to n - t members may drop out over all phases (privacy.secagg's threshold).
- a member of each neighbour j's group: one MemberSession per (j, r), started with this round
  (an ADVERT to j, under fresh keys), answered as j's messages arrive, and masked (`Mask`, carried
  out by the wire) once this peer's model of round r is trained and j's forwarded shares are in -
  also when this peer's own round r ended first (its model of round r is kept for one more
  round: a member masks only its model of the session's round, never a later one). A session is
  kept for KEEP_ROUNDS rounds after its own, so a receiver that is behind still gets consents
  and reveals.

Every member step that changes the ledger is logged (`secagg_ledger`) before its message is
sent, and made durable first where a restart must know it: that a session with a (receiver,
round) began (before the ADVERT: a restarted peer never starts a second one), that this peer
masked (with its `sent` event, before the masked input leaves) and what it revealed (before the
REVEAL). A deal or a consent need not be: a restarted peer has lost the session's keys and
shares with its memory, so it can never deal, consent or reveal in that session again.
`restore` rebuilds the ledger after a restart. Messages are
checked by the sessions (sender, session, addressee, then the signature) before any work; a
refusal is a `Reject` naming who is to blame when the sender is proven.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from gossip.identity import Identity
from gossip.verify import Accepted
from privacy import secagg_wire as wire
from privacy.secagg import Context, Random, SecAggError, default_threshold
from privacy.secagg_ledger import MemberLedger
from privacy.secagg_member import MemberSession
from privacy.secagg_receiver import Phase as Stage
from privacy.secagg_receiver import ReceiverSession

from ..state.provenance import EventKind, NewEvent
from .commands import Ahead, Command, Log, Reject, Transmit
from .exchange import Closing, Exchange, Exchanging, SkipRound

KEEP_ROUNDS = 2  # member sessions answer a receiver up to this many rounds behind
THRESHOLDS = ("majority", "two_thirds")
_TO_MEMBER = (wire.KeyBook, wire.Forward, wire.Survivors, wire.Proof)
_TIMED = (Stage.KEYS, Stage.DEALS, Stage.CONSENTS, Stage.REVEALS)


def threshold_for(choice: str, n: int) -> int:
    """t for a group of n: "majority" (privacy.secagg.default_threshold: up to n - t drop-outs
    and c < 2t - n colluders) or "two_thirds" (floor(2n/3) + 1: Bonawitz et al.'s choice
    against a lying receiver with up to n/3 colluders, at the price of fewer drop-outs)."""
    if choice == "two_thirds":
        return min(n, max(default_threshold(n), 2 * n // 3 + 1))
    if choice == "majority":
        return default_threshold(n)
    raise ValueError(f"threshold must be one of {', '.join(THRESHOLDS)}, got {choice!r}")


@dataclass(frozen=True)
class Mask(Command):
    """Mask the own model of `round` in each of these member sessions and send each receiver
    its masked input (several at once: one durable write of the log for all of them)."""

    round: int
    receivers: tuple[str, ...]
    sessions: tuple[MemberSession, ...] = field(repr=False, compare=False)


@dataclass(frozen=True)
class Unmask(Command):
    """Unmask the sum of the survivors' updates and average it with the own model."""

    round: int
    session: ReceiverSession = field(repr=False, compare=False)


@dataclass
class _Own:
    """This peer's session as the receiver of one round, with its timing."""

    session: ReceiverSession | None
    opened: float | None = None  # when the current phase opened (None: the round has not started)
    failed: str | None = None


def ledger_event(s: MemberSession) -> NewEvent:
    """The member's ledger entry for its session, as the provenance event `restore` reads back."""
    return NewEvent(EventKind.SECAGG_LEDGER, s.ctx.round, s.ctx.receiver, None, s.record())


def refusal(exc: SecAggError, claimed: str | None) -> Reject:
    """A session's refusal as the round logs it: under the name of whom it blames when proven."""
    return Reject(exc.reason, str(exc), exc.who[0] if exc.who else claimed, bool(exc.who))


class SecAggExchange(Exchange):
    def __init__(self, policy, identity: Identity, network: str, groups: dict[str, tuple[str, ...]], size: int,
                 threshold: str = "majority", random: Random = os.urandom):
        self.policy = policy  # peer.runtime.round.RoundPolicy: neighbours, deadline, max_lead (read live)
        self.identity, self.me, self.network = identity, identity.peer_id, network
        self.groups = {j: tuple(g) for j, g in groups.items()}  # receiver -> its group, from the plan
        self.size, self.threshold, self.random = size, threshold, random
        threshold_for(threshold, 2)  # refuses an unknown choice now
        self.ledger = MemberLedger()
        self.members: dict[tuple[str, int], MemberSession] = {}
        self.logged: dict[tuple[str, int], dict] = {}  # the last ledger record logged per session
        self.own: dict[int, _Own] = {}  # round -> this peer's receiver session
        self.started: int | None = None  # the round this peer is in (after `start`)
        self.model_ready: set[int] = set()  # rounds whose own model may be masked (kept one round more)
        self.masked: set[tuple[str, int]] = set()

    def restore(self, records: Iterable) -> None:
        """The ledger from the `secagg_ledger` events of the log, in their order."""
        self.ledger = MemberLedger.restore(records)

    # --- the round's lifecycle --------------------------------------------------------

    def start(self, round_: int, now: float) -> list[Command]:
        self.started = round_
        own = self._own(round_)
        assert own is not None  # created when missing
        own.opened = now
        out = [] if own.session is None else self._advance_if_complete(round_, own, now)
        logs, sends = [], []
        for j in sorted(self.policy.neighbours):
            group = self.groups.get(j, ())
            if self.me not in group or j in group or len(group) < 2:
                logs.append(self._note(round_, j, "member_skipped", f"no group of {j:.16} from the plan that "
                                       "lists this peer (admitted later?): no masked input for it"))
                continue
            try:
                s = MemberSession(self.identity, Context(self.network, j, round_, group), self.ledger,
                                  random=self.random)
            except SecAggError as exc:  # e.g. a restart in this round: the ledger says it began already
                logs.append(self._note(round_, j, "member_skipped", str(exc)))
                continue
            self.members[(j, round_)] = s
            advert = s.advert()
            logs += self._ledger(s)
            sends.append(self._send(j, advert))
        return out + self._durable(logs) + sends

    def trained(self, round_: int, now: float, transmit: bool) -> list[Command]:
        if not transmit or round_ != self.started:
            return []
        self.model_ready.add(round_)
        ready = [s for (j, r), s in sorted(self.members.items())
                 if r == round_ and s.dealers is not None and (j, r) not in self.masked]
        return [self._mask(ready)] if ready else []

    def admit(self, update: Accepted, current: int) -> tuple[str, str] | None:
        rnd, sender = update.envelope.round, update.sender
        own = self.own.get(rnd)
        if rnd != current or own is None or own.session is None or own.failed:
            return "no_session", f"no secure aggregation of round {rnd} is collecting masked inputs"
        try:
            own.session.receive_masked(sender, update.envelope.payload)
        except SecAggError as exc:
            return exc.reason, str(exc)
        return None

    def awaited(self, neighbours: frozenset[str]) -> frozenset[str]:
        own = self.own.get(self.started) if self.started is not None else None
        if own is None or own.session is None or own.failed:
            return frozenset()  # nothing can be unmasked this round: close at once
        if own.session.phase is Stage.MASKED:
            return frozenset(own.session.dealers)
        return neighbours

    def collecting_deadline(self, deadline_at: float) -> float:
        own = self.own.get(self.started) if self.started is not None else None
        if own is None or own.session is None or own.failed:
            return deadline_at
        if own.session.phase in (Stage.KEYS, Stage.DEALS):
            return float("inf")  # their own deadlines (tick) move the session on to MASKED
        if own.session.phase is Stage.MASKED and own.opened is not None:
            return max(deadline_at, own.opened + self.policy.deadline)
        return deadline_at

    def close(self, round_: int, inputs: Sequence[Accepted], now: float) -> Closing:
        own = self.own.get(round_)
        if own is None or own.session is None or own.failed:
            why = own.failed if own is not None and own.failed else "no session"
            return SkipRound(f"kept own model: secure_mean: {why}")
        if own.session.phase is not Stage.MASKED:
            return SkipRound(f"kept own model: secure_mean: still in phase {own.session.phase} at the deadline")
        out = self._advance(round_, own, now)
        if own.failed:
            return SkipRound(f"kept own model: secure_mean: {own.failed}")
        return Exchanging(tuple(out))

    def tick(self, now: float) -> list[Command]:
        own = self.own.get(self.started) if self.started is not None else None
        if own is None or own.session is None or own.failed or own.opened is None:
            return []
        if own.session.phase in (Stage.KEYS, Stage.DEALS, Stage.CONSENTS) and now >= own.opened + self.policy.deadline:
            return self._advance(own.session.ctx.round, own, now)
        return []

    def wake_at(self) -> float | None:
        own = self.own.get(self.started) if self.started is not None else None
        if own is None or own.session is None or own.failed or own.opened is None or own.session.phase not in _TIMED:
            return None
        return own.opened + self.policy.deadline

    def ready(self, now: float) -> bool:
        own = self.own.get(self.started) if self.started is not None else None
        if own is None or own.session is None or own.failed:
            return True
        s = own.session
        return s.phase is Stage.REVEALS and (s.complete() or now >= own.opened + self.policy.deadline)

    def done(self, round_: int) -> Closing:
        own = self.own.get(round_)
        if own is None or own.session is None or own.failed:
            why = own.failed if own is not None and own.failed else "no session"
            return SkipRound(f"kept own model: secure_mean: {why}")
        s = own.session
        if len(s.reveals) < s.threshold:
            return SkipRound(f"kept own model: secure_mean: {len(s.reveals)} reveals, threshold {s.threshold}; "
                             f"silent: {', '.join(k[:16] for k in s.missing())}")
        return Unmask(round_, s)

    def reset(self, round_: int) -> None:
        self.started = None
        self.model_ready = {r for r in self.model_ready if r >= round_ - 1}
        self.own = {r: o for r, o in self.own.items() if r >= round_}
        keep = round_ - KEEP_ROUNDS
        self.members = {k: s for k, s in self.members.items() if k[1] >= keep}
        self.logged = {k: v for k, v in self.logged.items() if k[1] >= keep}
        self.masked = {k for k in self.masked if k[1] >= keep}
        self.ledger.forget_before(keep)

    def owes(self) -> bool:
        """A receiver has this member's masked input and still needs its consent or reveal."""
        return any(s.entry.phase in ("masked", "consented") for s in self.members.values())

    # --- messages ----------------------------------------------------------------------

    def message(self, sender: str, rnd: int, content, current: int, now: float) -> list[Command]:
        if isinstance(content, _TO_MEMBER):
            return self._to_member(sender, rnd, content)
        if isinstance(content, wire.Advert) and rnd > current + self.policy.max_lead:
            return self._ahead(sender, rnd, content) + [
                Reject("no_session", f"an advert for round {rnd}, too far ahead", sender, False)]
        out = self._to_receiver(sender, rnd, content, current, now)
        if isinstance(content, wire.Advert) and rnd > current and not any(isinstance(c, Reject) for c in out):
            out.append(Ahead(sender, rnd))  # kept by a session of a later round: its signature checked
        return out

    def _ahead(self, sender: str, rnd: int, msg: wire.Advert) -> list[Command]:
        """A neighbour's signed advert of a later round proves it is there: masked inputs only
        flow once a round's keys are agreed, so this is how a peer that fell behind (a restart,
        a slow start) learns to catch up."""
        if sender not in self.policy.neighbours or msg.net != self.network or msg.to != self.me \
                or not msg.signed_by_sender():
            return []
        return [Ahead(sender, rnd)]

    def _to_receiver(self, sender: str, rnd: int, content, current: int, now: float) -> list[Command]:
        own = self._own(rnd, create=isinstance(content, wire.Advert) and sender in self.policy.neighbours
                        and current <= rnd <= current + self.policy.max_lead)
        if own is None or own.session is None:
            return [Reject("no_session", f"no secure aggregation of round {rnd} takes a {content.KIND}", sender, False)]
        try:
            own.session.receive(content)
        except SecAggError as exc:
            return [refusal(exc, sender)]
        return self._advance_if_complete(rnd, own, now)

    def _to_member(self, sender: str, rnd: int, msg) -> list[Command]:
        s = self.members.get((sender, rnd))
        if s is None:
            return [Reject("no_session", f"this peer has no session with {sender:.16} for round {rnd}", sender, False)]
        try:
            reply = s.receive(msg)
        except SecAggError as exc:
            return [refusal(exc, sender)]
        if reply is not None:  # a deal, consent or reveal: on record before it leaves
            if isinstance(msg, wire.Proof):  # the reveal: what it gives away is on record first
                return self._durable(self._ledger(s)) + [self._send(sender, reply)]
            return self._ledger(s) + [self._send(sender, reply)]  # a restart loses the session's keys: no need
        if rnd in self.model_ready and (sender, rnd) not in self.masked:  # the forwarded shares are in
            return [self._mask([s])]
        return []

    # --- the receiver's session ----------------------------------------------------------

    def _own(self, rnd: int, create: bool = True) -> _Own | None:
        own = self.own.get(rnd)
        group = tuple(sorted(self.policy.neighbours))
        if own is not None and (own.session is None or own.session.ctx.group == group):
            return own
        if not create:
            return own
        try:
            ctx = Context(self.network, self.me, rnd, group)
            own = _Own(ReceiverSession(self.identity, ctx, size=self.size,
                                       threshold=threshold_for(self.threshold, len(group)), random=self.random))
        except ValueError as exc:  # fewer than two neighbours now (revocations)
            own = _Own(None, failed=f"this peer's neighbourhood cannot be a group: {exc}")
        self.own[rnd] = own
        return own

    def _advance_if_complete(self, rnd: int, own: _Own, now: float) -> list[Command]:
        s = own.session
        if s is None:
            return []
        if rnd != self.started or own.failed or s.phase not in (Stage.KEYS, Stage.DEALS, Stage.CONSENTS):
            return []  # MASKED closes with the round; REVEALS with `ready`
        return self._advance(rnd, own, now) if s.complete() else []

    def _advance(self, rnd: int, own: _Own, now: float) -> list[Command]:
        s = own.session
        assert s is not None  # callers checked: a failed group has no session to advance
        closing, missing = s.phase, s.missing()
        try:
            out = s.advance()
        except SecAggError as exc:
            own.failed = f"phase {closing}: {exc}"
            return [Log(NewEvent(EventKind.SECAGG, rnd, None, None, {
                "role": "receiver", "step": "failed", "phase": str(closing), "reason": exc.reason,
                "who": list(exc.who), "detail": exc.detail[:300]}))]
        own.opened = now
        by_bytes: dict[bytes, list[str]] = {}
        for k, data in out.items():
            by_bytes.setdefault(data, []).append(k)
        return [Log(NewEvent(EventKind.SECAGG, rnd, None, None, {
            "role": "receiver", "step": str(closing), "answered": sorted(out), "missing": list(missing),
            "threshold": s.threshold}))] + [self._send_all(tuple(ks), data) for data, ks in by_bytes.items()]

    # --- commands ------------------------------------------------------------------------

    def _mask(self, sessions: list[MemberSession]) -> Mask:
        self.masked |= {(s.ctx.receiver, s.ctx.round) for s in sessions}
        return Mask(sessions[0].ctx.round, tuple(s.ctx.receiver for s in sessions), tuple(sessions))

    def _ledger(self, s: MemberSession) -> list[Log]:
        """The session's ledger entry to log, unless it is the one logged last (a repeat)."""
        key, record = (s.ctx.receiver, s.ctx.round), s.record()
        if self.logged.get(key) == record:
            return []
        self.logged[key] = record
        return [Log(ledger_event(s))]

    def _note(self, rnd: int, receiver: str, step: str, detail: str) -> Log:
        return Log(NewEvent(EventKind.SECAGG, rnd, receiver, None, {"role": "member", "step": step,
                                                                     "detail": detail[:300]}))

    @staticmethod
    def _durable(logs: list[Log]) -> list[Command]:
        """The logs, the last one made durable (with everything before it) before what follows."""
        if not logs:
            return []
        return [*logs[:-1], Log(logs[-1].event, durable=True)]

    def _send(self, to: str, data: bytes) -> Transmit:
        return self._send_all((to,), data)

    def _send_all(self, to: tuple[str, ...], data: bytes) -> Transmit:
        return Transmit(to, data, retry_for=self.policy.deadline)
