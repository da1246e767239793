"""secure_mean in a peer: what privacy.secure computes, wired to the plan's keys and groups
(`SecureAggregation`), and the driver's half of its wire (`SecureMeanWire`).

A peer whose rule is secure_mean sends each neighbour i its own masked contribution (kind
"masked", codec u32, masked for i's group G_i = N(i) as the plan lists it), opens the masked
contributions it receives (the context tag must name this peer, the round and the network),
answers reveal requests at most once per (receiver, round) - and only for a round in which it
really sent that receiver a contribution, so a request for a future round reveals nothing - and
unmasks the sum of its own neighbours. Every answered request is a `revealed` provenance event,
written before the reveal leaves and read back at start, so a restart never answers twice.

The clip bound (aggregation.params.bound, default 4.0) must hold the model's parameters:
values beyond it are clipped before masking (the stack rule aggregation.secure does the same,
so the simulator agrees). The fixed-point step is bound * |G| / 2^31 (4.0 and 8 members:
about 1.5e-8 per value), so a larger bound costs precision, never correctness.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

import torch

from gossip.envelope import Sealed, seal, seal_update
from gossip.identity import Identity
from gossip.trust import TrustList
from gossip.verify import Accepted
from privacy.secure import (
    Contribution,
    FixedPoint,
    MaskError,
    agreement_key,
    check_binding,
    masked_contribution,
    may_reveal,
    public_bytes,
    reveal_seeds,
    unmask,
)
from privacy.secure_wire import (
    RevealRequest,
    SecureWireError,
    contribution_bytes,
    contribution_from_bytes,
    contribution_words,
    encode_request,
    encode_reveal,
    kind_of,
    parse_request,
    parse_reveal,
    verify,
)

from ..config.settings import SECURE_BOUND, SECURE_MIN_SENDERS, Neighbour
from ..errors import ConfigError
from ..state.provenance import EventKind, NewEvent
from .commands import Adopt, Command, Exchanged, Log, Refuse, Reject, Transmit
from .exchange import Exchange
from .secure_exchange import RequestReveals, SecureMeanExchange, Unmask
from .wire import Outgoing, Wire

log = logging.getLogger("gossipfl.peer")

MASKED_KIND = "masked"


@dataclass
class Masked(Accepted):
    """An accepted masked contribution, opened (its commitments and words, a view on the message)."""

    contribution: Contribution | None = None


def check_trust_keys(trust: TrustList, where) -> None:
    """Every X25519 key in the trust list is signed by the PeerId it is listed under (once, at load)."""
    for pid, (x25519, binding) in trust.keys.items():
        if not check_binding(pid, trust.network, x25519, binding):
            name = trust.names.get(pid)
            raise ConfigError(f"trust list {where}: the x25519 key of {pid}{f' ({name})' if name else ''} is not "
                              f"bound to it in network {trust.network!r} (its binding signature does not verify)")


class SecureAggregation:
    """One peer's side of secure aggregation: keys, groups, masking, reveals, unmasking."""

    def __init__(self, identity: Identity, network: str, neighbours: list[Neighbour], trust: TrustList,
                 n_params: int, params: Mapping):
        self.identity, self.me, self.network = identity, identity.peer_id, network
        self.n_params = n_params
        self.bound = float(params.get("bound", SECURE_BOUND))
        self.min_senders = int(params.get("min_senders", SECURE_MIN_SENDERS))
        self.key = agreement_key(identity)
        self.pubs = {pid: x for pid, (x, _) in trust.keys.items()}
        self.groups = {nb.id: tuple(nb.group or ()) for nb in neighbours}  # receiver -> its group
        self.answered: set[tuple[str, int]] = set()  # (receiver, round) pairs revealed to, restored from the log
        self.sent_to: set[tuple[str, int]] = set()  # (receiver, round) this process sent a contribution to
        self._check(trust)

    def _check(self, trust: TrustList) -> None:
        mine = self.pubs.get(self.me)
        if mine is None or mine != public_bytes(self.key):
            raise ConfigError(f"trust list: no x25519 key for this peer ({self.me}) or not the one its key derives; "
                              "secure_mean needs every peer's (write the plan again with `topology plan`)")
        for receiver, group in self.groups.items():
            if self.me not in group or receiver in group or len(group) < 2:
                raise ConfigError(f"network.neighbours: the group of {receiver} must list this peer, not the "
                                  f"neighbour itself, and at least 2 members; got {len(group)} members")
            unknown = [k for k in group if k not in self.pubs]
            if unknown:
                raise ConfigError(f"trust list: no x25519 key for {unknown[0]} (a member of {receiver}'s group)")

    def words(self, group_size: int) -> int:
        """The envelope's n of a masked contribution to a receiver with this group size."""
        return contribution_words(self.n_params, group_size)

    def fixed_point(self, group_size: int) -> FixedPoint:
        return FixedPoint(self.bound, group_size)

    # --- sending ---------------------------------------------------------------------

    def seal_for(self, own: torch.Tensor, receiver: str, round_: int, **fields) -> Sealed:
        """The own model masked for `receiver`'s group in `round_`, sealed as a signed envelope
        (CPU work: a ChaCha20 stream per other member; callers run it off the event loop)."""
        group = self.groups[receiver]
        c = masked_contribution(own, self.me, receiver, group, round_, self.network, self.key, self.pubs,
                                self.fixed_point(len(group)))
        payload = contribution_bytes(c, net=self.network, sender=self.me, receiver=receiver, round=round_)
        self.sent_to.add((receiver, round_))
        return seal(self.identity, net=self.network, round=round_, payload=payload, codec="u32",
                    n=self.words(len(group)), kind=MASKED_KIND, **fields)

    # --- receiving -------------------------------------------------------------------

    def open(self, accepted: Accepted, my_group: Iterable[str]) -> Masked:
        """The contribution in a verified masked envelope; SecureWireError ("wrong_context") if
        it was made for another receiver, round or network."""
        env = accepted.envelope
        c = contribution_from_bytes(env.payload, net=self.network, sender=env.sender, receiver=self.me,
                                    round=env.round, group=my_group)
        return Masked(env, accepted.params, c)

    def answer(self, req: RevealRequest) -> tuple[bytes | None, str, list[NewEvent]]:
        """A verified request from receiver req.sender: (the signed reveal, "ok", the event to log
        before sending it) or (None, why it is refused, [])."""
        group = self.groups.get(req.sender)
        if group is None:
            return None, "not_a_member", []
        ok, why = may_reveal(req, self.me, group, self.answered, self.min_senders)
        if not ok:
            return None, why, []
        if (req.sender, req.round) not in self.sent_to:
            return None, "not_sent", []  # no contribution of that round went there (yet): nothing to unmask
        seeds = reveal_seeds(self.me, req.sender, req.round, req.missing, self.network, self.key, self.pubs)
        data = encode_reveal(self.identity, net=self.network, to=req.sender, round=req.round, seeds=seeds)
        self.answered.add((req.sender, req.round))
        event = NewEvent(EventKind.REVEALED, req.round, req.sender, None, {
            "missing": list(req.missing), "delivered": list(req.delivered), "request": req.digest.hex(),
            "seeds": len(seeds)})
        return data, "ok", [event]

    def restore(self, events) -> None:
        """The (receiver, round) pairs answered before a restart, from the log's `revealed` events."""
        self.answered |= {(e.counterpart, int(e.round)) for e in events
                          if e.counterpart is not None and e.round is not None}

    def unmask(self, contributions: Mapping[str, Contribution], reveals: Mapping[str, Mapping[str, bytes]],
               group: Collection[str]) -> torch.Tensor:
        """The float32 sum of the delivered members' updates (MaskError names who when it fails)."""
        return unmask(contributions, reveals, group, self.fixed_point(len(group)), self.min_senders)

    def average(self, own: torch.Tensor, total: torch.Tensor, senders: int) -> torch.Tensor:
        """(clip(own) + sum over the senders) / (1 + senders): the own model clipped like theirs."""
        return (own.clamp(-self.bound, self.bound) + total) / (1 + senders)


def sum_hash(total: torch.Tensor) -> str:
    """SHA-256 of the unmasked sum's float32 bytes (little-endian): what the log records."""
    return hashlib.sha256(total.detach().to(torch.float32).contiguous().numpy().astype("<f4").tobytes()).hexdigest()


class SecureMeanWire(Wire):
    """secure_mean's wire: a masked contribution per neighbour (the own model sealed for the
    record only), reveal requests and reveals, combined by unmasking the sum."""

    masked = True

    def __init__(self, secure: SecureAggregation, identity: Identity, network: str, off_loop):
        self.secure, self.identity, self.network, self.off_loop = secure, identity, network, off_loop

    def exchange(self, policy) -> Exchange:
        return SecureMeanExchange(policy, self.secure.min_senders)

    def words(self, group_size: int) -> int:
        return self.secure.words(group_size)

    def restore(self, prov) -> None:
        """Never reveal twice for one (receiver, round), restarts included."""
        self.secure.restore(prov.events(EventKind.REVEALED))

    async def seal(self, own, neighbours, fields, transmit) -> Outgoing:
        record = await self.off_loop(own.numel() * 4, seal_update, self.identity, own, **fields)
        if not transmit:
            return Outgoing(record.update_id, {}, {})
        masked_fields = {k: v for k, v in fields.items() if k not in ("net", "round", "codec")}
        out = {}
        for nb in neighbours:
            if len(self.secure.groups.get(nb, ())) < 2:  # admitted later, without a group from the plan
                log.warning("round %d: no secure-aggregation group known for %s; not sending to it",
                            fields["round"], nb)
                continue
            out[nb] = await self.off_loop(own.numel() * 4, self.secure.seal_for, own, nb, fields["round"],
                                          **masked_fields)
        return Outgoing(record.update_id, out, {"codec": "u32", "kind": MASKED_KIND})

    def open(self, accepted: Accepted, neighbours: list[str]) -> Accepted | Reject:
        try:  # this peer's group is its neighbours
            return self.secure.open(accepted, neighbours)
        except SecureWireError as exc:  # signed by its sender, but made for another receiver or round
            return Reject(exc.reason, str(exc), accepted.sender, True)

    def kind_of(self, data) -> str | None:
        return kind_of(data)

    def on_message(self, kind, hint, data, trusted, round_) -> list[Command]:
        """A reveal request (this peer is a member asked to reveal) or a reveal (this peer asked)."""
        try:
            if kind == "reveal_request":
                req = verify(parse_request(data), network=self.network, trusted=trusted)
            else:
                rev = verify(parse_reveal(data), network=self.network, trusted=trusted, me=self.secure.me)
        except SecureWireError as exc:  # unproven: counted, summarised at the round's close
            return [Reject(exc.reason, str(exc), hint, False)]
        if kind == "reveal":
            return [Exchanged(rev.sender, rev.round, rev.seed_map())]
        reply, why, events = self.secure.answer(req)
        if reply is None:
            return [Reject(why, f"reveal request for round {req.round} refused", req.sender, True)]
        log.info("round %d: revealed %d seeds to %s", req.round, len(req.missing), req.sender)
        # durable before the seeds leave: a restart never answers twice
        return [*(Log(e, durable=True) for e in events), Transmit((req.sender,), reply)]

    def carries(self, cmd: Command) -> bool:
        return isinstance(cmd, RequestReveals | Unmask)

    async def carry_out(self, cmd, own, collected, neighbours) -> list[Command]:
        if isinstance(cmd, RequestReveals):
            data = encode_request(self.identity, net=self.network, round=cmd.round, delivered=cmd.delivered,
                                  missing=cmd.missing)
            log.info("round %d: %d of %d neighbours delivered; asking them for reveals", cmd.round,
                     len(cmd.delivered), len(cmd.delivered) + len(cmd.missing))
            return [Transmit(cmd.delivered, data)]
        assert isinstance(cmd, Unmask)
        sec = self.secure
        contributions = {s: collected[s].contribution for s in cmd.senders}
        try:
            total = await self.off_loop(own.numel() * 4, sec.unmask, contributions, cmd.reveals,
                                        neighbours)  # a ChaCha20 stream per revealed seed
        except MaskError as exc:
            log.warning("round %d: secure_mean could not unmask: %s", cmd.round, exc)
            return [Refuse(f"kept own model: secure_mean: {exc}")]
        value = sec.average(own, total, len(cmd.senders))
        report = {"rule": "secure_mean", "bound": sec.bound, "sum_hash": sum_hash(total),
                  "missing": sorted(set(neighbours) - set(cmd.senders)),
                  "reveals": {j: sorted(seeds) for j, seeds in sorted(cmd.reveals.items())},
                  "fixed_point_error": sec.fixed_point(len(neighbours)).error()}
        return [Adopt(value, cmd.senders, None, report)]


__all__ = ["MASKED_KIND", "Masked", "SecureAggregation", "SecureMeanWire", "SecureWireError", "check_trust_keys",
           "sum_hash"]
