"""The peer's provenance events on their way to the log, and the messages that wait for them.

Events are appended in batches (the log signs and chains each; a transaction per batch). An
event that must be durable before what follows leaves (a membership record passed on, a
secure_mean member's ledger before its advert or reveal) is written at the end of the current
turn of the event loop, with every other one of that turn, in one transaction (group commit:
a burst of reveals costs one fsync, not one each); the messages issued after it are held until
then. Every write also publishes the checkpoint whose event it carried.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ..state.provenance import NewEvent
from .commands import Transmit

BATCH = 64  # events kept in memory at most before a write


class Journal:
    def __init__(self, prov, publish: Callable[[], None], outbox, failed: Callable[[str, BaseException], None]):
        self.prov, self.publish, self.outbox, self.failed = prov, publish, outbox, failed
        self.events: list[NewEvent] = []
        self.held: list[Transmit] = []
        self.sync_at: asyncio.Handle | None = None

    def add(self, *events: NewEvent) -> None:
        self.events.extend(events)
        if len(self.events) >= BATCH and self.sync_at is None:
            self.flush()

    def durable(self, event: NewEvent) -> None:
        """Written at the end of this turn of the loop; what is sent meanwhile waits for it."""
        self.events.append(event)
        if self.sync_at is None:
            self.sync_at = asyncio.get_running_loop().call_soon(self._sync)

    def send(self, cmd: Transmit) -> None:
        if self.sync_at is not None:  # it leaves once what was logged before it is on disk
            self.held.append(cmd)
        else:
            self.transmit(cmd)

    def transmit(self, cmd: Transmit) -> None:
        if cmd.round is not None:
            self.outbox.updates(dict.fromkeys(cmd.to, cmd.data), cmd.round)
        else:
            for nb in cmd.to:
                self.outbox.message(nb, cmd.data, cmd.retry_for)

    def _sync(self) -> None:
        self.sync_at = None
        try:
            self.flush()
        except Exception as exc:  # reported like any background failure: the peer stops, saying why
            self.failed("writing the provenance log", exc)

    def flush(self) -> None:
        """Write every pending event now; then release the held messages and the checkpoint."""
        if self.sync_at is not None:
            self.sync_at.cancel()
            self.sync_at = None
        if self.events:
            events, self.events = self.events, []
            self.prov.append_many(events)
        held, self.held = self.held, []
        for cmd in held:
            self.transmit(cmd)
        self.publish()  # its `checkpoint` event is in the log now
