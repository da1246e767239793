"""How a secure_mean round closes (pure): unmask when every member delivered; otherwise ask
the members that delivered for their pair seeds towards the missing ones, wait for those
reveals, and unmask with them - or skip naming who did not answer.

A contribution from a member declared missing that arrives after the request is refused as
late_after_reveal: its masks towards the others are revealed, so unmasking it would expose it.
The peer's side of the wire (masking, opening, answering requests) is peer.runtime.secure_round.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from gossip.verify import Accepted
from privacy.secure import late_reason

from ..state.provenance import EventKind, NewEvent
from .commands import Command, Log
from .exchange import Closing, Exchange, Exchanging, SkipRound


@dataclass(frozen=True)
class RequestReveals(Command):
    """Ask each member of `delivered` for its pair seeds towards `missing`."""

    round: int
    delivered: tuple[str, ...]
    missing: tuple[str, ...]


@dataclass(frozen=True)
class Unmask(Command):
    """Sum the masked contributions of `senders` (removing the masks towards the missing with
    `reveals`: member -> {missing member: seed}) and average with the own model."""

    round: int
    senders: tuple[str, ...]
    reveals: dict = field(default_factory=dict)


class SecureMeanExchange(Exchange):
    def __init__(self, policy, min_senders: int = 2):
        self.policy = policy  # peer.runtime.round.RoundPolicy: neighbours and deadline, read live
        self.min_senders = min_senders
        self.requested: tuple[tuple[str, ...], tuple[str, ...]] | None = None  # (D, M) asked this round
        self.reveals: dict[str, dict[str, bytes]] = {}  # member -> seeds

    def close(self, round_: int, inputs: Sequence[Accepted], now: float) -> Closing:
        delivered = tuple(sorted(a.sender for a in inputs))
        missing = tuple(sorted(set(self.policy.neighbours) - set(delivered)))
        if len(delivered) < self.min_senders:
            return SkipRound(f"kept own model: secure_mean unmasks {self.min_senders} contributions or more, "
                             f"{len(delivered)} arrived")
        if not missing:
            return Unmask(round_, delivered, {})
        self.requested, self.reveals = (delivered, missing), {}
        return Exchanging((RequestReveals(round_, delivered, missing),
                           Log(NewEvent(EventKind.REVEAL_REQUESTED, round_, details={
                               "delivered": list(delivered), "missing": list(missing)}))),
                          now + self.policy.deadline)

    def refuses(self, sender: str, rnd: int, current: int) -> tuple[str, str] | None:
        reason = late_reason(sender, self.requested[1]) if rnd == current and self.requested else None
        if reason is None:
            return None
        return reason, "masked contribution arrived after the reveal request declared this sender missing"

    def message(self, sender: str, rnd: int, content, current: int, exchanging: bool) -> tuple[str, str] | None:
        """A verified reveal (`content`: {missing member: seed}) addressed to this peer."""
        if not exchanging or self.requested is None or rnd != current or sender not in self.requested[0]:
            return "unexpected_reveal", f"no reveal was asked of this sender for round {rnd}"
        if sender in self.reveals:
            return "unexpected_reveal", f"a second reveal for round {rnd}"
        self.reveals[sender] = dict(content)
        return None

    def ready(self) -> bool:
        return self.requested is not None and set(self.requested[0]) <= set(self.reveals)

    def done(self, round_: int) -> Closing:
        assert self.requested is not None
        delivered, _ = self.requested
        silent = [j for j in delivered if j not in self.reveals]
        if silent:
            return SkipRound("kept own model: secure_mean: no reveal from " + ", ".join(j[:16] for j in silent))
        return Unmask(round_, delivered, dict(self.reveals))

    def reset(self) -> None:
        self.requested, self.reveals = None, {}
