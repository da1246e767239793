"""Which wire a peer's rule runs on: one declaration per kind. A rule that needs its own wire
names it in `WIRE_OF_RULE`; every other rule runs on the direct wire."""

from __future__ import annotations

from collections.abc import Callable

from .inbox import off_loop_if_large
from .parts import PeerParts
from .secure_mean import SecureMeanWire
from .stack import UpdateStack
from .wire import DirectWire, Wire


def _direct(parts: PeerParts, stack: UpdateStack) -> Wire:
    agg = parts.cfg.aggregation
    return DirectWire(parts.identity, stack, agg.rule, agg.f, agg.params,
                      metropolis_hastings=agg.weights == "metropolis_hastings",
                      degrees=parts.neighbour_degrees, off_loop=off_loop_if_large,
                      similarity=parts.cfg.personalization.similarity)


def _secure_mean(parts: PeerParts, stack: UpdateStack) -> Wire:
    assert parts.secure is not None  # built with the parts when the rule is secure_mean
    return SecureMeanWire(parts.secure, parts.identity, parts.cfg.network, parts.wire_schema, parts.wire_size,
                          off_loop_if_large)


WIRES: dict[str, Callable[[PeerParts, UpdateStack], Wire]] = {"direct": _direct, "secure_mean": _secure_mean}
WIRE_OF_RULE = {"secure_mean": "secure_mean"}


def make_wire(parts: PeerParts, stack: UpdateStack) -> Wire:
    return WIRES[WIRE_OF_RULE.get(parts.cfg.aggregation.rule, "direct")](parts, stack)
