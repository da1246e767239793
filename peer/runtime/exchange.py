"""How a round closes, per rule: the one interface for a rule with its own wire.

The round state machine (peer.runtime.round) collects verified updates; what happens at close
depends on what travels on the wire. `DirectExchange` (every rule that sees each update)
combines own model and the neighbours' rows with the peer's rule, or skips when the rule cannot
tolerate f with the rows that arrived. A rule with its own wire (secure_mean: double masking,
peer.runtime.secagg_exchange) implements the same calls and the round never branches on which
rule it runs. Pure: no clock (every call that needs the time takes `now`), no I/O.

A round's life, as an exchange sees it: `start` (the round begins: e.g. send key adverts),
`message` (the wire's own messages, in any phase), `admit` (a verified update, before it
counts), `trained` (the own model is ready), `awaited` / `collecting_deadline` (when the
collection may end), `close`, then while exchanging `tick` / `wake_at` (its own deadlines),
`ready` and `done`; `reset` when the next round begins. Outside a round `tick` and
`message` go on: sessions for other peers' rounds are driven by their messages.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from aggregation import REGISTRY, parse_rule, tolerates
from gossip.verify import Accepted
from topology.mixing import mh_weights

from .commands import Combine, Command, Reject


@dataclass(frozen=True)
class SkipRound:
    """Keep the own model this round, for `reason`."""

    reason: str


@dataclass(frozen=True)
class Exchanging:
    """Send these commands and wait for the exchange's messages until it is `ready` (its own
    deadlines come through `tick` and `wake_at`)."""

    commands: tuple[Command, ...]


Closing = Command | SkipRound | Exchanging


class Exchange:
    """The rule-specific part of a round (pure); the defaults are those of a rule without a
    wire of its own."""

    def start(self, round_: int, now: float) -> list[Command]:
        """The round begins (after any catch-up)."""
        return []

    def trained(self, round_: int, now: float, transmit: bool) -> list[Command]:
        """The own model of the round is ready (`transmit` False: it must not be released)."""
        return []

    def admit(self, update: Accepted, current: int) -> tuple[str, str] | None:
        """(reason, detail) if a verified update must not count (None: it counts)."""
        return None

    def awaited(self, neighbours: frozenset[str]) -> frozenset[str]:
        """Whose updates the collection waits for (it ends when all of them are in)."""
        return neighbours

    def collecting_deadline(self, deadline_at: float) -> float:
        """When the collection ends at the latest, given the round's own deadline."""
        return deadline_at

    def close(self, round_: int, inputs: Sequence[Accepted], now: float) -> Closing:
        raise NotImplementedError

    def message(self, sender: str, rnd: int, content, current: int, now: float) -> list[Command]:
        """A parsed message of the exchange's own wire (`sender` as it claims, not yet proven):
        the commands it leads to (answers to send, events to log, `Reject` for a refusal)."""
        return [Reject("unexpected_message", f"{type(self).__name__} takes no messages of its own", sender, False)]

    def tick(self, now: float) -> list[Command]:
        """Time passed: what the exchange's own deadlines lead to."""
        return []

    def wake_at(self) -> float | None:
        """When `tick` next has something to do (None: nothing is timed)."""
        return None

    def ready(self, now: float) -> bool:
        """While exchanging: everything the exchange waits for has arrived, or it gave up."""
        return True

    def done(self, round_: int) -> Closing:
        """The exchange is `ready` (only after `Exchanging`)."""
        raise NotImplementedError

    def reset(self, round_: int) -> None:
        """Round `round_` begins (the last one ended or was skipped)."""

    def owes(self) -> bool:
        """Other peers' rounds still wait for messages from this one (a stopping peer answers
        them first, for a bounded time)."""
        return False


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


@dataclass
class DirectExchange(Exchange):
    """Every neighbour's update is a row: combine them with the rule (optionally weighted by
    Metropolis-Hastings, from the degree each neighbour signed into its update)."""

    policy: object  # peer.runtime.round.RoundPolicy: neighbours, rule, f (read live: membership changes it)
    metropolis_hastings: bool = False
    degrees: dict[str, int] = field(default_factory=dict)  # neighbours' degrees from the plan

    def close(self, round_: int, inputs: Sequence[Accepted], now: float) -> Closing:
        rule, f = self.policy.rule, self.policy.f  # type: ignore[attr-defined]
        n = 1 + len(inputs)
        if not fits(rule, n, f):
            return SkipRound(f"kept own model: {rule} cannot tolerate f={f} with {n} rows")
        return Combine(round_, tuple(a.sender for a in inputs), self.weights(inputs))

    def weights(self, inputs: Sequence[Accepted]) -> tuple[float, ...] | None:
        if not self.metropolis_hastings:
            return None
        nbrs = self.policy.neighbours  # type: ignore[attr-defined]
        degrees = {n: self.degrees.get(n) or 1 for n in nbrs}
        for a in inputs:  # the degree a neighbour signed into its update wins over the plan's
            degrees[a.sender] = int(a.envelope.header.get("deg") or degrees.get(a.sender) or 1)
        self_w, nbr = mh_weights(len(nbrs), degrees)
        present = {a.sender for a in inputs}
        missing = sum(w for n, w in nbr.items() if n not in present)  # stays with the own model
        return (self_w + missing, *(nbr[a.sender] for a in inputs))
