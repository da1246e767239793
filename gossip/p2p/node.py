"""The trio side of Libp2pTransport: one host and the parts around it, wired together.

Started with `await node.start()` on the trio thread of a TrioBridge; afterwards `send`,
`set_neighbours`, `links`, `status` and `stop` run there too (the transport calls them
through the bridge). See gossip/libp2p_transport.py for the settings.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import multiaddr
import trio

from ..identity import Identity
from .announce import (
    CHECK_EVERY,
    Announcer,
    PushOnConnect,
    bound_addresses,
    own_addresses,
    safe_interfaces,
)
from .announce import PROTOCOL as ADDRS
from .circuits import Relay, is_relayed, stop_handler
from .dialer import Dialer
from .host import (
    STREAM_SLACK,
    STREAMS_PER_CONNECTION,
    YAMUX_WINDOW,
    Bounds,
    Counters,
    Gate,
    Hardening,
    build_host,
    close_swarm,
    run_services,
)
from .nat import Paths, Reachability, ReservationKeeper, hole_punching
from .records import AddressBook, AddressRecord, SeqCounter, moved_from
from .relay import RelayLimits, fleet_relay, honest_autonat
from .streams import close_quietly, why
from .updates import LENGTH_BYTES, MIN_RATE, UpdateReceiver, write_update
from .updates import PROTOCOL as UPDATES

SEND_TIMEOUT = 120.0
STOP_TIMEOUT = 5.0
RELAY_STREAMS = 72  # streams on our connection to a relay: one per relayed neighbour, and a few
REACHABILITY_EVERY = 300.0
SEQ_FILE, BOOK_FILE = "address-seq", "addresses.json"

log = logging.getLogger("gossipfl.libp2p")


@dataclass(frozen=True)
class NatSettings:
    relays: tuple[Relay, ...] = ()
    reachability: str = "auto"
    hole_punch: bool = True
    announce: tuple[str, ...] = ()
    serve_relay: RelayLimits | None = None  # None: not a relay for others
    relay_for: Callable[[str], bool] | None = None  # who we relay for (default: who may connect)
    reconnect_cap: float = 5.0
    state_dir: Path | None = None
    min_rate: float = MIN_RATE  # bytes/s the slowest neighbour's link carries: sets the read deadline


@dataclass
class Node:
    identity: Identity
    listen: list[str]
    gate: Gate
    counters: Counters
    max_size: int
    settings: NatSettings
    deliver: Callable[[str, bytearray], None]  # trio thread
    on_trusted: Callable[[str], None]  # trio thread
    on_failed: Callable[[BaseException], None]  # the host died after it started (trio thread)
    mdns: bool = False
    book: AddressBook = field(default_factory=AddressBook)

    def __post_init__(self) -> None:
        s = self.settings
        self.relay_ids = {r.peer_id for r in s.relays}
        self.reachability = Reachability(s.reachability)
        self.receiver = UpdateReceiver(self.gate, self.counters, self.max_size, self.deliver, s.min_rate)
        self.host: Any = None  # the libp2p host once started (py-libp2p is not typed)
        self.relay = None  # FleetRelay when serving
        self.keeper: ReservationKeeper | None = None
        self.bound: list[str] = []
        self._nursery: trio.Nursery | None = None
        self._stop: trio.Event | None = None
        self._addresses_changed = trio.Event()
        self._interfaces: list[str] = []

    # --- who and how much -----------------------------------------------------------------

    def is_relay(self, peer_id: str) -> bool:
        return peer_id in self.relay_ids

    def relays_for(self, peer_id: str) -> bool:
        """Whom we serve as a relay (may connect to us, never send updates)."""
        s = self.settings
        if s.serve_relay is None:
            return False
        return self.gate.may_send(peer_id) if s.relay_for is None else bool(s.relay_for(peer_id))

    def bounds_for(self, peer_id: str) -> Bounds:
        per_stream = self.max_size + LENGTH_BYTES + STREAM_SLACK
        bounds = Bounds(STREAMS_PER_CONNECTION, per_stream)
        if self.is_relay(peer_id):  # its streams carry our circuits: whole connections
            bounds = Bounds(RELAY_STREAMS, max(per_stream, YAMUX_WINDOW + STREAM_SLACK), YAMUX_WINDOW)
        if self.settings.serve_relay is not None and self.relays_for(peer_id):
            served = self.settings.serve_relay.bounds()
            bounds = Bounds(max(bounds.max_streams, served.max_streams), max(bounds.per_stream, served.per_stream),
                            YAMUX_WINDOW)
        return bounds

    # --- start and stop -----------------------------------------------------------------

    async def start(self, spawn: Callable) -> list[str]:
        """Build, harden and run the host (its task started with `spawn`); our addresses."""
        from libp2p.tools.anyio_service import background_trio_service

        s = self.settings
        if s.state_dir is not None:
            s.state_dir.mkdir(parents=True, exist_ok=True)
        self.seq = SeqCounter(s.state_dir / SEQ_FILE if s.state_dir is not None else None)
        self.host = host = build_host(self.identity, self.listen, mdns=self.mdns)
        if s.state_dir is not None:
            kept = self.book.load(s.state_dir / BOOK_FILE, list(self.book.neighbours))
            if kept:
                log.info("kept %d neighbours' address records from %s", kept, s.state_dir / BOOK_FILE)
        self.paths = Paths(host)
        self.dialer = Dialer(host, self.book, list(s.relays), discovered=self.mdns)
        self.announcer = Announcer(self.identity, self.seq, self.book, self.gate.may_send, self._learned)
        host.set_stream_handler(UPDATES, self.receiver.handle)
        host.set_stream_handler(ADDRS, self.announcer.handle)
        stop = stop_handler(host, self.is_relay, self.counters)
        services = [stop]
        if s.serve_relay is not None:
            self.relay = fleet_relay(host, s.serve_relay, self.relays_for, on_stop=stop._handle_stop_stream)
            services = [self.relay]
            honest_autonat(host)
        self.dcutr = None
        if s.hole_punch and s.relays:
            self.dcutr = hole_punching(host, self.paths.mark_punched)
            services.append(self.dcutr)
        if s.relays and s.reachability != "public":
            self.keeper = ReservationKeeper(host, list(s.relays), on_change=lambda: self._addresses_changed.set(),
                                            retry_cap=s.reconnect_cap)
        started, stop, self._finished = trio.Event(), trio.Event(), trio.Event()
        self._stop = stop
        failure: list[BaseException] = []

        async def run() -> None:
            try:
                async with trio.open_nursery() as nursery:
                    hardening = Hardening(host.get_network(), self.gate, self.counters, bounds_for=self.bounds_for,
                                          on_trusted=self.on_trusted, spawn=nursery.start_soon)
                    hardening.install()
                    host.get_network().register_notifee(PushOnConnect(self._connected))
                    try:
                        async with host.run([multiaddr.Multiaddr(a) for a in self.listen]):
                            hardening.guard_listeners()
                            async with run_services(services, background_trio_service):
                                self.bound = bound_addresses(host, self.identity.peer_id)
                                self._refresh_record()
                                async with trio.open_nursery() as tasks:  # ours: ended before the goodbyes
                                    self._nursery = tasks
                                    if self.keeper is not None:
                                        tasks.start_soon(self.keeper.run)
                                    tasks.start_soon(self._watch_addresses)
                                    if s.relays and s.reachability == "auto":
                                        tasks.start_soon(self._check_reachability)
                                    started.set()
                                    await stop.wait()
                                    self._nursery = None  # no reconnection to a relay, no push from here on
                                    tasks.cancel_scope.cancel()
                                await close_swarm(host)
                    finally:
                        hardening.close()  # after the listeners closed: nothing waits on its sockets
                    nursery.cancel_scope.cancel()
            except BaseException as exc:  # noqa: BLE001 - reported through `failure` or on_failed
                if started.is_set() and not isinstance(exc, trio.Cancelled) and not stop.is_set():
                    self.on_failed(exc)  # the host died after it started: the peer must know
                failure.append(exc)
                started.set()
                if isinstance(exc, trio.Cancelled):
                    raise
            finally:
                self._nursery = None
                self._finished.set()

        spawn(run)
        await started.wait()
        if failure:
            raise failure[0]
        return list(self.bound)

    async def stop(self) -> None:
        """Close the host (its connections end with a goodbye, not by the thread's end)."""
        if self._stop is not None:
            self._stop.set()
            with trio.move_on_after(STOP_TIMEOUT):
                await self._finished.wait()

    # --- sending ------------------------------------------------------------------------

    async def send(self, peer_id: str, data) -> None:
        from libp2p.peer.id import ID

        pid = ID.from_base58(peer_id)
        with trio.fail_after(SEND_TIMEOUT):
            for attempt in (1, 2):
                await self.dialer.connect(peer_id, fresh=attempt == 2)
                try:
                    stream = await self.host.new_stream(pid, [UPDATES])
                except Exception:
                    if attempt == 2:
                        raise
                    continue  # a stale or half-open connection: drop it and dial again
                await write_update(stream, data)
                return

    def set_neighbours(self, addrs: dict[str, str | None]) -> None:
        for pid in list(self.book.neighbours):
            if pid not in addrs:
                self.book.forget(pid)
        for pid, addr in addrs.items():
            self.book.configure(pid, addr)

    # --- what we report ------------------------------------------------------------------

    def links(self, peers) -> dict[str, str | None]:
        return {pid: self.paths.of(pid) for pid in peers}

    def status(self, peers) -> dict:
        out = {"reachability": self.reachability.status, "links": self.links(peers),
               "addresses": list(self.announcer.addrs or []),
               "neighbour_addresses": {pid: self.book.direct(pid) for pid in peers},
               "counters": dict(vars(self.counters))}
        if self.dcutr is not None:
            out["hole_punching"] = {pid.to_base58(): {"attempts": n, "running": pid in self.dcutr._in_progress}
                                    for pid, n in self.dcutr._hole_punch_attempts.items()}
        if self.keeper is not None:
            out["reserved_on"] = [r.peer_id for r in self.keeper.reserved()]
        if self.relay is not None:
            out["relay"] = {"reservations": self.relay.active_reservations(), "circuits": len(self.relay.circuits),
                            "circuits_total": self.relay.circuits_total, "bytes": self.relay.bytes}
        return out

    # --- addresses ----------------------------------------------------------------------

    def _refresh_record(self) -> str | None:
        s = self.settings
        reserved = self.keeper.reserved() if self.keeper is not None else []
        interfaces = safe_interfaces()
        lost = set(self._interfaces) - set(interfaces)
        self._interfaces = interfaces
        if lost and self._nursery is not None:
            self._nursery.start_soon(self._drop_direct_connections, sorted(lost))
        addrs = own_addresses(self.bound, list(s.announce), reserved,
                              direct=self.reachability.status != "private", interfaces=interfaces)
        return self.announcer.update(addrs)

    async def _drop_direct_connections(self, lost: list[str]) -> None:
        """An address of ours is gone (DHCP, a new cellular session): connections made from it
        are dead without knowing it, and would hold sends until a protocol timeout. Close every
        direct connection; neighbours and relays are dialled again from the new address."""
        log.info("address %s is gone: closing our direct connections", ", ".join(lost))
        for conns in list(self.host.get_network().connections.values()):
            for conn in list(conns):
                if not is_relayed(conn):
                    await close_quietly(conn)

    async def _drop_connections_to(self, peer_id: str, gone: set[str]) -> None:
        """A neighbour's new record says it left these IPs: our direct connections to them are
        dead without knowing it and would hold our sends until a stream times out. Close
        them; the next send dials an address of the record."""
        from libp2p.peer.id import ID

        for conn in list(self.host.get_network().connections.get(ID.from_base58(peer_id), [])):
            try:
                remote = conn.muxed_conn.get_remote_address()
            except Exception:
                continue
            if not is_relayed(conn) and remote and str(remote[0]) in gone:
                log.info("%s left %s: closing our connection to it there", peer_id, remote[0])
                await close_quietly(conn)

    async def _watch_addresses(self) -> None:
        """Reseal and push our record when our addresses change (interfaces, reservations)."""
        while True:
            with trio.move_on_after(CHECK_EVERY):
                await self._addresses_changed.wait()
            self._addresses_changed = trio.Event()
            change = self._refresh_record()
            if change is not None:
                self._push_all(dial=change == "removed")

    def _push_all(self, dial: bool) -> None:
        """Our record to every neighbour. When an address of ours is gone (`dial`), also to those
        we have no connection to, dialling them (directly or through a relay): a neighbour that
        holds only the dead address learns the new one now, not when it next fails to dial.
        New addresses only reach the neighbours we are connected to (and the others on connect)."""
        for pid in list(self.book.neighbours):
            if self.gate.may_send(pid) and self._nursery is not None:
                self._nursery.start_soon(self._push_to, pid, dial)

    async def _push_to(self, peer_id: str, dial: bool) -> None:
        if not dial:
            if self.paths.of(peer_id) is not None:
                await self.announcer.push(self.host, peer_id)
            return
        for fresh in (False, True):  # a connection that died unnoticed is dropped and dialled again
            try:
                await self.dialer.connect(peer_id, fresh=fresh)
            except Exception as exc:  # unreachable now: it gets the record when a connection comes up
                log.debug("cannot push our record to %s: %s", peer_id, why(exc))
                return
            if await self.announcer.push(self.host, peer_id):
                return

    def _connected(self, peer_id: str) -> None:
        """A new connection (any path): a neighbour gets our record on it."""
        if self.gate.may_send(peer_id) and self._nursery is not None:
            self._nursery.start_soon(self.announcer.push, self.host, peer_id)

    def _learned(self, record: AddressRecord, previous: AddressRecord | None) -> None:
        gone = moved_from(previous, record)
        if gone and self._nursery is not None:
            self._nursery.start_soon(self._drop_connections_to, record.peer_id, gone)
        if self.settings.state_dir is not None:
            try:
                self.book.save(self.settings.state_dir / BOOK_FILE)
            except OSError as exc:
                log.warning("cannot save neighbours' addresses in %s: %s", self.settings.state_dir, exc.strerror)

    async def _check_reachability(self) -> None:
        """Ask the relays whether they can dial us, at start and every REACHABILITY_EVERY s."""
        while True:
            before = self.reachability.status
            candidates = self._dialback_candidates()
            if candidates:
                await self.reachability.check(self.host, list(self.settings.relays), candidates)
            if self.reachability.status != before:
                self._addresses_changed.set()
            await trio.sleep(REACHABILITY_EVERY if self.reachability.status != "unknown" else 10.0)

    def _dialback_candidates(self) -> list[str]:
        """Our direct addresses, and each IP a relay observed us at with our listen port."""
        ports = [a.split("/tcp/")[1].split("/")[0] for a in self.bound if "/tcp/" in a]
        out = [a for a in own_addresses(self.bound, list(self.settings.announce), [], direct=True,
                                        interfaces=safe_interfaces()) if "/p2p-circuit" not in a]
        manager = getattr(self.host, "_observed_addr_manager", None)
        try:
            observed = manager.addrs(min_observers=1) if manager is not None else []
        except Exception:
            observed = []
        for a in observed:
            try:
                ip = a.value_for_protocol("ip4")
            except Exception:
                continue
            out += [f"/ip4/{ip}/tcp/{port}" for port in ports]
        return list(dict.fromkeys(out))
