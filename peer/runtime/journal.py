"""The peer's provenance events on their way to the log, and the messages that wait for them.

Events are appended in batches (the log signs and chains each; a transaction per batch) by one
writer thread, off the event loop: an append ends with an fsync (milliseconds, tens under load),
and on the loop every one of them delayed every arrival and every deadline of the round
(measured by bench/journal.py). One thread writes, so batches reach the disk in the order they
were handed over.

An event that must be durable before what follows leaves (`sent` before the update goes out, a
membership record passed on, a secure_mean member's ledger before its advert or reveal) is
written with every other event of the same turn of the loop, in one transaction (group commit:
a burst of reveals costs one fsync, not one each); the messages issued after it are held until
it is on disk. A checkpoint is published (renamed into place) only once the `checkpoint` event
that vouches for it is on disk, never before.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor

from ..state.provenance import EventKind, NewEvent
from .commands import Transmit

BATCH = 64  # events kept in memory at most before a write


class Journal:
    def __init__(self, prov, publish: Callable[[], None], outbox, failed: Callable[[str, BaseException], None],
                 writer: Executor | None = None):
        self.prov, self.publish, self.outbox, self.failed = prov, publish, outbox, failed
        self.writer = writer or ThreadPoolExecutor(1, thread_name_prefix="provenance")
        self.owns_writer = writer is None
        self.events: list[NewEvent] = []
        self.held: list[tuple[int, Transmit]] = []  # (events that must be on disk first, message)
        self.added = 0  # events handed to the journal so far
        self.queued = 0  # of them, handed to the writer
        self.written = 0  # of them, on disk
        self.must_precede = 0  # `added` at the last durable event: what is sent now waits for it
        self.checkpoint_at = 0  # `added` at the last checkpoint event: publishing waits for it
        self.sync: asyncio.Task | None = None

    def add(self, *events: NewEvent) -> None:
        self.events.extend(events)
        self.added += len(events)
        if any(e.kind == EventKind.CHECKPOINT for e in events):
            self.checkpoint_at = self.added
        if len(self.events) >= BATCH:
            self._soon()

    def durable(self, event: NewEvent) -> None:
        """Written at the end of this turn of the loop; what is sent meanwhile waits for it."""
        self.add(event)
        self.must_precede = self.added
        self._soon()

    def send(self, cmd: Transmit) -> None:
        if self.must_precede > self.written:  # it leaves once what was logged before it is on disk
            self.held.append((self.must_precede, cmd))
        else:
            self.transmit(cmd)

    def transmit(self, cmd: Transmit) -> None:
        if cmd.round is not None:
            self.outbox.updates(dict.fromkeys(cmd.to, cmd.data), cmd.round)
        else:
            for nb in cmd.to:
                self.outbox.message(nb, cmd.data, cmd.retry_for)

    def _soon(self) -> None:
        if self.sync is None or self.sync.done():
            self.sync = asyncio.get_running_loop().create_task(self._sync())

    async def _sync(self) -> None:
        try:
            await self.flush()
            while self.must_precede > self.written:  # a durable event came while that batch was written:
                await self.flush()  # no other sync was started for it (this one was running), so write it now
        except Exception as exc:  # reported like any background failure: the peer stops, saying why
            self.failed("writing the provenance log", exc)

    async def flush(self) -> None:
        """Write every pending event now; then release the messages and the checkpoint that
        waited for them."""
        events, self.events = self.events, []
        upto = self.queued = self.queued + len(events)
        if events:
            await asyncio.get_running_loop().run_in_executor(self.writer, self.prov.append_many, events)
        self.written = max(self.written, upto)
        ready = [cmd for need, cmd in self.held if need <= self.written]
        self.held = [(need, cmd) for need, cmd in self.held if need > self.written]
        for cmd in ready:
            self.transmit(cmd)
        if self.written >= self.checkpoint_at:  # its `checkpoint` event is in the log now
            self.publish()

    async def close(self) -> None:
        """Everything on disk, then the writer thread ends."""
        await self.flush()
        if self.owns_writer:
            self.writer.shutdown(wait=True)
