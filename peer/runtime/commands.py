"""The commands the round state machine (peer.runtime.round) answers with, for its driver
(peer.runtime.driver) to carry out. Plain data: each says what to do, never how."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from gossip.envelope import Envelope

from ..state.provenance import NewEvent

if TYPE_CHECKING:  # a relay imports membership, and so these commands: never torch
    import torch

    from gossip.verify import Accepted, Rejected


class Command:
    """Base of every command (a rule's exchange may add its own, e.g. secure_mean's masking)."""


@dataclass(frozen=True)
class Log(Command):
    """Append this event to the provenance log (with the next batch; `durable`: now, before the
    next command is carried out)."""

    event: NewEvent
    durable: bool = False


@dataclass(frozen=True)
class JumpTo(Command):
    """Neighbours are ahead: continue from `round` (the driver resets per-round state it keeps)."""

    round: int
    from_round: int


@dataclass(frozen=True)
class Send(Command):
    """Seal the own model for `round` with these parents and send it to every neighbour
    (`transmit` False: seal it for the record only - the privacy budget is spent)."""

    round: int
    parents: tuple[str, ...]
    transmit: bool = True


@dataclass(frozen=True)
class Resend(Command):
    """`peer` sent an update for a round this one has left: send it again the newest update it
    was sent, so it learns (signed) where this peer is and catches up."""

    peer: str


@dataclass(frozen=True)
class Finish(Command):
    """An authenticated header passed every cheap check: verify its payload (maybe on a thread)."""

    envelope: Envelope


@dataclass(frozen=True)
class Screened(Command):
    """A message's header was checked (structure, window, replay, signature): judge it."""

    result: Envelope | Rejected


@dataclass(frozen=True)
class Offer(Command):
    """A message's payload was verified (and opened by the wire): count, buffer or drop it."""

    result: Accepted | Rejected
    size: int


@dataclass(frozen=True)
class Combine(Command):
    """Aggregate row 0 (the own model) and these senders' settled rows, in this order, with the
    peer's rule (`weights`: one per row, or None for the rule's own weighting)."""

    round: int
    senders: tuple[str, ...]
    weights: tuple[float, ...] | None


@dataclass(frozen=True)
class Skip(Command):
    """Keep the own model this round, for `reason`."""

    round: int
    reason: str


@dataclass(frozen=True)
class Persist(Command):
    """Make the state the round `next_round` starts from durable; call `committed` when it is."""

    next_round: int


@dataclass(frozen=True)
class Adopt(Command):
    """The round combined: the model becomes `value`; log the aggregation with these inputs."""

    value: torch.Tensor
    senders: tuple[str, ...]
    weights: tuple[float, ...] | None
    report: dict


@dataclass(frozen=True)
class Refuse(Command):
    """The round could not be combined (the rule or the unmasking failed): keep the own model."""

    reason: str


@dataclass(frozen=True)
class Transmit(Command):
    """Send these bytes to each of `to`, in the background: a small message of the protocol at
    once (tried again for up to `retry_for` seconds while undelivered), or with `round` set an
    update of that round (each neighbour's newest, tried until delivered or replaced)."""

    to: tuple[str, ...]
    data: bytes
    round: int | None = None
    retry_for: float = 0.0


@dataclass(frozen=True)
class Reject(Command):
    """A message of the wire was refused: count and log it like a verifier's rejection."""

    reason: str
    detail: str
    claimed: str | None
    authenticated: bool


@dataclass(frozen=True)
class Exchanged(Command):
    """A parsed message of the rule's own wire (e.g. a key advert): hand it to the round, whose
    exchange checks its sender and signature before any work."""

    sender: str
    round: int
    content: object


@dataclass(frozen=True)
class Ahead(Command):
    """A message of the rule's wire, verified, proves that `sender` is at `round` (the round
    counts it for catch-up; a wire whose updates do not show every neighbour's round says so)."""

    sender: str
    round: int


@dataclass(frozen=True)
class Forget(Command):
    """Drop everything `peer` contributed to the round (it was revoked)."""

    peer: str


@dataclass(frozen=True)
class SetAllowed(Command):
    """Who may connect to the transport now (membership changed)."""

    peers: frozenset[str]


@dataclass(frozen=True)
class Revoked(Command):
    """The network admin revoked this peer (at `epoch`): it stops for good."""

    epoch: int
