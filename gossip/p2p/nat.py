"""Being reachable behind NAT: reservations kept on our relays, hole punching with our own
bookkeeping, and the reachability decision (trio side, each a task of the node's nursery).

- `ReservationKeeper`: for each configured relay, connect (our own dial), RESERVE, and do it
  again at half the reservation's time to live, at once when the connection to the relay
  closes, and when a liveness RESERVE every `keepalive` s fails (a connection left dead by an
  address change is noticed in seconds, not at TCP's retransmission timeout). Retries back
  off up to `retry_cap` (the caller's round interval). py-libp2p's own refresher wakes only
  30 s before expiry and never after a reconnection.
- `hole_punching(host, on_punched)`: py-libp2p's DCUtR (real for TCP in 0.8.1: both sides dial
  from their listen port; works through port-keeping NAT, fails through fully-random NAT, as
  it must) with a 3 s dial timeout, recording which direct connections a hole punch made:
  py-libp2p forgets that on any disconnect of the peer.
- `Reachability`: "public" or "private" from the config, or "auto": ask the relays to dial us
  back on a fresh connection (their HonestAutoNAT) at our observed address and listen port.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Callable

import multiaddr
import trio

from .circuits import HOP_TIMEOUT, Relay, Reservation, is_relayed, reserve
from .streams import close_quietly, why

MIN_RENEW = 5.0
HOLE_PUNCH_DIAL_TIMEOUT = 3
DIALBACK_QUERY_TIMEOUT = 15.0
REACHABILITY_MODES = ("auto", "public", "private")

log = logging.getLogger("gossipfl.libp2p")


async def connect_relay(host, relay: Relay, timeout: float = HOP_TIMEOUT):
    """A live connection to the relay: an existing one, else a fresh dial of its address."""
    from libp2p.peer.id import ID

    pid = ID.from_base58(relay.peer_id)
    network = host.get_network()
    for conn in network.connections.get(pid, []):
        if not conn.is_closed and not is_relayed(conn):
            return conn
    network.unblock_peer(pid)
    with trio.fail_after(timeout):
        return await network.dial_addr(multiaddr.Multiaddr(relay.addr), pid)


class ReservationKeeper:
    def __init__(self, host, relays: list[Relay], *, on_change: Callable[[], None],
                 retry_cap: float, keepalive: float = 10.0):
        self.host, self.relays = host, list(relays)
        self.on_change, self.retry_cap, self.keepalive = on_change, retry_cap, keepalive
        self.reservations: dict[str, Reservation] = {}
        self.renewals = 0

    def reserved(self) -> list[Relay]:
        now = time.time()
        return [r for r in self.relays if (res := self.reservations.get(r.peer_id)) and res.expires > now]

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            for relay in self.relays:
                nursery.start_soon(self._keep, relay)

    async def _keep(self, relay: Relay) -> None:
        delay = 0.5
        while True:
            try:
                conn = await connect_relay(self.host, relay)
                granted = await reserve(self.host, relay.peer_id)
                fresh = relay.peer_id not in self.reservations
                self.reservations[relay.peer_id] = granted
                self.renewals += 1
                if fresh:
                    log.info("reserved a slot on relay %s for %.0f s", relay.peer_id, granted.ttl)
                    self.on_change()
                delay = 0.5
                renew_at = trio.current_time() + max(MIN_RENEW, granted.ttl / 2)
                while trio.current_time() < renew_at:
                    with trio.move_on_after(min(self.keepalive, renew_at - trio.current_time())):
                        await conn.muxed_conn.event_closed.wait()
                        raise ConnectionError("the connection to the relay closed")
                    with trio.fail_after(HOP_TIMEOUT):
                        await reserve(self.host, relay.peer_id)  # liveness: idempotent on the relay
            except Exception as exc:
                if self.reservations.pop(relay.peer_id, None) is not None:
                    self.on_change()
                log.info("no reservation on relay %s (%s); retrying in %.1fs", relay.peer_id, why(exc), delay)
                await _drop_relay_connections(self.host, relay)
                await trio.sleep(delay)
                delay = min(self.retry_cap, delay * 2)


async def _drop_relay_connections(host, relay: Relay) -> None:
    from libp2p.peer.id import ID

    for conn in list(host.get_network().connections.get(ID.from_base58(relay.peer_id), [])):
        if not is_relayed(conn):
            await close_quietly(conn)


def hole_punching(host, on_punched: Callable[[str, object], None]):
    """A DCUtR service (run it with background_trio_service) that calls `on_punched(PeerId,
    muxed connection)` for each direct connection a hole punch made."""
    from libp2p.relay.circuit_v2.dcutr import DCUtRProtocol

    class HolePunch(DCUtRProtocol):
        async def _perform_hole_punch(self, peer_id, addrs, as_responder: bool = False) -> bool:
            before = _direct_muxed(self.host, peer_id)
            ok = await super()._perform_hole_punch(peer_id, addrs, as_responder)
            for muxed in _direct_muxed(self.host, peer_id):
                if all(muxed is not b for b in before):
                    on_punched(peer_id.to_base58(), muxed)
            return ok

    return HolePunch(host, dial_timeout=HOLE_PUNCH_DIAL_TIMEOUT)


def _direct_muxed(host, peer_id) -> list:
    conns = host.get_network().connections.get(peer_id, [])
    return [c.muxed_conn for c in conns if not c.is_closed and not is_relayed(c)]


class Paths:
    """Which path each peer's connection takes: "direct", "hole-punched" or "relayed"."""

    def __init__(self, host):
        self.host = host
        self.punched: weakref.WeakSet = weakref.WeakSet()

    def mark_punched(self, peer_id: str, muxed) -> None:
        log.info("hole punching gave a direct connection to %s", peer_id)
        self.punched.add(muxed)

    def of(self, peer_id: str) -> str | None:
        from libp2p.peer.id import ID

        kinds = set()
        for conn in self.host.get_network().connections.get(ID.from_base58(peer_id), []):
            if conn.is_closed:
                continue
            if is_relayed(conn):
                kinds.add("relayed")
            elif conn.muxed_conn in self.punched:
                kinds.add("hole-punched")
            else:
                kinds.add("direct")
        for kind in ("direct", "hole-punched", "relayed"):
            if kind in kinds:
                return kind
        return None


class Reachability:
    """`mode` "public" or "private" is taken as it is; "auto" asks the relays to dial us back."""

    def __init__(self, mode: str):
        if mode not in REACHABILITY_MODES:
            raise ValueError(f"reachability must be one of {', '.join(REACHABILITY_MODES)}, got {mode!r}")
        self.mode = mode
        self.status = mode if mode != "auto" else "unknown"
        self.checked_at: float | None = None

    async def check(self, host, relays: list[Relay], candidates: list[str]) -> str:
        """Ask each connected relay to dial `candidates` (our direct addresses); the first
        verdict wins: reached -> "public", a dial error -> "private"."""
        if self.mode != "auto":
            return self.status
        from libp2p.host.autonat.autonat import AutoNATService
        from libp2p.host.autonat.pb.autonat_pb2 import Message
        from libp2p.peer.id import ID

        client = AutoNATService(host, serve=False, confirmations=1)
        wanted = [multiaddr.Multiaddr(a).to_bytes() for a in candidates]
        for relay in relays:
            try:
                await connect_relay(host, relay)
                status, _ = await client.query_server(ID.from_base58(relay.peer_id), wanted,
                                                      timeout=DIALBACK_QUERY_TIMEOUT)
            except Exception as exc:
                log.debug("reachability check through %s failed: %s", relay.peer_id, why(exc))
                continue
            if status == Message.OK:
                verdict = "public"
            elif status == Message.E_DIAL_ERROR:
                verdict = "private"
            else:
                continue
            if verdict != self.status:
                log.info("reachability: %s (dial-back by relay %s)", verdict, relay.peer_id)
            self.status, self.checked_at = verdict, time.time()
            return verdict
        return self.status
