"""The libp2p transport: TCP + Noise + yamux via py-libp2p, one stream per update, reachable
behind NAT through the fleet's relays. This class is the asyncio face; the work is done on a
trio thread by gossip/p2p/ (see its __init__ for the module map).

    t = Libp2pTransport(identity, ["/ip4/0.0.0.0/tcp/4001"], {neighbour: "/ip4/.../tcp/4001", ...},
                        max_size=..., allowed=live_set, relays=["/ip4/R/tcp/4001/p2p/12D3KooW..."],
                        reachability="auto", hole_punch=True, announce=[], serve_relay=False,
                        reconnect_cap=round_interval, state_dir=data_dir / "libp2p")
    await t.start(); await t.send(peer_id, data); async for sender, data in t: ...
    await t.links()          # {neighbour: "direct" | "hole-punched" | "relayed" | None}
    await t.connectivity()   # reachability, links, announced addresses, reservations, relay metrics
    await t.close()

Settings (each maps to one `[transport]` field of peer.toml):
- `listen`: addresses to listen on; a fixed port (hole punching predicts it).
- `neighbours`: PeerId -> configured address (or None); `set_neighbours` replaces them.
- `allowed`: who may connect and send updates (a set read live, or a predicate; default the
  neighbours). `max_size`: the largest update read. `inbox`: updates queued for the peer.
- `relays`: `/ip4/HOST/tcp/PORT/p2p/PEERID` of the fleet's relays (their PeerIds may connect
  but never send an update). With relays, a gateway that is not known to be public keeps a
  reservation on each and its neighbours reach it through them.
- `reachability`: "auto" (ask the relays to dial us back), "public" or "private" (no dial-back;
  private: no direct address is announced).
- `hole_punch`: upgrade relayed connections to direct ones where the NATs allow (DCUtR).
- `announce`: the direct addresses to announce instead of the listen ones (a port forward).
- `serve_relay`: True or RelayLimits: relay for `relay_for` (default: who may connect; pass the
  fleet's members), within those limits.
- `reconnect_cap`: the longest wait between redials of an unreachable neighbour (pass the
  round interval; at least 0.1 s).
- `state_dir`: where our record's sequence number and the neighbours' latest records are
  kept (None: memory only).

What holds for every connection, direct, relayed or hole-punched (gossip/p2p/host.py,
updates.py): only the trusted talk (a stranger is closed right after Noise, keyed on the
end-to-end PeerId), one read slot per sender, `max_size` with a read deadline fixed by it,
a message rate cutoff, and hard yamux bounds on what a connection may buffer.

Memory held for unverified input, hard bounds (M = max_size + 8, W = 256 KB): per
neighbour connection, yamux buffers at most B = M + 64 KB per stream and B + 7 W in all; per
sender, at most CONNECTIONS_PER_PEER connections plus the message being read: about
3 (M + 64 KB + 7 W) + M. A relay's connection: 72 streams of at most W + 64 KB each. Plus
WAITING_SLOTS silent sockets and HANDSHAKE_SLOTS handshakes in progress (a few KB each).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from pathlib import Path

from .errors import TransportError
from .identity import Identity
from .p2p.circuits import Relay
from .p2p.dialer import BACKOFF_START, DIAL_TIMEOUT, Backoff, DialFailed
from .p2p.host import (
    CONNECTIONS_PER_PEER,
    HANDSHAKE_SLOTS,
    HANDSHAKE_TIMEOUT,
    STREAM_SLACK,
    STREAMS_PER_CONNECTION,
    YAMUX_WINDOW,
    Allowed,
    Counters,
    Gate,
    check_bindable,
)
from .p2p.node import NatSettings, Node
from .p2p.relay import RelayLimits
from .p2p.streams import why
from .p2p.updates import (
    COOLDOWN,
    LENGTH_BYTES,
    MESSAGE_BURST,
    MESSAGE_RATE,
    MIN_RATE,
    PROTOCOL,
    READ_TIMEOUT_BASE,
    STREAMS_PER_SENDER,
    read_deadline,
)
from .transport import QueuedTransport
from .trio_bridge import TrioBridge

__all__ = ["Libp2pTransport", "DialFailed", "RelayLimits", "Counters", "PROTOCOL", "LENGTH_BYTES",
           "MESSAGE_BURST", "MESSAGE_RATE", "COOLDOWN", "MIN_RATE", "READ_TIMEOUT_BASE", "STREAMS_PER_SENDER",
           "STREAMS_PER_CONNECTION", "CONNECTIONS_PER_PEER", "HANDSHAKE_SLOTS", "HANDSHAKE_TIMEOUT",
           "STREAM_SLACK", "YAMUX_WINDOW", "DIAL_TIMEOUT", "BACKOFF_START"]

log = logging.getLogger("gossipfl.libp2p")


class Libp2pTransport(QueuedTransport):
    def __init__(self, identity: Identity, listen: list[str], neighbours: Mapping[str, str | None],
                 *, max_size: int = 64 * 1024 * 1024, inbox: int = 256, mdns: bool = False,
                 allowed: Allowed | None = None,
                 relays: list[str] | tuple[str, ...] = (), reachability: str = "auto", hole_punch: bool = True,
                 announce: list[str] | tuple[str, ...] = (), serve_relay: bool | RelayLimits = False,
                 relay_for: Allowed | None = None, reconnect_cap: float = 5.0, state_dir=None,
                 min_link_kbps: float = 0.0):
        """`max_size`: the largest message read from anyone (reads are bounded per sender); `allowed`:
        who may connect (a live set); the NAT parameters are described in gossip/p2p/;
        `min_link_kbps`: the slowest link a neighbour's whole update must cross within the read
        deadline (0: MIN_RATE, 1 MB/s)."""
        if max_size < 1:
            raise TransportError(f"max_size must be a positive number of bytes, got {max_size}")
        if not min_link_kbps >= 0:
            raise TransportError(f"transport.min_link_kbps must be >= 0, got {min_link_kbps}")
        try:
            parsed = tuple(Relay.parse(r) for r in relays)
        except ValueError as exc:
            raise TransportError(f"transport.relays: {exc}") from None
        if reachability not in ("auto", "public", "private"):
            raise TransportError(f"transport.reachability must be auto, public or private, got {reachability!r}")
        self.identity = identity
        self.peer_id = identity.peer_id
        self.listen = list(listen)
        self.neighbour_addrs = dict(neighbours)
        self.max_size = max_size
        self.mdns = mdns
        self.counters = Counters()
        relay_ids = {r.peer_id for r in parsed}
        limits = RelayLimits() if serve_relay is True else (serve_relay or None)
        relay_pred = None if relay_for is None else (relay_for if callable(relay_for) else relay_for.__contains__)
        if limits is not None:
            def also(pid: str) -> bool:
                return pid in relay_ids or bool(self._node.relays_for(pid))
        else:
            def also(pid: str) -> bool:
                return pid in relay_ids
        self.gate = Gate(set(self.neighbour_addrs) if allowed is None else allowed, also)
        self.settings = NatSettings(relays=parsed, reachability=reachability, hole_punch=hole_punch,
                                    announce=tuple(announce), serve_relay=limits, relay_for=relay_pred,
                                    reconnect_cap=reconnect_cap,
                                    state_dir=Path(state_dir) if state_dir is not None else None,
                                    min_rate=min_link_kbps * 1000 / 8 if min_link_kbps else MIN_RATE)
        super().__init__(inbox)
        self.bridge = TrioBridge(f"libp2p-{identity.peer_id[-6:]}")
        self.loop: asyncio.AbstractEventLoop | None = None
        self._backoff = Backoff(reconnect_cap)
        self._node = Node(identity, self.listen, self.gate, self.counters, max_size, self.settings,
                          deliver=self._from_trio, on_trusted=self._trusted, on_failed=self._failed, mdns=mdns)
        self._node.set_neighbours(self.neighbour_addrs)
        self._addrs: list[str] = []
        self.closed = True

    @property
    def allowed(self) -> Allowed:
        return self.gate.allowed

    @allowed.setter
    def allowed(self, value: Allowed) -> None:
        self.gate.allowed = value

    @property
    def host(self):
        return self._node.host

    @property
    def node(self) -> Node:
        return self._node

    @property
    def refused_streams(self) -> int:
        return self.counters.refused_streams

    @property
    def read_deadline(self) -> float:
        """Seconds a whole message may take: fixed by max_size, not by what a sender declares."""
        return read_deadline(self.max_size, self.settings.min_rate)

    @property
    def reachability(self) -> str:
        return self._node.reachability.status

    def is_allowed(self, peer_id: str) -> bool:
        return self.gate.may_send(peer_id)

    # --- asyncio side ------------------------------------------------------------------

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.queue = asyncio.Queue(maxsize=self.queue.maxsize)
        for addr in self.listen:
            check_bindable(addr)
        self.bridge.start()
        try:
            self._addrs = await self.bridge.call(self._node.start, self.bridge.spawn)
        except Exception as exc:
            self.bridge.stop()
            raise TransportError(f"libp2p cannot listen on {', '.join(self.listen)}: {why(exc)}") from None
        self.closed = False

    def addresses(self) -> list[str]:
        return list(self._addrs)

    async def set_neighbours(self, addrs: Mapping[str, str | None]) -> None:
        """Fleet membership changed the neighbours: dial the new ones at their addresses."""
        self.neighbour_addrs = dict(addrs)
        if self.closed:
            self._node.set_neighbours(self.neighbour_addrs)
            return

        async def apply() -> None:
            self._node.set_neighbours(self.neighbour_addrs)

        await self.bridge.call(apply)

    async def send(self, peer_id: str, data: bytes) -> bool:
        if self.closed or not self._backoff.ready(peer_id):
            return False
        try:
            await self.bridge.call(self._node.send, peer_id, data)
        except DialFailed as exc:
            delay = self._backoff.failed(peer_id)
            log.warning("cannot reach %s (%s); retrying after %.1fs", peer_id, why(exc), delay)
            return False
        except Exception as exc:
            log.warning("send to %s failed: %s", peer_id, why(exc))
            return False
        self._backoff.clear(peer_id)
        return True

    async def links(self) -> dict[str, str | None]:
        """How each neighbour is connected now: "direct", "hole-punched", "relayed" or None."""
        if self.closed:
            return {pid: None for pid in self.neighbour_addrs}

        async def get() -> dict:
            return self._node.links(list(self.neighbour_addrs))

        return await self.bridge.call(get)

    async def connectivity(self) -> dict:
        """Reachability, the path to each neighbour, our announced addresses, our reservations,
        the counters and (when serving as a relay) its metrics: for logs, `fleet status` and
        metrics. (`status(info)`, the Transport hook to publish the peer's status, stays a no-op:
        libp2p has no place for it.)"""
        if self.closed:
            return {"reachability": self.reachability, "links": {pid: None for pid in self.neighbour_addrs}}

        async def get() -> dict:
            return self._node.status(list(self.neighbour_addrs))

        return await self.bridge.call(get)

    async def close(self, reason: str = "stopped") -> None:
        if self.closed:
            return
        self.closed = True
        try:
            await asyncio.wait_for(self.bridge.call(self._node.stop), 10)
        except Exception as exc:  # the host is going away either way; the trio thread is stopped next
            log.debug("libp2p host did not stop cleanly: %s", why(exc))
        await asyncio.to_thread(self.bridge.stop)
        self._end()

    # --- from the trio thread ----------------------------------------------------------

    def _from_trio(self, sender: str, body: bytearray) -> None:
        if self.loop is not None and not self.closed:
            self.loop.call_soon_threadsafe(self._deliver, sender, body)  # no copy: updates are large

    def _trusted(self, peer_id: str) -> None:
        """A neighbour just connected to us: dial it at once, whatever the backoff said."""
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self._backoff.clear, peer_id)

