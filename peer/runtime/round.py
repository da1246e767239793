"""Every decision of a round, without I/O (sans-I/O, the way h11 is built).

`RoundState` is fed inputs - "start", "trained", a screened or verified message, "close",
"aggregated", "committed" - and answers with typed commands (peer.runtime.commands) that the
asyncio driver (peer.runtime.driver) carries out against the transport, the learner,
aggregation, the provenance log and the checkpoint writer. It has no clock (every call takes
`now`), no asyncio, no sockets, so each decision is tested with a fake clock.

It guards itself: every lifecycle input is legal only in the phases `TRANSITIONS` lists, and
any other call raises `RoundProtocolError` naming the phase and the input, so a driver that
calls out of order fails loudly instead of aggregating twice or sending from a closed round.
Messages (`screened`, `offer`, `reject`, `exchanged`) may arrive in any phase: they are
hostile input, judged and logged, never a reason to raise.

A round: start (catch up if f + 1 neighbours are ahead) -> train -> `trained(now)` sends and
opens the collection window -> messages are screened (header + signature), rate-limited per
authenticated sender, finished (payload) and counted -> `ready(now)` when every neighbour (or
the quorum) delivered or the deadline passed -> `close(now)` asks the round's exchange (how the
rule's wire combines what arrived: peer.runtime.exchange) to combine, to skip, or to exchange
more messages first (EXCHANGING, e.g. secure_mean's consents and reveals) -> `aggregated(...)` or
`skip(...)` -> `committed(...)` logs the aggregation and checkpoint once the checkpoint is
durable.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from gossip.envelope import Envelope
from gossip.verify import Accepted, Reason, Rejected, Verifier

from ..state.provenance import EventKind, NewEvent
from .commands import Ahead, Command, Finish, JumpTo, Log, Persist, Resend, Send, Skip
from .exchange import Closing, DirectExchange, Exchange, Exchanging, SkipRound
from .phases import TRANSITIONS, Input, Phase, RoundProtocolError
from .strangers import Strangers


class OfferKind(StrEnum):
    ACCEPTED = "accepted"  # counts for the current round
    BUFFERED = "buffered"  # counts when its (future) round begins
    DROPPED = "dropped"  # valid but useless (a past round)
    REJECTED = "rejected"


@dataclass(kw_only=True)
class RoundPolicy:
    """What the state machine needs to know of the peer's configuration."""

    neighbours: frozenset[str]
    peer_id: str = ""  # this peer (row 0 of every aggregation)
    rule: str = "median"
    f: int = 0
    deadline: float = 10.0
    quorum: int = 0  # 0: every neighbour
    per_neighbour_limit: int = 4  # messages per authenticated sender per round (x buffered rounds)
    max_lead: int = 2  # rounds ahead that are buffered (and accepted by the verifier)
    max_lag: int = 0  # past rounds whose (sender, round) pairs the replay window keeps


class RoundState:
    def __init__(self, policy: RoundPolicy, exchange: Exchange | None = None,
                 keep: Callable[[Accepted], Accepted] | None = None):
        self.cfg = policy
        self.exchange = exchange if exchange is not None else DirectExchange(policy)
        # applied to an update when it starts to count (on arrival, or when its buffered round
        # begins): the peer copies it into its aggregation stack and lets the message go
        self.keep: Callable[[Accepted], Accepted] = keep or (lambda update: update)
        self.round = 0
        self.phase = Phase.NEW
        self.parents: tuple[str, ...] = ()  # update ids aggregated into the current model
        self.deadline_at: float | None = None
        self.collected: dict[str, Accepted] = {}
        self.future: dict[int, dict[str, Accepted]] = defaultdict(dict)
        self.ahead: dict[str, int] = {}  # authenticated round claims of neighbours
        self.proofs: dict[str, Envelope] = {}  # newest signed update beyond the window, kept for later
        self.helped: set[str] = set()  # neighbours sent a Resend this round (once each)
        self.seen: set[tuple[str, int]] = set()  # replay window: (sender, round) accepted
        self.arrivals: Counter = Counter()
        self.flagged: set[str] = set()
        self.rejected: Counter = Counter()  # this round, by reason (all senders)
        self.total_rejected: Counter = Counter()  # since the peer started
        self.strangers = Strangers()  # unproven senders' rejections, logged once per round
        self.own_id: str | None = None
        self.pending: dict | None = None  # the aggregated event, completed with the model hash when durable
        self.persisting: set[int] = set()  # rounds of checkpoints asked for and not yet durable

    def _enter(self, what: Input, then: Phase | None = None) -> None:
        """Check that `what` is legal now (and, with `then`, that it may lead there)."""
        allowed = TRANSITIONS.get((self.phase, what))
        if allowed is None:
            raise RoundProtocolError(self.phase, what)
        if then is not None:
            if then not in allowed:  # pragma: no cover - a bug in this module
                raise RoundProtocolError(self.phase, what, f"cannot lead to {then}")
            self.phase = then

    # --- lifecycle ---------------------------------------------------------------------

    def resume(self, round_: int, parents: list[str], seen: list) -> None:
        """Continue from a verified checkpoint (only before the first round starts)."""
        self._enter(Input.RESUME)
        self.round = round_
        self.parents = tuple(parents)
        self.seen = {(str(s), int(r)) for s, r in seen}

    def start(self, now: float = 0.0) -> list[Command]:
        """Begin a round: catch up with the neighbours first if f + 1 of them are ahead."""
        self._enter(Input.START)
        out: list[Command] = []
        target = self.catch_up_target()
        if target is not None:
            out.append(JumpTo(target, self.round))
            self._advance(target)
        self._enter(Input.START, Phase.TRAINING)
        return out + self._release_proofs() + self.exchange.start(self.round, now)

    def _release_proofs(self) -> list[Command]:
        """Updates that were beyond the window and are inside it now count like any other."""
        out: list[Command] = []
        for sender, env in list(self.proofs.items()):
            if env.round <= self.round + self.cfg.max_lead:
                del self.proofs[sender]
                if env.round >= self.round:
                    out.append(Finish(env))
        return out

    def catch_up_target(self) -> int | None:
        """The (f+1)-th highest round a neighbour proved it is at, if ahead of ours: f lying
        neighbours alone cannot drag the peer forward."""
        f = self.cfg.f
        rounds = sorted((r for s, r in self.ahead.items() if s in self.cfg.neighbours), reverse=True)
        if len(rounds) <= f:
            return None
        return rounds[f] if rounds[f] > self.round else None

    def trained(self, now: float, details: dict, transmit: bool = True) -> list[Command]:
        """Training finished: log it, send, and open the collection window until the deadline."""
        self._enter(Input.TRAINED, Phase.COLLECTING)
        self.deadline_at = now + self.cfg.deadline
        return [Log(NewEvent(EventKind.TRAINED, self.round, details=details)),
                Send(self.round, self.parents, transmit), *self.exchange.trained(self.round, now, transmit)]

    def sent(self, update_id: str, to: list[tuple[str, str, dict]]) -> list[Command]:
        """The own update was sealed (`update_id`); `to`: (neighbour, id sent, details) each, logged
        before transmission so a crash never leaves a receipt without a send."""
        self._enter(Input.SENT, Phase.COLLECTING)
        self.own_id = update_id
        return [Log(NewEvent(EventKind.SENT, self.round, nb, uid, {"parents": list(self.parents), **d}))
                for nb, uid, d in to]

    def set_neighbours(self, neighbours: frozenset[str]) -> None:
        """Fleet membership changed who the neighbours are (at a round boundary): forget the rest."""
        self._enter(Input.SET_NEIGHBOURS)
        self.cfg.neighbours = frozenset(neighbours)
        for gone in set(self.collected) | set(self.ahead) | {s for r in self.future.values() for s in r}:
            if gone not in neighbours:
                self.forget(gone)
        self.collected = {s: self.keep(a) for s, a in self.collected.items()}  # kept again: the rows moved

    # --- messages (legal in every phase) --------------------------------------------------

    def screened(self, result: Envelope | Rejected) -> list[Command]:
        """The header of a message was checked (structure, window, replay, signature)."""
        if isinstance(result, Rejected):
            return self._rejected(result)
        sender = result.sender
        self.arrivals[sender] += 1
        # a neighbour may legitimately send for the current and the buffered future rounds
        if self.arrivals[sender] <= self.cfg.per_neighbour_limit * (1 + self.cfg.max_lead):
            return [Finish(result)]
        self._count("rate_limited")
        if sender in self.flagged:
            return []
        self.flagged.add(sender)
        return [Log(NewEvent(EventKind.RATE_LIMITED, self.round, sender, None,
                             {"limit": self.cfg.per_neighbour_limit}))]

    def offer(self, result: Accepted | Rejected, size: int = 0) -> tuple[OfferKind, list[Command]]:
        """A message's payload was verified: count it, buffer it, or drop it."""
        if isinstance(result, Rejected):
            return OfferKind.REJECTED, self._rejected(result, size)
        sender, rnd = result.sender, result.envelope.round
        if (sender, rnd) in self.seen:  # two copies verified at once: the first one counts
            return OfferKind.REJECTED, self._rejected(Rejected(
                Reason.REPLAY, f"an update from this sender for round {rnd} was already accepted",
                sender, rnd, result.envelope, authenticated=True), size)
        if rnd < self.round:
            return OfferKind.DROPPED, []
        if rnd - self.round > self.cfg.max_lead:  # the verifier's window: never buffered, never "seen"
            self._saw_ahead(sender, rnd)
            return OfferKind.DROPPED, []
        refused = self.exchange.admit(result, self.round)
        if refused is not None:
            reason, detail = refused
            return OfferKind.REJECTED, self.reject(reason, detail, sender, True, result.update_id)
        self.seen.add((sender, rnd))
        sh = result.envelope.signed_header()
        log: list[Command] = [Log(NewEvent(EventKind.RECEIVED, rnd, sender, result.update_id,
                            {"header": sh["header"].hex(), "sig": sh["sig"].hex(), "bytes": size}))]
        if rnd == self.round:
            self.collected[sender] = self.keep(result)
            return OfferKind.ACCEPTED, log
        self._saw_ahead(sender, rnd)
        self.future[rnd][sender] = result
        return OfferKind.BUFFERED, log

    def exchanged(self, sender: str, round_: int, content, now: float = 0.0) -> list[Command]:
        """A parsed message of the rule's own wire (e.g. a key advert or a reveal): the exchange
        checks who sent it and answers with commands (a refusal is a `Reject`)."""
        out: list[Command] = []
        for cmd in self.exchange.message(sender, round_, content, self.round, now):
            if isinstance(cmd, Ahead):
                if cmd.sender in self.cfg.neighbours and cmd.round > self.round:
                    self._saw_ahead(cmd.sender, cmd.round)
            else:
                out.append(cmd)
        return out

    def tick(self, now: float) -> list[Command]:
        """Time passed: the exchange's own deadlines (legal in every phase)."""
        return self.exchange.tick(now)

    def reject(self, reason: str, detail: str, claimed: str | None, authenticated: bool,
               update_id: str | None = None) -> list[Command]:
        """A rejection decided outside the verifier (a membership record, a message of the rule's
        wire): logged like the others."""
        self._count(reason)
        if authenticated:
            return [Log(NewEvent(EventKind.REJECTED, self.round, claimed, update_id,
                                 {"reason": reason, "detail": detail[:300]}))]
        self.strangers.add(reason, self.round, claimed)
        return []

    def forget(self, sender: str) -> None:
        """Drop everything a sender contributed (it was revoked: from now on it never counts)."""
        self.collected.pop(sender, None)
        self.ahead.pop(sender, None)
        self.proofs.pop(sender, None)
        for updates in self.future.values():
            updates.pop(sender, None)

    def _count(self, reason: str) -> None:
        self.rejected[reason] += 1
        self.total_rejected[reason] += 1

    def _rejected(self, result: Rejected, size: int = 0) -> list[Command]:
        self._count(result.reason.value)
        env, sender = result.envelope, result.sender
        out: list[Command] = []
        if (result.reason == Reason.FUTURE_ROUND and env is not None and sender in self.cfg.neighbours
                and result.round is not None and result.round > self.ahead.get(sender, -1)
                and Verifier.authentic(env)):
            self._saw_ahead(sender, result.round)
            self.proofs[sender] = env
        if (result.reason == Reason.STALE_ROUND and env is not None and sender in self.cfg.neighbours
                and result.round is not None and result.round < self.round - 1  # one behind: a race
                and sender not in self.helped and Verifier.authentic(env)):
            self.helped.add(sender)  # far behind (back from a crash?): show it where this peer is
            out.append(Resend(sender))
        if result.authenticated and env is not None:  # the sender is proven: one event each, under its name
            return out + [Log(NewEvent(EventKind.REJECTED, result.round, sender, env.update_id, {
                "reason": result.reason.value, "detail": result.detail[:300], "bytes": size}))]
        self.strangers.add(result.reason.value, self.round, sender)
        return out

    def _saw_ahead(self, sender: str, rnd: int) -> None:
        self.ahead[sender] = max(self.ahead.get(sender, -1), rnd)

    # --- closing the round ------------------------------------------------------------

    def ready(self, now: float) -> bool:
        """Collecting: everyone the exchange waits for (or the quorum) delivered, or the deadline
        passed. Exchanging: the exchange has what it needs, or gave up."""
        if self.phase is Phase.EXCHANGING:
            return self.exchange.ready(now)
        awaited = self.exchange.awaited(self.cfg.neighbours)
        have = sum(1 for s in self.collected if s in awaited)
        q = self.cfg.quorum
        if (q and have >= q) or have >= len(awaited):
            return True
        # the missing ones proved they are two rounds on (one on, their update for this round
        # may still be in verification): they will not send this round, it need not wait for them
        if all(self.ahead.get(s, -1) > self.round + 1 for s in awaited if s not in self.collected):
            return True
        deadline = self._deadline()
        return deadline is not None and now >= deadline

    def _deadline(self) -> float | None:
        if self.deadline_at is None:
            return None
        return self.exchange.collecting_deadline(self.deadline_at)

    def owes(self) -> bool:
        """Other peers' rounds still wait for messages from this one (the exchange says)."""
        return self.exchange.owes()

    def wait_time(self, now: float) -> float:
        """How long the driver may sleep before something is due (an arrival wakes it sooner)."""
        due = [t for t in (self._deadline() if self.phase is Phase.COLLECTING else None, self.exchange.wake_at())
               if t is not None]
        return max(0.0, min(due) - now) if due else self.cfg.deadline  # nothing timed: an arrival wakes it

    def inputs(self) -> list[Accepted]:
        """Accepted updates of this round in a deterministic order (by sender)."""
        return [self.collected[s] for s in sorted(self.collected)]

    def close(self, now: float = 0.0) -> list[Command]:
        """Combine what arrived, skip, or exchange more messages first, as the exchange decides."""
        self._enter(Input.CLOSE)
        out = self.strangers.summary()
        return out + self._closing(Input.CLOSE, self.exchange.close(self.round, self.inputs(), now))

    def exchange_done(self) -> list[Command]:
        """The exchange's messages are in (or its deadline passed): combine or skip."""
        self._enter(Input.EXCHANGE_DONE)
        return self._closing(Input.EXCHANGE_DONE, self.exchange.done(self.round))

    def _closing(self, what: Input, closing: Closing) -> list[Command]:
        if isinstance(closing, SkipRound):
            return self._skip(what, closing.reason)
        if isinstance(closing, Exchanging):
            self._enter(what, Phase.EXCHANGING)
            return list(closing.commands)
        self._enter(what, Phase.CLOSED)
        return [closing]

    def skip(self, reason: str) -> list[Command]:
        """The driver could not combine (the rule or the unmasking failed): keep the own model."""
        return self._skip(Input.SKIP, reason)

    def _skip(self, what: Input, reason: str) -> list[Command]:
        self._enter(what, Phase.IDLE)
        self.pending = None
        self.parents = (self.own_id,) if self.own_id else ()
        return [Skip(self.round, reason),
                Log(NewEvent(EventKind.SKIPPED, self.round, details={"reason": reason,
                                                                     "have": 1 + len(self.collected)})),
                *self._next()]

    def aggregated(self, senders: tuple[str, ...], weights, report: dict) -> list[Command]:
        """The driver combined: remember the inputs as parents; the event waits for the model hash."""
        self._enter(Input.AGGREGATED, Phase.IDLE)
        inputs = [self.own_id] + [self.collected[s].update_id for s in senders]
        self.pending = {"round": self.round, "details": {
            "rule": self.cfg.rule, "f": self.cfg.f, "inputs": inputs, "senders": [self.cfg.peer_id, *senders],
            "weights": None if weights is None else [round(float(w), 6) for w in weights],
            "report": report}}
        self.parents = tuple(i for i in inputs if i is not None)
        return self._next()

    def _next(self) -> list[Command]:
        self._advance(self.round + 1)
        self.persisting.add(self.round)
        return [Persist(self.round)]

    def persist(self) -> list[Command]:
        """Make the current state durable now (a first checkpoint, or at a stop)."""
        self._enter(Input.PERSIST)
        self.persisting.add(self.round)
        return [Persist(self.round)]

    def committed(self, next_round: int, params_hash: str) -> list[Command]:
        """The checkpoint for `next_round` is durable: log the aggregation (with the hash of the
        model it produced) and the checkpoint."""
        self._enter(Input.COMMITTED)
        if next_round not in self.persisting:
            raise RoundProtocolError(self.phase, Input.COMMITTED, f"no checkpoint of round {next_round} was asked for")
        self.persisting.discard(next_round)
        out: list[Command] = []
        if self.pending is not None and self.pending["round"] < next_round:
            p, self.pending = self.pending, None
            out.append(Log(NewEvent(EventKind.AGGREGATED, p["round"], None, params_hash, p["details"])))
        out.append(Log(NewEvent(EventKind.CHECKPOINT, next_round, None, None,
                                {"next_round": next_round, "params_hash": params_hash})))
        return out

    def _advance(self, new_round: int) -> None:
        """Start `new_round`: its buffered updates now count (and are kept)."""
        self.round = new_round
        self.deadline_at = None
        self.exchange.reset(new_round)
        self.collected = {s: self.keep(a) for s, a in self.future.pop(new_round, {}).items()}
        for r in [r for r in self.future if r < new_round]:
            del self.future[r]
        low = new_round - self.cfg.max_lag
        self.seen = {(s, r) for s, r in self.seen if r >= low}
        self.arrivals.clear()
        self.flagged.clear()
        self.helped.clear()
        self.rejected = Counter()
