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


class Neighbourhood:
    """The pure round state machine of RECEIVER running secure_mean (peer.runtime.secagg_exchange)
    with the first n MEMBERS as its neighbours, played by real member sessions; every message
    through its bytes, masked inputs through a real signed envelope and the verifier. Time is
    whatever the test says (`now`)."""

    SCHEMA = b"s" * 32

    def __init__(self, n: int = 3, size: int = 8, deadline: float = 5.0, threshold: str = "majority",
                 bound: float = 1.0, groups: dict | None = None):
        from gossip.verify import Verifier
        from peer.runtime.round import RoundPolicy, RoundState
        from peer.runtime.secagg_exchange import SecAggExchange
        from privacy.secagg import masked_words

        self.n, self.size, self.bound = n, size, bound
        self.members = sorted(p.peer_id for p in MEMBERS[:n])
        self.policy = RoundPolicy(neighbours=frozenset(self.members), peer_id=RECEIVER.peer_id, rule="secure_mean",
                                  deadline=deadline)
        self.ex = SecAggExchange(self.policy, RECEIVER, NET, groups or {}, size, threshold)
        self.state = RoundState(self.policy, self.ex)
        self.verifier = Verifier(NET, set(BY_ID), self.SCHEMA, size, neighbours=set(self.members),
                                 masked_words=masked_words(size))
        self.ledgers = {k: MemberLedger() for k in self.members}
        self.ms: dict[str, MemberSession] = {}
        self.log: list = []  # every command the state machine answered

    def run(self, cmds: list) -> list:
        self.log += cmds
        return cmds

    def start(self, now: float) -> list:
        r = self.state.round
        ctx = Context(NET, RECEIVER.peer_id, r, tuple(self.members))
        self.ms = {k: MemberSession(BY_ID[k], ctx, self.ledgers[k]) for k in self.members}
        return self.run(self.state.start(now))

    def to_receiver(self, k: str, data: bytes, now: float) -> list:
        return self.run(self.state.exchanged(k, self.state.round, wire.parse(data, self.n), now))

    @staticmethod
    def sends(cmds) -> dict[str, bytes]:
        from peer.runtime.commands import Transmit

        return {to: c.data for c in cmds if isinstance(c, Transmit) for to in c.to}

    def adverts(self, now: float, drop=()) -> dict[str, bytes]:
        out = []
        for k in self.members:
            if k not in drop:
                out += self.to_receiver(k, self.ms[k].advert(), now)
        return self.sends(out)

    def answer(self, msgs: dict[str, bytes], now: float, drop=()) -> dict[str, bytes]:
        """Each member's answer to the receiver's message, delivered; what the receiver sends."""
        out = []
        for k, data in msgs.items():
            if k not in drop:
                reply = self.ms[k].receive(wire.parse(data, self.n))
                if reply is not None:
                    out += self.to_receiver(k, reply, now)
        return self.sends(out)

    def masked(self, k: str, x, now: float):
        """k masks x and the receiver offers the signed envelope: (OfferKind, commands)."""
        from gossip.envelope import seal
        from gossip.verify import Accepted
        from privacy.secagg import masked_words

        payload = self.ms[k].mask(x, FixedPoint(self.bound, self.n))
        data = seal(BY_ID[k], net=NET, round=self.state.round, schema=self.SCHEMA, payload=payload, codec="u32",
                    n=masked_words(self.size), kind="masked").data
        accepted = self.verifier.verify(data, self.state.round)
        assert isinstance(accepted, Accepted), accepted
        kind, cmds = self.state.offer(accepted, len(data))
        self.run(cmds)
        return kind, cmds
