"""Every decision of a round, without I/O (sans-I/O, the way h11 is built).

`RoundState` is fed inputs - the time, "training finished", a screened or verified message,
"aggregated" - and answers with typed commands (`JumpTo`, `Send`, `Finish`, `Aggregate`,
`Skip`, `Checkpoint`, `Log`) that the asyncio driver (peer.runtime.driver) carries out against the
transport, the learner, aggregation, the provenance log and the checkpoint writer. It has no
clock (every call takes `now`), no asyncio, no sockets, so each decision is tested with a
fake clock.

A round: start (catch up if f + 1 neighbours are ahead) -> train -> `trained(now)` sends and
opens the collection window -> messages are screened (header + signature), rate-limited per
authenticated sender, finished (payload) and counted -> `ready(now)` when every neighbour (or
the quorum) delivered or the deadline passed -> `close(now)` aggregates or skips ->
`committed(...)` logs the aggregation and checkpoint once the checkpoint is durable.

secure_mean (privacy.secure): the collected messages are masked contributions, and `close`
answers `Unmask` when every neighbour delivered; when some did not (and at least
`min_senders` did) it enters REVEALING: `RequestReveals` to the members that delivered,
`revealed(...)` for each answer, `reveals_ready(now)` when all answered or the deadline
(round.deadline again) passed, then `reveals_done()` -> `Unmask` with the reveals, or `Skip`
naming who did not answer. A contribution from a member declared missing that arrives after
the request is rejected as late_after_reveal (unmasking it would expose it alone).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from aggregation import REGISTRY, parse_rule, tolerates
from gossip.envelope import Envelope
from gossip.verify import Accepted, Reason, Rejected, Verifier
from privacy.secure import late_reason
from topology.mixing import mh_weights

from ..state.provenance import EventKind, NewEvent

CLAIMED_SAMPLE = 8  # distinct claimed senders kept per summarised rejection


def rule_params(rule: str, params: dict) -> dict:
    """The rule's parameters, with `own = 0` where the rule takes one: row 0 is always the
    aggregating node's own model (in a peer and in the simulator)."""
    out = dict(params)
    if "own" in REGISTRY[parse_rule(rule)[1]].params:
        out.setdefault("own", 0)
    return out


def fits(rule: str, n: int, f: int) -> bool:
    """Whether aggregate() will take n rows: the rule's requirement for f (mean ignores f, so
    that sweeps can compare it; tolerates() calls it unfit for any f > 0)."""
    return tolerates(rule, n, f if REGISTRY[parse_rule(rule)[1]].robust else 0)


# --- commands (outputs) --------------------------------------------------------------


@dataclass(frozen=True)
class Log:
    """Append this event to the provenance log (with the next batch)."""

    event: NewEvent


@dataclass(frozen=True)
class JumpTo:
    """Neighbours are ahead: continue from `round` (the driver resets per-round state it keeps)."""

    round: int
    from_round: int


@dataclass(frozen=True)
class Send:
    """Seal the own model for `round` with these parents and send it to every neighbour
    (`transmit` False: seal it for the record only - the privacy budget is spent)."""

    round: int
    parents: tuple[str, ...]
    transmit: bool = True


@dataclass(frozen=True)
class Finish:
    """An authenticated header passed every cheap check: verify its payload (maybe on a thread)."""

    envelope: Envelope


@dataclass(frozen=True)
class Aggregate:
    """Aggregate row 0 (own model) and these senders' settled rows, in this order."""

    round: int
    senders: tuple[str, ...]
    weights: tuple[float, ...] | None


@dataclass(frozen=True)
class Skip:
    """Keep the own model this round, for `reason`."""

    round: int
    reason: str


@dataclass(frozen=True)
class Checkpoint:
    """Make the state the next round starts from durable; call `committed` when it is."""

    next_round: int


@dataclass(frozen=True)
class RequestReveals:
    """secure_mean: ask each member of `delivered` for its pair seeds towards `missing`."""

    round: int
    delivered: tuple[str, ...]
    missing: tuple[str, ...]


@dataclass(frozen=True)
class Unmask:
    """secure_mean: sum the masked contributions of `senders` (removing the masks towards the
    missing with `reveals`: member -> {missing member: seed}) and average with the own model."""

    round: int
    senders: tuple[str, ...]
    reveals: dict = field(default_factory=dict)


Command = Log | JumpTo | Send | Finish | Aggregate | Skip | Checkpoint | RequestReveals | Unmask


class OfferKind(StrEnum):
    ACCEPTED = "accepted"  # counts for the current round
    BUFFERED = "buffered"  # counts when its (future) round begins
    DROPPED = "dropped"  # valid but useless (a past round, beyond the buffer)
    REJECTED = "rejected"


class Phase(StrEnum):
    IDLE = "idle"  # between rounds
    TRAINING = "training"
    COLLECTING = "collecting"
    REVEALING = "revealing"  # secure_mean: waiting for the delivered members' reveals
    CLOSED = "closed"  # aggregated or skipped; waiting for the checkpoint


@dataclass
class RoundConfig:
    """What the state machine needs to know of the peer's configuration."""

    neighbours: frozenset[str]
    rule: str = "median"
    f: int = 0
    deadline: float = 10.0
    quorum: int = 0  # 0: every neighbour
    per_neighbour_limit: int = 4  # messages per authenticated sender per round (x buffered rounds)
    max_lead: int = 2  # rounds ahead that are buffered (and accepted by the verifier)
    max_lag: int = 0
    metropolis_hastings: bool = False
    degrees: dict[str, int] = field(default_factory=dict)  # neighbours' degrees from the plan
    peer_id: str = ""  # this peer (row 0 of every aggregation)
    min_senders: int = 2  # secure_mean: fewest masked contributions it unmasks

    @property
    def secure(self) -> bool:
        return self.rule == "secure_mean"


@dataclass
class RoundState:
    cfg: RoundConfig
    round: int = 0
    phase: Phase = Phase.IDLE
    parents: tuple[str, ...] = ()  # update ids aggregated into the current model
    deadline_at: float | None = None
    collected: dict[str, Accepted] = field(default_factory=dict)
    future: dict[int, dict[str, Accepted]] = field(default_factory=lambda: defaultdict(dict))
    ahead: dict[str, int] = field(default_factory=dict)  # authenticated round claims of neighbours
    seen: set[tuple[str, int]] = field(default_factory=set)  # replay window: (sender, round) accepted
    arrivals: Counter = field(default_factory=Counter)
    flagged: set[str] = field(default_factory=set)
    rejected: Counter = field(default_factory=Counter)  # this round, by reason (all senders)
    total_rejected: Counter = field(default_factory=Counter)  # since the peer started
    strangers: dict[tuple[str, int], list] = field(default_factory=dict)  # (reason, round) -> [count, claimed]
    own_id: str | None = None
    pending: dict | None = None  # the aggregated event, completed with the model hash when durable
    requested: tuple[tuple[str, ...], tuple[str, ...]] | None = None  # secure_mean: (D, M) asked this round
    reveals: dict[str, dict[str, bytes]] = field(default_factory=dict)  # secure_mean: member -> seeds
    # applied to an update when it starts to count (on arrival, or when its buffered round
    # begins): the peer copies it into its aggregation stack and lets the message go
    keep: Callable[[Accepted], Accepted] = lambda update: update  # noqa: E731

    # --- lifecycle ---------------------------------------------------------------------

    def resume(self, round_: int, parents: list[str], seen: list) -> None:
        """Continue from a verified checkpoint."""
        self.round = round_
        self.parents = tuple(parents)
        self.seen = {(str(s), int(r)) for s, r in seen}

    def start(self) -> list[Command]:
        """Begin a round: catch up with the neighbours first if f + 1 of them are ahead."""
        out: list[Command] = []
        target = self.catch_up_target()
        if target is not None:
            out.append(JumpTo(target, self.round))
            self._advance(target)
        self.phase = Phase.TRAINING
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
        self.phase = Phase.COLLECTING
        self.deadline_at = now + self.cfg.deadline
        return [Log(NewEvent(EventKind.TRAINED, self.round, details=details)),
                Send(self.round, self.parents, transmit)]

    def sent(self, update_id: str, to: list[tuple[str, str, dict]]) -> list[Command]:
        """The own update was sealed (`update_id`); `to`: (neighbour, id sent, details) each, logged
        before transmission so a crash never leaves a receipt without a send."""
        self.own_id = update_id
        return [Log(NewEvent(EventKind.SENT, self.round, nb, uid, {"parents": list(self.parents), **d}))
                for nb, uid, d in to]

    # --- messages ------------------------------------------------------------------------

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
        late = late_reason(sender, self.requested[1]) if rnd == self.round and self.requested else None
        if late:
            return OfferKind.REJECTED, self.reject(late, "masked contribution arrived after the reveal request "
                                                         "declared this sender missing", sender, True,
                                                   result.update_id)
        self.seen.add((sender, rnd))
        sh = result.envelope.signed_header()
        log = [Log(NewEvent(EventKind.RECEIVED, rnd, sender, result.update_id,
                            {"header": sh["header"].hex(), "sig": sh["sig"].hex(), "bytes": size}))]
        if rnd == self.round:
            self.collected[sender] = self.keep(result)
            return OfferKind.ACCEPTED, log
        self._saw_ahead(sender, rnd)
        if rnd - self.round <= self.cfg.max_lead:
            self.future[rnd][sender] = result
            return OfferKind.BUFFERED, log
        return OfferKind.DROPPED, []

    def reject(self, reason: str, detail: str, claimed: str | None, authenticated: bool,
               update_id: str | None = None) -> list[Command]:
        """A rejection decided outside the verifier (a membership record, a secure-aggregation
        message): logged like the others."""
        self._count(reason)
        if authenticated:
            return [Log(NewEvent(EventKind.REJECTED, self.round, claimed, update_id,
                                 {"reason": reason, "detail": detail[:300]}))]
        self._summarise_later(reason, claimed)
        return []

    def set_neighbours(self, neighbours: frozenset[str]) -> None:
        """Fleet membership changed who the neighbours are (at a round boundary): forget the rest."""
        self.cfg.neighbours = frozenset(neighbours)
        for gone in set(self.collected) | set(self.ahead) | {s for r in self.future.values() for s in r}:
            if gone not in neighbours:
                self.forget(gone)

    def forget(self, sender: str) -> None:
        """Drop everything a sender contributed (it was revoked: from now on it never counts)."""
        self.collected.pop(sender, None)
        self.ahead.pop(sender, None)
        for updates in self.future.values():
            updates.pop(sender, None)

    def _count(self, reason: str) -> None:
        self.rejected[reason] += 1
        self.total_rejected[reason] += 1

    def _rejected(self, result: Rejected, size: int = 0) -> list[Command]:
        self._count(result.reason.value)
        env = result.envelope
        if (result.reason == Reason.FUTURE_ROUND and env is not None and result.sender in self.cfg.neighbours
                and result.round > self.ahead.get(result.sender, -1) and Verifier.authentic(env)):
            self._saw_ahead(result.sender, result.round)
        if result.authenticated:  # the sender is proven: one event each, under its name
            return [Log(NewEvent(EventKind.REJECTED, result.round, result.sender, env.update_id, {
                "reason": result.reason.value, "detail": result.detail[:300], "bytes": size}))]
        self._summarise_later(result.reason.value, result.sender)
        return []

    def _summarise_later(self, reason: str, claimed: str | None) -> None:
        """Anyone can claim anything: counted per reason and round, logged once at close."""
        entry = self.strangers.setdefault((reason, self.round), [0, []])
        entry[0] += 1
        if claimed is not None and claimed not in entry[1] and len(entry[1]) < CLAIMED_SAMPLE:
            entry[1].append(claimed[:64])

    def _saw_ahead(self, sender: str, rnd: int) -> None:
        self.ahead[sender] = max(self.ahead.get(sender, -1), rnd)

    # --- closing the round ------------------------------------------------------------

    def ready(self, now: float) -> bool:
        """Every neighbour (or the quorum) delivered, or the deadline passed."""
        have = len(self.collected)
        q = self.cfg.quorum
        if (q and have >= q) or have >= len(self.cfg.neighbours):
            return True
        return self.deadline_at is not None and now >= self.deadline_at

    def wait_time(self, now: float) -> float:
        return 0.0 if self.deadline_at is None else max(0.0, self.deadline_at - now)

    def inputs(self) -> list[Accepted]:
        """Accepted updates of this round in a deterministic order (by sender)."""
        return [self.collected[s] for s in sorted(self.collected)]

    def close(self, now: float = 0.0) -> list[Command]:
        """Aggregate what arrived, or skip with a reason when the rule cannot use it."""
        self.phase = Phase.CLOSED
        out = self._summarise_strangers()
        if self.cfg.secure:
            return out + self._close_secure(now)
        inputs = self.inputs()
        n = 1 + len(inputs)
        if not fits(self.cfg.rule, n, self.cfg.f):
            return out + self.skip(f"kept own model: {self.cfg.rule} cannot tolerate f={self.cfg.f} "
                                   f"with {n} rows")
        senders = tuple(a.sender for a in inputs)
        return out + [Aggregate(self.round, senders, self._weights(inputs))]

    def _close_secure(self, now: float) -> list[Command]:
        delivered = tuple(sorted(self.collected))
        missing = tuple(sorted(self.cfg.neighbours - set(delivered)))
        if len(delivered) < self.cfg.min_senders:
            return self.skip(f"kept own model: secure_mean unmasks {self.cfg.min_senders} contributions or more, "
                             f"{len(delivered)} arrived")
        if not missing:
            return [Unmask(self.round, delivered, {})]
        self.phase, self.requested, self.reveals = Phase.REVEALING, (delivered, missing), {}
        self.deadline_at = now + self.cfg.deadline
        return [RequestReveals(self.round, delivered, missing),
                Log(NewEvent(EventKind.REVEAL_REQUESTED, self.round, details={
                    "delivered": list(delivered), "missing": list(missing)}))]

    def revealed(self, sender: str, round_: int, seeds: dict[str, bytes], digest: str = "") -> list[Command]:
        """A verified reveal addressed to this peer: kept if it answers this round's request."""
        if self.phase is not Phase.REVEALING or round_ != self.round or sender not in self.requested[0]:
            return self.reject("unexpected_reveal", f"no reveal was asked of this sender for round {round_}",
                               sender, True)
        if sender in self.reveals:
            return self.reject("unexpected_reveal", f"a second reveal for round {round_}", sender, True)
        self.reveals[sender] = dict(seeds)
        return []

    def reveals_ready(self, now: float) -> bool:
        """Every member asked has answered, or the reveal deadline passed."""
        if self.phase is not Phase.REVEALING:
            return True
        return set(self.requested[0]) <= set(self.reveals) or (self.deadline_at is not None and now >= self.deadline_at)

    def reveals_done(self) -> list[Command]:
        """Unmask with the reveals, or keep the own model naming the members that did not answer."""
        delivered, _ = self.requested
        silent = [j for j in delivered if j not in self.reveals]
        self.phase = Phase.CLOSED
        if silent:
            return self.skip("kept own model: secure_mean: no reveal from " + ", ".join(j[:16] for j in silent))
        return [Unmask(self.round, delivered, dict(self.reveals))]

    def _summarise_strangers(self) -> list[Command]:
        out = [Log(NewEvent(EventKind.REJECTED, rnd, None, None, {
            "reason": reason, "count": count, "claimed": claimed, "authenticated": False}))
            for (reason, rnd), (count, claimed) in sorted(self.strangers.items())]
        self.strangers.clear()
        return out

    def _weights(self, inputs: list[Accepted]) -> tuple[float, ...] | None:
        if not self.cfg.metropolis_hastings:
            return None
        nbrs = self.cfg.neighbours
        degrees = {n: self.cfg.degrees.get(n) or 1 for n in nbrs}
        for a in inputs:  # the degree a neighbour signed into its update wins over the plan's
            degrees[a.sender] = int(a.envelope.header.get("deg") or degrees.get(a.sender) or 1)
        self_w, nbr = mh_weights(len(nbrs), degrees)
        present = {a.sender for a in inputs}
        missing = sum(w for n, w in nbr.items() if n not in present)  # stays with the own model
        return (self_w + missing, *(nbr[a.sender] for a in inputs))

    def skip(self, reason: str) -> list[Command]:
        """Keep the own model (the rule could not aggregate, or the driver's aggregation failed)."""
        self.phase = Phase.CLOSED
        self.pending = None
        self.parents = (self.own_id,) if self.own_id else ()
        return [Skip(self.round, reason),
                Log(NewEvent(EventKind.SKIPPED, self.round, details={"reason": reason,
                                                                     "have": 1 + len(self.collected)})),
                *self._next()]

    def aggregated(self, senders: tuple[str, ...], weights, report: dict) -> list[Command]:
        """The driver aggregated: remember the inputs as parents; the event waits for the model hash."""
        inputs = [self.own_id] + [self.collected[s].update_id for s in senders]
        self.pending = {"round": self.round, "details": {
            "rule": self.cfg.rule, "f": self.cfg.f, "inputs": inputs, "senders": [self.cfg.peer_id, *senders],
            "weights": None if weights is None else [round(float(w), 6) for w in weights],
            "report": report}}
        self.parents = tuple(inputs)
        return self._next()

    def _next(self) -> list[Command]:
        self._advance(self.round + 1)
        self.phase = Phase.IDLE
        return [Checkpoint(self.round)]

    def committed(self, next_round: int, params_hash: str) -> list[Command]:
        """The checkpoint for `next_round` is durable: log the aggregation (with the hash of the
        model it produced) and the checkpoint."""
        out: list[Command] = []
        if self.pending is not None:
            p, self.pending = self.pending, None
            out.append(Log(NewEvent(EventKind.AGGREGATED, p["round"], None, params_hash, p["details"])))
        out.append(Log(NewEvent(EventKind.CHECKPOINT, next_round, None, None,
                                {"next_round": next_round, "params_hash": params_hash})))
        return out

    def _advance(self, new_round: int) -> None:
        """Start `new_round`: its buffered updates now count (and are kept)."""
        self.round = new_round
        self.deadline_at = None
        self.requested, self.reveals = None, {}
        self.collected = {s: self.keep(a) for s, a in self.future.pop(new_round, {}).items()}
        for r in [r for r in self.future if r < new_round]:
            del self.future[r]
        low = new_round - self.cfg.max_lag
        self.seen = {(s, r) for s, r in self.seen if r >= low}
        self.arrivals.clear()
        self.flagged.clear()
        self.rejected = Counter()
