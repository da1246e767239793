"""What a peer transmits: each neighbour has its own sender task and a mailbox of one, so a slow
or stalled neighbour never holds up the others, and the newest update always goes out.

A peer that finishes a round while its last update to a neighbour is still in flight puts the
new one in that neighbour's mailbox, replacing an older one waiting there (never skipping the
newest: a skipped update left the neighbour waiting out its deadline, which is how racing
peers fell out of step). An update that was not delivered (the neighbour unreachable, a link
down) is tried again, with a delay doubling from RETRY_FIRST up to the peer's round interval
or RETRY_CAP, until it is delivered or a newer one replaces it. At most two transmissions run at
once (a stalled neighbour holds one slot, and a transport buffers at most two). Small protocol
messages (records passed on, key adverts, reveals) go out at once, tried again for a
while if undelivered. With an upload budget (peer.runtime.upload), each update waits its turn
so that what goes out stays within it; protocol messages never wait but are counted.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping

from gossip.transport import Transport

from .tasks import TaskSet
from .upload import UploadBudget

log = logging.getLogger("gossipfl.peer")
SEND_SLOTS = 2
RETRY_FIRST = 0.25  # seconds before the first retry of an undelivered update
RETRY_CAP = 5.0  # longest wait between retries when the peer has no round interval


def upload_budget(kbps: float) -> UploadBudget | None:
    """`[transport] max_upload_kbps` as the outbox takes it (0: no budget)."""
    return UploadBudget(kbps) if kbps > 0 else None


class Outbox:
    def __init__(self, transport: Transport, tasks: TaskSet, delivered: Callable[[int], None],
                 retry_cap: float = RETRY_CAP, upload: UploadBudget | None = None):
        self.transport, self.tasks, self.delivered, self.upload = transport, tasks, delivered, upload
        self.retry_cap = max(RETRY_FIRST, retry_cap)
        self.mailbox: dict[str, tuple[bytes, int]] = {}  # neighbour -> the newest update not yet sent
        self.latest: dict[str, tuple[bytes, int]] = {}  # neighbour -> the newest update it was given
        self.senders: dict[str, asyncio.Task] = {}  # neighbour -> its sender task
        self.wakeups: dict[str, asyncio.Event] = {}
        self.slots = asyncio.Semaphore(SEND_SLOTS)
        self.bytes_sent = 0  # this round

    def new_round(self) -> None:
        self.bytes_sent = 0

    def updates(self, per_neighbour: Mapping[str, bytes], round_: int) -> None:
        """Each neighbour its update, replacing one still waiting for it."""
        for nb, data in per_neighbour.items():
            if nb in self.mailbox:
                log.debug("round %d: the update to %s waiting since round %d is replaced", round_, nb,
                          self.mailbox[nb][1])
            self.latest[nb] = (data, round_)
            self._post(nb, data, round_)

    def again(self, nb: str) -> None:
        """Send `nb` once more the newest update it was given (it fell behind and lost it)."""
        if nb in self.latest and nb not in self.mailbox:
            self._post(nb, *self.latest[nb])

    def _post(self, nb: str, data: bytes, round_: int) -> None:
        self.mailbox[nb] = (data, round_)
        self.wakeups.setdefault(nb, asyncio.Event()).set()
        task = self.senders.get(nb)
        if task is None or task.done():
            self.senders[nb] = self.tasks.spawn(self._sender(nb), f"sending to {nb[-8:]}")

    def message(self, to: str, data: bytes, retry_for: float = 0.0) -> None:
        """A small message of the protocol (a record passed on, a key advert, a reveal): sent at
        once, and tried again (the delay doubling from RETRY_FIRST) for up to `retry_for`
        seconds while it is not delivered (a neighbour still starting, a link down)."""
        self.tasks.spawn(self._message(to, data, retry_for), f"message to {to[-8:]}")

    async def _message(self, to: str, data: bytes, retry_for: float) -> None:
        loop = asyncio.get_running_loop()
        give_up, delay = loop.time() + retry_for, RETRY_FIRST
        while not await self._transmit(to, data, wait=False):
            if loop.time() + delay > give_up:
                log.debug("a message to %s was not delivered", to)
                return
            await asyncio.sleep(delay)
            delay = min(2 * delay, self.retry_cap)

    async def _sender(self, nb: str) -> None:
        """Send `nb` the newest update in its mailbox until none is left; retry what failed."""
        delay = RETRY_FIRST
        wake = self.wakeups[nb]
        while nb in self.mailbox:
            data, round_ = self.mailbox[nb]
            wake.clear()
            if await self._transmit(nb, data):
                if self.mailbox.get(nb, (None,))[0] is data:  # nothing newer arrived meanwhile
                    del self.mailbox[nb]
                delay = RETRY_FIRST
                continue
            if self.mailbox.get(nb, (None,))[0] is not data:
                continue  # a newer update is waiting: send it now
            log.debug("round %d: update to %s not delivered; again in %.2fs", round_, nb, delay)
            try:  # a newer update cuts the wait short
                await asyncio.wait_for(wake.wait(), delay)
            except TimeoutError:
                pass
            delay = min(2 * delay, self.retry_cap)

    async def _transmit(self, nb: str, data: bytes, wait: bool = True) -> bool:
        async with self.slots:
            if self.upload is not None:  # holding the slot: nothing else of ours goes out meanwhile
                now = asyncio.get_running_loop().time()
                if wait:
                    await asyncio.sleep(self.upload.reserve(len(data), now))
                else:
                    self.upload.charge(len(data), now)
            delivered = await self.transport.send(nb, data)
        if delivered:
            self.bytes_sent += len(data)
            self.delivered(len(data))
        return delivered

    async def drain(self, timeout: float) -> None:
        """Let the last updates go out, within reason, at shutdown (then stop retrying)."""
        in_flight = [t for t in self.senders.values() if not t.done()]
        if in_flight:
            _, late = await asyncio.wait(in_flight, timeout=timeout)
            for t in late:
                t.cancel()
        self.mailbox.clear()
