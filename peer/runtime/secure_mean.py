"""secure_mean in a peer, the driver's half: double masking (privacy.secagg) wired to the
plan's groups (`SecureMeanSetup`) and the peer's wire (`SecureMeanWire`). The decisions - which
session, which phase, when - are the pure peer.runtime.secagg_exchange.SecAggExchange; this
module does the work that needs the model or the CPU: masking (`Mask`) and unmasking
(`Unmask`) off the event loop for large models, sealing the masked envelope, and parsing the
protocol's messages (bounded by the largest group) before the exchange checks who sent them.

A masked envelope (kind "masked", codec u32) carries the payload the member session made: a
32-byte tag binding it to (network, sender, receiver, round, session), then the masked words.
It names no parents: the ids of the unmasked models it came from would let a receiver confirm
a guess of them. The own model of the round is sealed for the record only (its id is what the
aggregation names as this peer's input), never sent.

The clip bound (aggregation.params.bound, default 4.0) must hold the model's parameters: values
beyond it are clipped before masking (the stack rule aggregation.secure does the same, so the
simulator agrees). The fixed-point step is bound * |G| / 2^31 (4.0 and 8 members: about 1.5e-8
per value), so a larger bound costs precision, never correctness.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from gossip.envelope import seal, seal_update
from gossip.identity import Identity
from privacy import secagg_wire as wire
from privacy.masking import FixedPoint
from privacy.secagg import MAX_MEMBERS, Random, SecAggError, masked_words

from ..config.settings import SECURE_BOUND, Neighbour
from ..state.provenance import EventKind, NewEvent
from .commands import Adopt, Command, Exchanged, Log, Refuse, Reject, Transmit
from .exchange import Exchange
from .secagg_exchange import Mask, SecAggExchange, Unmask, ledger_event
from .wire import Outgoing, Wire

log = logging.getLogger("gossipfl.peer")

MASKED_KIND = "masked"
SECAGG_KIND = "secagg"


@dataclass
class SecureMeanSetup:
    """What secure_mean needs from the plan and the config: each neighbour's group (whose masks
    cancel at that neighbour), the clip bound and the threshold choice."""

    groups: dict[str, tuple[str, ...]]
    bound: float = SECURE_BOUND
    threshold: str = "majority"

    @classmethod
    def of(cls, neighbours: list[Neighbour], params: Mapping) -> SecureMeanSetup:
        return cls({nb.id: tuple(nb.group or ()) for nb in neighbours}, float(params.get("bound", SECURE_BOUND)),
                   str(params.get("threshold", "majority")))

    def largest_group(self, own: int) -> int:
        """The most members any session of this peer has (its own group has `own`)."""
        return min(MAX_MEMBERS, max([own, 2, *(len(g) for g in self.groups.values())]))

    def input_for(self, receiver: str, round_: int, own: torch.Tensor) -> torch.Tensor:
        """What is masked for `receiver`: the own model (the simulator's model attackers replace
        this with a crafted one; a gateway never does)."""
        return own


def sum_hash(total: torch.Tensor) -> str:
    """SHA-256 of the unmasked sum's float32 bytes (little-endian): what the log records."""
    return hashlib.sha256(total.detach().to(torch.float32).contiguous().numpy().astype("<f4").tobytes()).hexdigest()


class SecureMeanWire(Wire):
    """secure_mean's wire: the protocol's messages, a masked envelope per receiver, and the
    sum unmasked and averaged with the own model."""

    masked = True

    def __init__(self, setup: SecureMeanSetup, identity: Identity, network: str, schema: bytes, n_params: int,
                 off_loop, random: Random = os.urandom):
        self.setup, self.identity, self.network = setup, identity, network
        self.schema, self.n_params, self.off_loop, self.random = schema, n_params, off_loop, random
        self.exch: SecAggExchange | None = None
        self.inputs: dict[int, torch.Tensor] = {}  # round -> the own model it masks (this round's and the last)
        self.eps = 0.0  # the signed epsilon of the last update sealed

    def exchange(self, policy) -> Exchange:
        self.exch = SecAggExchange(policy, self.identity, self.network, self.setup.groups, self.n_params,
                                   self.setup.threshold, self.random)
        return self.exch

    def words(self, group_size: int) -> int:
        return masked_words(self.n_params)

    def _exchange(self) -> SecAggExchange:
        assert self.exch is not None, "exchange() makes it when the round state is built"
        return self.exch

    def restore(self, prov) -> None:
        """The member's ledger, from its `secagg_ledger` events: after a restart no session
        starts again for a (receiver, round) it began, and no second survivor set is signed."""
        self._exchange().restore(e.details for e in prov.events(EventKind.SECAGG_LEDGER))

    async def seal(self, own, neighbours, fields, transmit) -> Outgoing:
        record = await self.off_loop(own.numel() * 4, seal_update, self.identity, own, **fields)
        self.eps = fields.get("eps", 0.0)  # the masked envelopes carry the same signed epsilon
        r = fields["round"]
        self.inputs = {k: v for k, v in self.inputs.items() if k >= r - 1}
        if transmit:  # kept: receivers may forward their shares after this peer's round ended
            self.inputs[r] = own.detach().clone()
        return Outgoing(record.update_id, {}, {})  # the masked envelopes leave with `Mask`, per receiver

    def kind_of(self, data) -> str | None:
        return SECAGG_KIND if wire.kind_of(data) is not None else None

    def on_message(self, kind, hint, data, trusted, round_) -> list[Command]:
        """Parsed (bounded by the largest group) and handed to the exchange, which checks the
        sender, session and signature before it does any work."""
        n = self.setup.largest_group(len(self._exchange().policy.neighbours))
        try:
            msg = wire.parse(data, n)
        except SecAggError as exc:
            return [Reject(exc.reason, str(exc), hint, False)]
        if msg.sender not in trusted:
            return [Reject("untrusted", f"a {msg.KIND} from a sender not on the trust list", msg.sender, False)]
        return [Exchanged(msg.sender, msg.round, msg)]

    def carries(self, cmd: Command) -> bool:
        return isinstance(cmd, Mask | Unmask)

    async def carry_out(self, cmd, own, collected, neighbours) -> list[Command]:
        if isinstance(cmd, Mask):
            return await self._mask(cmd, len(neighbours))
        return await self._unmask(cmd, own)

    async def _mask(self, cmd: Mask, degree: int) -> list[Command]:
        kept = self.inputs.get(cmd.round)
        if kept is None:  # pragma: no cover - the exchange masks only rounds whose model was sealed
            return []
        logs: list[Log] = []
        sends: list[Command] = []
        for receiver, s in zip(cmd.receivers, cmd.sessions, strict=True):
            x = self.setup.input_for(receiver, cmd.round, kept)
            fp = FixedPoint(self.setup.bound, s.ctx.n)

            def masked_envelope(s=s, x=x, fp=fp):
                payload = s.mask(x, fp)  # a ChaCha20 stream per other dealer, and the self-mask
                return seal(self.identity, net=self.network, round=cmd.round, schema=self.schema, payload=payload,
                            codec="u32", n=masked_words(self.n_params), kind=MASKED_KIND, deg=degree,
                            eps=self.eps)

            try:
                sealed = await self.off_loop(kept.numel() * 4, masked_envelope)
            except SecAggError as exc:  # pragma: no cover - the exchange masks a session once, after its shares
                logs.append(Log(NewEvent(EventKind.SECAGG, cmd.round, receiver, None, {
                    "role": "member", "step": "mask_failed", "detail": str(exc)[:300]})))
                continue
            logs += [Log(ledger_event(s)), Log(NewEvent(EventKind.SENT, cmd.round, receiver, sealed.update_id, {
                "bytes": len(sealed.data), "codec": "u32", "kind": MASKED_KIND}))]
            sends.append(Transmit((receiver,), sealed.data, cmd.round))
        if sends:  # the ledger says "masked" and each send is on record before its envelope leaves
            logs[-1] = Log(logs[-1].event, durable=True)
        return [*logs, *sends]

    async def _unmask(self, cmd: Unmask, own: torch.Tensor) -> list[Command]:
        s, bound = cmd.session, self.setup.bound
        fp = FixedPoint(bound, s.ctx.n)
        try:
            result = await self.off_loop(own.numel() * 4, s.result, fp)  # a ChaCha20 stream per survivor and pair
        except SecAggError as exc:
            log.warning("round %d: secure_mean could not unmask: %s", cmd.round, exc)
            return [Log(NewEvent(EventKind.SECAGG, cmd.round, None, None, {
                "role": "receiver", "step": "failed", "phase": "reveals", "reason": exc.reason,
                "who": list(exc.who), "detail": exc.detail[:300]})),
                Refuse(f"kept own model: secure_mean: {exc}")]
        u = result.survivors
        value = (own.clamp(-bound, bound) + result.total) / (1 + len(u))
        report = {"rule": "secure_mean", "bound": bound, "threshold": s.threshold, "sum_hash": sum_hash(result.total),
                  "survivors": list(u), "dropped": list(result.dropped), "revealers": list(result.revealers),
                  "missing": sorted(set(s.ctx.group) - set(u)), "fixed_point_error": fp.error()}
        return [Adopt(value, u, None, report)]


__all__ = ["MASKED_KIND", "SecureMeanSetup", "SecureMeanWire", "sum_hash"]
