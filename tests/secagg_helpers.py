"""A whole double-masking round in one process, every message through the wire (encode ->
bytes -> parse), with members that drop out at any phase and hooks for a hostile receiver."""

from __future__ import annotations

import random as pyrandom
from dataclasses import dataclass, field

import torch

from gossip.identity import Identity
from privacy import secagg_wire as wire
from privacy.masking import FixedPoint
from privacy.secagg import Context
from privacy.secagg_ledger import MemberLedger
from privacy.secagg_member import MemberSession
from privacy.secagg_receiver import ReceiverSession

NET = "net-secagg"
IDS = [Identity.from_seed(bytes([i + 1]) * 32) for i in range(12)]
RECEIVER = IDS[0]
MEMBERS = sorted(IDS[1:], key=lambda p: p.peer_id)  # up to 11
BY_ID = {p.peer_id: p for p in IDS}
PHASES = ("advert", "deal", "masked", "consent", "reveal")  # a member dropping "at" a phase sends nothing from it on


def seeded(seed: int):
    """A reproducible random source (tests only: the protocol's default is os.urandom)."""
    return pyrandom.Random(seed).randbytes


def wire_trip(data: bytes, n: int) -> wire.Message:
    assert isinstance(data, bytes) and len(data) <= wire.limit(type(wire.parse(data)), n)
    return wire.parse(data, n)


@dataclass
class Group:
    """Receiver RECEIVER and the first n MEMBERS, for one round."""

    n: int
    round: int = 3
    size: int = 32
    bound: float = 1.0
    threshold: int | None = None
    seed: int | None = None
    ledgers: dict = field(default_factory=dict)
    members: list = field(init=False)

    def __post_init__(self):
        self.members = [p.peer_id for p in MEMBERS[: self.n]]
        self.ctx = Context(NET, RECEIVER.peer_id, self.round, tuple(self.members))
        self.fp = FixedPoint(self.bound, self.n)

        def kw(i: int) -> dict:  # a reproducible random source per party, when a seed is given
            return {} if self.seed is None else {"random": seeded(self.seed * 100 + i)}

        self.rs = ReceiverSession(RECEIVER, self.ctx, size=self.size, threshold=self.threshold, **kw(99))
        for k in self.members:
            self.ledgers.setdefault(k, MemberLedger())
        self.ms = {k: MemberSession(BY_ID[k], self.ctx, self.ledgers[k], **kw(i)) for i, k in enumerate(self.members)}
        self.sent: dict[str, dict[str, bytes]] = {p: {} for p in PHASES}  # phase -> member -> bytes it sent

    def to_member(self, k: str, data: bytes):
        return self.ms[k].receive(wire_trip(data, self.n))

    def to_receiver(self, data: bytes) -> None:
        self.rs.receive(wire_trip(data, self.n))

    def keys(self, drop=()) -> dict[str, bytes]:
        for k in self.members:
            if k not in drop:
                self.sent["advert"][k] = data = self.ms[k].advert()
                self.to_receiver(data)
        return self.rs.advance()

    def deals(self, books: dict[str, bytes], drop=()) -> dict[str, bytes]:
        for k, data in books.items():
            if k not in drop:
                self.sent["deal"][k] = deal = self.to_member(k, data)
                self.to_receiver(deal)
        return self.rs.advance()

    def masked(self, forwards: dict[str, bytes], xs: dict, drop=()) -> dict[str, bytes]:
        for k, data in forwards.items():
            assert self.to_member(k, data) is None
        for k in forwards:
            if k not in drop:
                self.sent["masked"][k] = payload = self.ms[k].mask(xs[k], self.fp)
                self.rs.receive_masked(k, payload)
        return self.rs.advance()

    def consents(self, survivors: dict[str, bytes], drop=()) -> dict[str, bytes]:
        for k, data in survivors.items():
            if k not in drop:
                self.sent["consent"][k] = consent = self.to_member(k, data)
                self.to_receiver(consent)
        return self.rs.advance()

    def reveals(self, proofs: dict[str, bytes], drop=()):
        for k, data in proofs.items():
            if k not in drop:
                self.sent["reveal"][k] = reveal = self.to_member(k, data)
                self.to_receiver(reveal)
        return self.rs.result(self.fp)

    def run(self, xs: dict, drops: dict[str, set] | None = None):
        """The whole round; drops[phase] = members silent from that phase on."""
        drops = drops or {}
        gone: set = set()

        def at(phase):
            gone.update(drops.get(phase, ()))
            return set(gone)

        books = self.keys(at("advert"))
        forwards = self.deals(books, at("deal"))
        survivors = self.masked(forwards, xs, at("masked"))
        proofs = self.consents(survivors, at("consent"))
        return self.reveals(proofs, at("reveal"))


def updates(members, size: int, seed: int, scale: float = 0.6) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(size, generator=gen) * scale for k in members}


def plain_sum(xs: dict, members, bound: float) -> torch.Tensor:
    return sum(xs[k].double().clamp(-bound, bound) for k in members)
