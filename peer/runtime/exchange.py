"""How a round closes, per rule: the one interface for a rule with its own wire.

The round state machine (peer.runtime.round) collects verified updates; what happens at close
depends on what travels on the wire. `DirectExchange` (every rule that sees each update)
combines own model and the neighbours' rows with the peer's rule, or skips when the rule cannot
tolerate f with the rows that arrived. A rule with its own wire (secure_mean: masked
contributions and reveals, peer.runtime.secure_exchange) implements the same five calls and the
round never branches on which rule it runs. Pure: no clock, no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from aggregation import REGISTRY, parse_rule, tolerates
from gossip.verify import Accepted
from topology.mixing import mh_weights

from .commands import Combine, Command


@dataclass(frozen=True)
class SkipRound:
    """Keep the own model this round, for `reason`."""

    reason: str


@dataclass(frozen=True)
class Exchanging:
    """Send these commands and wait for the exchange's messages until `deadline_at`."""

    commands: tuple[Command, ...]
    deadline_at: float


Closing = Command | SkipRound | Exchanging


class Exchange:
    """The rule-specific part of closing a round (pure). Messages of the exchange's own wire
    reach `message`; `refuses` may turn away an update that may no longer be used."""

    def close(self, round_: int, inputs: Sequence[Accepted], now: float) -> Closing:
        raise NotImplementedError

    def done(self, round_: int) -> Closing:
        """The exchange's messages are in or its deadline passed (only after `Exchanging`)."""
        raise NotImplementedError

    def ready(self) -> bool:
        """While exchanging: everything the exchange waits for has arrived."""
        return True

    def refuses(self, sender: str, rnd: int, current: int) -> tuple[str, str] | None:
        """(reason, detail) if a verified update of `sender` for `rnd` must not count."""
        return None

    def message(self, sender: str, rnd: int, content, current: int, exchanging: bool) -> tuple[str, str] | None:
        """A verified message of the exchange's own wire: None if kept, else (reason, detail)."""
        return "unexpected_message", f"{type(self).__name__} takes no messages of its own"

    def reset(self) -> None:
        """A new round begins."""


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
