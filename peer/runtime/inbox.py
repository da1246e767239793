"""What arrives at a peer, sorted and turned into commands for the driver (peer.runtime.driver),
which alone feeds the round state machine: membership records (peer.runtime.membership), messages
of the rule's own wire (e.g. reveals), and updates (screened: header and signature; then
finished: payload). A payload of a megabyte or more is hashed on one of two worker threads
(SHA-256 releases the GIL, so two updates hash at once on a 2-core gateway), smaller ones
inline; at most two large messages are held while being verified, so a flood cannot queue
megabytes."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

from gossip.envelope import Envelope
from gossip.membership import is_record
from gossip.transport import Transport
from gossip.verify import Accepted, Rejected, Verifier

from .commands import Command, Offer, Reject, Screened
from .membership import Membership, on_record
from .tasks import TaskSet
from .wire import Wire
from .witness import Witness, is_witness

VERIFY_IN_THREAD_BYTES = 1 << 20
VERIFY_WORKERS = 2


async def off_loop_if_large(nbytes: int, fn, *args, **kwargs):
    """fn(*args, **kwargs), on a worker thread when it works through megabytes (hashing, masking,
    unmasking would stall the event loop), inline otherwise (a thread costs more than small work)."""
    if nbytes >= VERIFY_IN_THREAD_BYTES:
        return await asyncio.to_thread(fn, *args, **kwargs)
    return fn(*args, **kwargs)


class Inbox:
    """Turns arrivals into commands; `execute` is the driver's interpreter (the one narrow way
    back), used when a large payload finishes verifying on a worker thread."""

    def __init__(self, verifier: Verifier, wire: Wire, membership: Membership, count_bytes: Callable[[int], None],
                 tasks: TaskSet, execute: Callable[[list[Command]], Awaitable[None]]):
        self.verifier, self.wire, self.membership = verifier, wire, membership
        self.count_bytes, self.tasks, self.execute = count_bytes, tasks, execute
        self.pool = ThreadPoolExecutor(max_workers=VERIFY_WORKERS, thread_name_prefix="verify")
        self.slots = asyncio.Semaphore(VERIFY_WORKERS)
        self.open = True
        self.witness: Witness | None = None  # set by the peer once its log is open

    def sort(self, hint: str | None, data, round_: int, seen, neighbours: list[str]) -> list[Command]:
        """One message from the transport (`hint`: the sender it claims, unproven)."""
        self.count_bytes(len(data))
        if is_record(data):
            return on_record(self.membership, hint, data, round_, neighbours)
        if is_witness(data):  # a neighbour asking what it holds of this peer's past, or answering
            return self.witness.on_message(hint, data) if self.witness is not None else []
        kind = self.wire.kind_of(data)
        if kind is not None:
            return self.wire.on_message(kind, hint, data, self.membership.trusted, round_)
        return [Screened(self.verifier.screen(data, round_, seen))]

    async def finish(self, envelope: Envelope, neighbours: list[str]) -> list[Command]:
        """Verify the payload of a screened update: inline when small (the command to offer it),
        on a worker thread when large (offered through `execute` when done; the receive loop
        goes on, held back only while both workers are busy)."""
        if envelope.size < VERIFY_IN_THREAD_BYTES:
            return [self._offer(self.verifier.finish(envelope), envelope.size, neighbours)]
        await self.slots.acquire()

        async def on_thread() -> None:
            try:
                result = await asyncio.get_running_loop().run_in_executor(self.pool, self.verifier.finish, envelope)
            finally:
                self.slots.release()
            if self.open:  # not after close: the log is gone
                await self.execute([self._offer(result, envelope.size, neighbours)])

        self.tasks.spawn(on_thread(), "verifying an update")
        return []

    def _offer(self, result: Accepted | Rejected, size: int, neighbours: list[str]) -> Command:
        if isinstance(result, Accepted):
            witnessed, sender = self.verifier.witnessed, result.sender
            if witnessed is not None:  # the sender's budget as it signed it: never lower from now on
                witnessed[sender] = max(witnessed.get(sender, 0.0), result.envelope.header["eps"])
            opened = self.wire.open(result, neighbours)
            if isinstance(opened, Reject):
                return opened
            result = opened
        return Offer(result, size)

    def close(self) -> None:
        self.open = False
        self.pool.shutdown(wait=False)


class Listener:
    """The transport's receive loop: started with the transport (never a second one), each message
    handed to `receive`; a failure of either, even on the transport's own thread, is reported
    to `failed` with its cause."""

    def __init__(self, transport: Transport, tasks: TaskSet, receive: Callable[[str | None, object], Awaitable[None]],
                 failed: Callable[[str, BaseException], None]):
        self.transport, self.tasks, self.receive, self.failed = transport, tasks, receive, failed
        self.task: asyncio.Task | None = None

    async def start(self) -> None:
        if self.task is not None and not self.task.done():
            return
        loop = asyncio.get_running_loop()
        self.transport.on_failure = lambda exc: loop.call_soon_threadsafe(self.failed, "the transport", exc)
        await self.transport.start()
        self.task = self.tasks.spawn(self._run(), "the receive loop")

    async def _run(self) -> None:
        async for hint, data in self.transport:
            await self.receive(hint, data)

    async def stop(self) -> None:
        task, self.task = self.task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
