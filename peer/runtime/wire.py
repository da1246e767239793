"""The driver's half of a rule's wire: what a peer seals and sends, how it opens what it
received, which messages of its own it answers, and how it combines a round.

One declaration per kind, in `WIRES`: `DirectWire` (every rule that sees each update: one sealed
update, the same bytes to every neighbour; combined with the rule on the aggregation stack) and
`SecureMeanWire` (peer.runtime.secure_mean: double masking's messages and a masked input per
receiver; combined by unmasking). The pure half that decides when a round closes is the
matching peer.runtime.exchange.Exchange. Neither the round nor the driver branches on the rule.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from aggregation import AggregationError, aggregate
from aggregation.similarity import similarity_mix
from gossip.envelope import Sealed, seal_update
from gossip.verify import Accepted

from .commands import Adopt, Combine, Command, Refuse, Reject
from .exchange import DirectExchange, Exchange, rule_params


@dataclass
class Outgoing:
    """A sealed round: the id of the own update (what the aggregation names), the bytes for each
    neighbour, and the details its `sent` events carry."""

    update_id: str
    per_neighbour: dict[str, Sealed]
    details: dict


class Wire:
    """Base: see the module docstring. `fields` are the envelope fields the driver fixes
    (net, round, schema, codec, parents, deg)."""

    masked = False  # contributions are words summed by the wire, never rows of the stack

    def exchange(self, policy) -> Exchange:
        raise NotImplementedError

    def restore(self, prov) -> None:
        """After a restart: what the wire must remember from the provenance log."""

    def words(self, group_size: int) -> int | None:
        """The envelope's n of what neighbours send this peer, when it is not the model's size."""
        return None

    async def seal(self, own: torch.Tensor, neighbours: list[str], fields: dict, transmit: bool) -> Outgoing:
        raise NotImplementedError

    def open(self, accepted: Accepted, neighbours: list[str]) -> Accepted | Reject:
        """A verified update, as the round should keep it (or refused, e.g. the wrong context)."""
        return accepted

    def kind_of(self, data) -> str | None:
        """The kind of a message of this wire's own (None: an update or a membership record)."""
        return None

    def on_message(self, kind: str, hint: str | None, data, trusted, round_: int) -> list[Command]:
        raise NotImplementedError  # pragma: no cover - only wires with kinds of their own

    def carries(self, cmd: Command) -> bool:
        """Whether `carry_out` handles this command of the wire's exchange."""
        return isinstance(cmd, Combine)

    async def carry_out(self, cmd: Command, own: torch.Tensor, collected: Mapping[str, Accepted],
                        neighbours: list[str]) -> list[Command]:
        raise NotImplementedError


class DirectWire(Wire):
    """Plain updates: sealed once (off the event loop when large), the same bytes to everyone."""

    def __init__(self, identity, stack, rule: str, f: int, params: Mapping, *, metropolis_hastings: bool = False,
                 degrees: Mapping[str, int] | None = None, off_loop=None, similarity: bool = False):
        self.identity, self.stack = identity, stack
        self.similarity = similarity  # [personalization] similarity: mixed by closeness to the own model
        self.rule, self.f, self.params = rule, f, rule_params(rule, dict(params))
        self.metropolis_hastings, self.degrees = metropolis_hastings, dict(degrees or {})
        self.off_loop = off_loop

    def exchange(self, policy) -> Exchange:
        return DirectExchange(policy, self.metropolis_hastings, self.degrees)

    async def seal(self, own, neighbours, fields, transmit) -> Outgoing:
        sealed = await self.off_loop(own.numel() * 4, seal_update, self.identity, own, **fields)
        if not transmit:
            return Outgoing(sealed.update_id, {}, {})
        return Outgoing(sealed.update_id, dict.fromkeys(neighbours, sealed),
                        {"bytes": len(sealed.data), "codec": fields["codec"]})

    async def carry_out(self, cmd, own, collected, neighbours) -> list[Command]:
        assert isinstance(cmd, Combine)
        inputs = [collected[s] for s in cmd.senders]
        weights = None if cmd.weights is None else torch.tensor(cmd.weights, dtype=torch.float32)
        if self.similarity:
            return [similar(self.stack.stacked(own, inputs), weights, self.f, cmd)]
        try:
            out = aggregate(self.rule, self.stack.stacked(own, inputs), weights, f=self.f, **self.params)
        except AggregationError as exc:
            return [Refuse(f"kept own model: {exc}")]
        value = out.value.clone() if self.stack.owns(out.value) else out.value  # e.g. Krum's chosen row
        return [Adopt(value, cmd.senders, cmd.weights, out.report.to_dict())]


def similar(stack: torch.Tensor, weights: torch.Tensor | None, f: int, cmd: Combine) -> Adopt:
    """personalization.similarity: the rows mixed by their closeness to the own model (row 0),
    each pull clipped so f Byzantine neighbours move it at most as far as the farthest honest
    one is (aggregation.similarity); the report names the weights, the radius and the scale."""
    mix = similarity_mix(stack, weights, f=f)
    report = {"rule": "similarity", "n": int(stack.shape[0]), "f": f, "details": {
        "weights": [round(float(w), 6) for w in mix.weights], "radius": float(mix.radius),
        "scale": float(mix.scale)}}
    return Adopt(mix.value, cmd.senders, cmd.weights, report)
