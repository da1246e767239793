"""The round's protocol state, without I/O (the way h11 is sans-I/O): what has arrived,
what is buffered for later rounds, who is ahead, who floods. peer.node drives it with
real time and a real transport; tests drive it directly."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from gossip.verify import Accepted, Reason, Rejected


@dataclass
class Offered:
    """What happened to one incoming message (for the provenance log and metrics)."""

    kind: str  # "accepted" | "buffered" | "rejected" | "dropped"
    result: Accepted | Rejected | None = None
    note: str = ""


@dataclass
class RoundLogic:
    neighbours: frozenset[str]
    round: int = 0
    per_neighbour_limit: int = 4
    max_buffered_rounds: int = 2
    collected: dict[str, Accepted] = field(default_factory=dict)
    future: dict[int, dict[str, Accepted]] = field(default_factory=lambda: defaultdict(dict))
    ahead: dict[str, int] = field(default_factory=dict)
    arrivals: Counter = field(default_factory=Counter)
    flagged: set[str] = field(default_factory=set)
    # applied to an update when it starts to count for the current round (on arrival, or
    # when its buffered round begins); the peer copies it into its aggregation stack
    keep: Callable[[Accepted], Accepted] = lambda update: update  # noqa: E731

    def admit(self, hint: str | None) -> tuple[bool, bool]:
        """Rate limit per transport sender per round: (admit?, first refusal this round?)."""
        key = hint or "?"
        self.arrivals[key] += 1
        # a neighbour may legitimately send for the current and the buffered future rounds
        if self.arrivals[key] <= self.per_neighbour_limit * (1 + self.max_buffered_rounds):
            return True, False
        first = key not in self.flagged
        self.flagged.add(key)
        return False, first

    def offer(self, result: Accepted | Rejected) -> Offered:
        if isinstance(result, Rejected):
            env = result.envelope
            if (result.reason == Reason.FUTURE_ROUND and env is not None and result.sender in self.neighbours
                    and _authentic(env)):
                self.ahead[result.sender] = max(self.ahead.get(result.sender, -1), result.round)
            return Offered("rejected", result)
        sender, rnd = result.sender, result.envelope.round
        if rnd == self.round:
            self.collected[sender] = self.keep(result)
            return Offered("accepted", result)
        if rnd > self.round:
            self.ahead[sender] = max(self.ahead.get(sender, -1), rnd)
            if rnd - self.round <= self.max_buffered_rounds:
                self.future[rnd][sender] = result
                return Offered("buffered", result)
            return Offered("dropped", result, "beyond the buffered rounds")
        return Offered("dropped", result, "for a past round")

    def complete(self, quorum: int = 0) -> bool:
        have = len(self.collected)
        if quorum and have >= quorum:
            return True
        return have >= len(self.neighbours)

    def catch_up_target(self, f: int) -> int | None:
        """The round to jump to when neighbours are ahead: the (f+1)-th highest round seen, so
        f Byzantine neighbours alone cannot drag a peer forward."""
        rounds = sorted((r for s, r in self.ahead.items() if s in self.neighbours), reverse=True)
        if len(rounds) <= f:
            return None
        target = rounds[f]
        return target if target > self.round else None

    def advance(self, new_round: int) -> None:
        """Start `new_round`: its buffered updates now count (and are kept)."""
        self.round = new_round
        self.collected = {s: self.keep(a) for s, a in self.future.pop(new_round, {}).items()}
        for r in [r for r in self.future if r < new_round]:
            del self.future[r]
        self.arrivals.clear()
        self.flagged.clear()

    def inputs(self) -> list[Accepted]:
        """Accepted updates of this round in a deterministic order (by sender)."""
        return [self.collected[s] for s in sorted(self.collected)]


def _authentic(env) -> bool:
    from gossip.verify import Verifier

    return Verifier.authentic(env)
