"""Transports move bytes between peers; they never decide trust (the verifier does).

    await t.start()
    await t.send(peer_id, data)          # best effort; never raises for an unreachable peer
    async for sender_hint, data in t:    # what arrived; the hint is unauthenticated
    await t.close()

MemoryHub/MemoryTransport connect peers in one event loop (tests, the simulator), with
optional faults per link: loss, latency and partitions (LinkFaults).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

log = logging.getLogger("gossipfl.transport")


class Transport:
    """Base class: what the peer needs from any transport."""

    peer_id: str

    async def start(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    async def send(self, peer_id: str, data: bytes) -> bool:  # pragma: no cover - interface
        raise NotImplementedError

    def __aiter__(self) -> AsyncIterator[tuple[str | None, bytes]]:  # pragma: no cover - interface
        raise NotImplementedError

    async def close(self, reason: str = "stopped") -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def addresses(self) -> list[str]:
        return []

    async def status(self, info: dict) -> None:
        """Publish a small status (round, accuracy) where the transport has a place for it."""

    async def set_neighbours(self, addrs: dict[str, str | None]) -> None:
        """The neighbours changed (fleet membership): id -> address where the transport dials."""

    on_failure: Callable[[BaseException], object] | None = None  # a background task died (set by the owner)

    def _failed(self, exc: BaseException) -> None:
        """Report a dead background task to the owner (from any thread); never silent."""
        log.error("transport %s failed: %r", type(self).__name__, exc)
        if self.on_failure is not None:
            self.on_failure(exc)


class QueuedTransport(Transport):
    """A transport whose receive side is a bounded asyncio queue (a full queue drops)."""

    def __init__(self, inbox: int = 256):
        self.queue: asyncio.Queue = asyncio.Queue(maxsize=inbox)
        self.dropped_full = 0

    def _deliver(self, sender: str | None, data: bytes | bytearray) -> None:
        try:
            self.queue.put_nowait((sender, data))
        except asyncio.QueueFull:
            self.dropped_full += 1

    def _end(self) -> None:
        """Wake the receiving iterator so it finishes."""
        try:
            self.queue.put_nowait(None)
        except asyncio.QueueFull:
            pass

    def __aiter__(self):
        return self._iterate()

    async def _iterate(self):
        while True:
            item = await self.queue.get()
            if item is None:
                return
            yield item


@dataclass
class LinkFaults:
    """Per-message fault model: drop with probability `loss`, deliver after `latency(sender, to)` s."""

    loss: float = 0.0
    latency: Callable[[str, str], float] | None = None
    blocked: Callable[[str, str], bool] | None = None  # a partition: True drops the message
    rng: random.Random = field(default_factory=lambda: random.Random(0))


@dataclass
class HubStats:
    delivered: int = 0
    dropped_loss: int = 0
    dropped_full: int = 0
    dropped_offline: int = 0
    bytes: int = 0


class MemoryHub:
    """An in-process network: peer id -> transport, with optional faults."""

    def __init__(self, faults: LinkFaults | None = None, queue_size: int = 256):
        self.peers: dict[str, MemoryTransport] = {}
        self.faults = faults or LinkFaults()
        self.queue_size = queue_size
        self.stats = HubStats()
        self._pending: set[asyncio.Task] = set()

    def transport(self, peer_id: str) -> MemoryTransport:
        return MemoryTransport(self, peer_id)

    def _deliver(self, sender: str, to: str, data: bytes) -> bool:
        target = self.peers.get(to)
        if target is None or target.closed:
            self.stats.dropped_offline += 1
            return False
        try:
            target.queue.put_nowait((sender, data))
        except asyncio.QueueFull:
            self.stats.dropped_full += 1
            return False
        self.stats.delivered += 1
        self.stats.bytes += len(data)
        return True

    async def route(self, sender: str, to: str, data: bytes) -> bool:
        f = self.faults
        if f.blocked is not None and f.blocked(sender, to):
            self.stats.dropped_loss += 1
            return False
        if f.loss and f.rng.random() < f.loss:
            self.stats.dropped_loss += 1
            return False
        delay = f.latency(sender, to) if f.latency else 0.0
        if delay > 0:
            async def later():
                await asyncio.sleep(delay)
                self._deliver(sender, to, data)

            task = asyncio.get_running_loop().create_task(later())
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)
            return True
        return self._deliver(sender, to, data)


class MemoryTransport(QueuedTransport):
    def __init__(self, hub: MemoryHub, peer_id: str):
        super().__init__(hub.queue_size)
        self.hub = hub
        self.peer_id = peer_id
        self.closed = True

    async def start(self) -> None:
        self.closed = False
        self.queue = asyncio.Queue(maxsize=self.hub.queue_size)
        self.hub.peers[self.peer_id] = self

    async def send(self, peer_id: str, data: bytes) -> bool:
        if self.closed:
            return False
        return await self.hub.route(self.peer_id, peer_id, bytes(data))

    async def close(self, reason: str = "stopped") -> None:
        if not self.closed:
            self.closed = True
            if self.hub.peers.get(self.peer_id) is self:
                del self.hub.peers[self.peer_id]
            self._end()

    def addresses(self) -> list[str]:
        return [f"memory://{self.peer_id}"]
