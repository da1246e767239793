"""Reaching a neighbour: reuse a live connection, else dial its direct addresses, else open a
circuit through a relay; and the reconnect backoff, bounded by the caller's cap.

`Dialer.connect(PeerId)` (trio side), in this order:
1. any live connection to the neighbour (the swarm then prefers a direct one for streams);
2. its direct addresses from our AddressBook (newest verified record first, then the
   configured address; with mDNS on, then what it discovered), each with `swarm.dial_addr`: never `host.connect`, which dials at
   most one address per transport and reads the peerstore that identify rewrites; when
   relays are configured a direct dial gets DIRECT_TIMEOUT and, once failed, is skipped
   for SKIP_DIRECT s (the relay path is taken at once; hole punching upgrades it);
3. a circuit through each relay we have (those named in the neighbour's record first).
DialFailed says what each attempt met.

`Backoff(cap)` (pure, asyncio side): after a failed dial the next one waits 0.5 s, doubling up
to `cap`, the caller's round interval (a neighbour cut off is back within one round once it
behaves); an inbound connection from the neighbour clears it.
"""

from __future__ import annotations

import logging
import time

import multiaddr
import trio

from .circuits import Relay, dial_circuit
from .nat import connect_relay
from .records import AddressBook
from .streams import close_quietly, why

DIAL_TIMEOUT = 10.0
DIRECT_TIMEOUT = 3.0
SKIP_DIRECT = 60.0
BACKOFF_START = 0.5
MIN_CAP = 0.1

log = logging.getLogger("gossipfl.libp2p")


class DialFailed(Exception):
    """The neighbour could not be reached (backoff applies), as opposed to one stream failing."""


class Backoff:
    """Per peer: when the next dial may start (monotonic seconds)."""

    def __init__(self, cap: float):
        self.cap = max(MIN_CAP, float(cap))
        self._state: dict[str, tuple[float, float]] = {}  # peer -> (retry at, last delay)

    def ready(self, peer_id: str, now: float | None = None) -> bool:
        retry_at, _ = self._state.get(peer_id, (0.0, 0.0))
        return (time.monotonic() if now is None else now) >= retry_at

    def failed(self, peer_id: str, now: float | None = None) -> float:
        _, delay = self._state.get(peer_id, (0.0, BACKOFF_START / 2))
        delay = min(self.cap, delay * 2)
        self._state[peer_id] = ((time.monotonic() if now is None else now) + delay, delay)
        return delay

    def clear(self, peer_id: str | None = None) -> None:
        """Forget the backoff of `peer_id` (None: of every peer)."""
        if peer_id is None:
            self._state.clear()
        else:
            self._state.pop(peer_id, None)


class Dialer:
    def __init__(self, host, book: AddressBook, relays: list[Relay], *, discovered: bool = False):
        """`discovered`: also dial what local discovery (mDNS) put in py-libp2p's peerstore for a
        neighbour, after the address book's addresses."""
        self.host, self.book, self.relays, self.discovered = host, book, list(relays), discovered
        self._direct_failed: dict[str, float] = {}  # peer -> monotonic time of the last failure
        self._locks: dict[str, trio.Lock] = {}

    async def connect(self, peer_id: str, fresh: bool = False) -> None:
        """One dial per neighbour at a time: concurrent sends and pushes share its outcome."""
        lock = self._locks.setdefault(peer_id, trio.Lock())
        try:
            async with lock:
                await self._connect(peer_id, fresh)
        finally:
            if not lock.locked() and not lock.statistics().tasks_waiting:
                self._locks.pop(peer_id, None)

    async def _connect(self, peer_id: str, fresh: bool) -> None:
        from libp2p.peer.id import ID

        pid = ID.from_base58(peer_id)
        network = self.host.get_network()
        live = [c for c in network.connections.get(pid, []) if not c.is_closed]
        if fresh:
            for conn in live:
                await close_quietly(conn)
        elif live:
            return
        network.unblock_peer(pid)  # our backoff decides when to retry, not py-libp2p's 60 s cache
        tried: list[str] = []
        if await self._direct(peer_id, pid, tried):
            return
        for relay in self._relay_order(peer_id):
            try:
                await connect_relay(self.host, relay)
                with trio.fail_after(DIAL_TIMEOUT):
                    await dial_circuit(self.host, relay.peer_id, peer_id)
                return
            except Exception as exc:
                tried.append(f"through relay {relay.peer_id[-8:]}: {why(exc)}")
        raise DialFailed("; ".join(tried) or "no address and no relay")

    async def _direct(self, peer_id: str, pid, tried: list[str]) -> bool:
        addrs = self.book.direct(peer_id)
        if self.discovered:
            store = self.host.get_peerstore()
            found = [str(a) for a in store.addrs(pid)] if pid in store.peer_ids() else []
            addrs += [a for a in found if "/p2p-circuit" not in a and a not in addrs]
        if not addrs:
            return False
        failed_at = self._direct_failed.get(peer_id)
        if self.relays and failed_at is not None and time.monotonic() - failed_at < SKIP_DIRECT:
            tried.append("direct: failed recently")
            return False
        timeout = DIRECT_TIMEOUT if self.relays else DIAL_TIMEOUT
        network = self.host.get_network()
        for addr in addrs:
            try:
                with trio.fail_after(timeout):
                    await network.dial_addr(multiaddr.Multiaddr(addr), pid)
                self._direct_failed.pop(peer_id, None)
                return True
            except Exception as exc:
                tried.append(f"{addr}: {why(exc)}")
        self._direct_failed[peer_id] = time.monotonic()
        return False

    def _relay_order(self, peer_id: str) -> list[Relay]:
        named = self.book.relays(peer_id)
        return sorted(self.relays, key=lambda r: r.peer_id not in named)
