"""The round's phases and its transition table: which lifecycle input the round state machine
(peer.runtime.round) accepts in which phase, and where it may lead. Anything not in the table is a
driver bug and raises RoundProtocolError (as h11 raises LocalProtocolError from h11/_state.py)."""

from __future__ import annotations

from enum import StrEnum


class Phase(StrEnum):
    NEW = "new"  # before the first round: may resume from a checkpoint
    IDLE = "idle"  # between rounds
    TRAINING = "training"
    COLLECTING = "collecting"
    EXCHANGING = "exchanging"  # the rule's wire needs more messages before it combines
    CLOSED = "closed"  # told the driver to combine; waiting for its result


class Input(StrEnum):
    RESUME = "resume"
    SET_NEIGHBOURS = "set_neighbours"
    START = "start"
    TRAINED = "trained"
    SENT = "sent"
    CLOSE = "close"
    EXCHANGE_DONE = "exchange_done"
    AGGREGATED = "aggregated"
    SKIP = "skip"
    PERSIST = "persist"
    COMMITTED = "committed"


# (phase, input) -> the phases the input may lead to; anything not listed is illegal
TRANSITIONS: dict[tuple[Phase, Input], frozenset[Phase]] = {
    (Phase.NEW, Input.RESUME): frozenset({Phase.NEW}),
    (Phase.NEW, Input.SET_NEIGHBOURS): frozenset({Phase.NEW}),
    (Phase.IDLE, Input.SET_NEIGHBOURS): frozenset({Phase.IDLE}),
    (Phase.NEW, Input.START): frozenset({Phase.TRAINING}),
    (Phase.IDLE, Input.START): frozenset({Phase.TRAINING}),
    (Phase.TRAINING, Input.TRAINED): frozenset({Phase.COLLECTING}),
    (Phase.COLLECTING, Input.SENT): frozenset({Phase.COLLECTING}),
    (Phase.COLLECTING, Input.CLOSE): frozenset({Phase.CLOSED, Phase.EXCHANGING, Phase.IDLE}),  # IDLE: skipped
    (Phase.EXCHANGING, Input.EXCHANGE_DONE): frozenset({Phase.CLOSED, Phase.IDLE}),
    (Phase.CLOSED, Input.AGGREGATED): frozenset({Phase.IDLE}),
    (Phase.CLOSED, Input.SKIP): frozenset({Phase.IDLE}),  # the driver could not combine
    # a checkpoint may be asked for and become durable while anything else goes on
    **{(p, Input.PERSIST): frozenset({p}) for p in Phase},
    **{(p, Input.COMMITTED): frozenset({p}) for p in Phase},
}


class RoundProtocolError(RuntimeError):
    """The driver fed an input the round's phase does not allow (a bug in the driver)."""

    def __init__(self, phase: Phase, what: Input | str, detail: str = ""):
        self.phase, self.input = phase, what
        super().__init__(f"round state machine: {what} is not allowed in phase {phase}"
                         + (f" ({detail})" if detail else ""))
