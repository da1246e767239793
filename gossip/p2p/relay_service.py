"""A fleet relay on a host of its own: what `gossipfl relay start` and bench scripts run.

    relay = RelayService(identity, ["/ip4/0.0.0.0/tcp/4001"], allowed=members,
                         limits=RelayLimits(max_reservations=128, circuit_bytes=1 << 30))
    await relay.start(); relay.addresses(); relay.metrics(); relay.set_allowed(new_members)
    await relay.close()

`allowed`: the fleet's PeerIds (a set read live, or a predicate): who may connect, reserve a
slot, and be either end of a circuit. `set_allowed` swaps it at any time (membership records:
a revoked PeerId loses its reservation, its circuits and its connection at once). Strangers
never get a stream: the relay's host has the same trust gate as a peer (closed right after
Noise, gossip/p2p/host.py), and the same inbound admission. `limits`: RelayLimits
(gossip/p2p/relay.py). `dial_back`: also answer members' reachability requests. `metrics()`:
reservations (in force), circuits (open), circuits_total, bytes relayed, connected_peers,
refused (by reason), refused_connections. The relay process never imports torch.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import multiaddr
import trio

from ..identity import Identity
from ..trio_bridge import TrioBridge
from .host import Allowed, Counters, Gate, Hardening, build_host, check_bindable, close_swarm
from .relay import RelayLimits, fleet_relay, honest_autonat
from .streams import close_quietly, why

log = logging.getLogger("gossipfl.relay")


class RelayService:
    """A fleet relay on its own host, in its own trio thread, driven from asyncio (see the
    module doc). `dial_back`: also answer reachability requests of members."""

    def __init__(self, identity: Identity, listen: list[str], allowed: Allowed, *,
                 limits: RelayLimits | None = None, dial_back: bool = True):
        self.identity, self.listen = identity, list(listen)
        self.limits = limits or RelayLimits()
        self.dial_back = dial_back
        self.counters = Counters()
        self.gate = Gate(allowed)
        self.bridge = TrioBridge(f"relay-{identity.peer_id[-6:]}")
        self.relay: Any = None  # the fleet relay and the libp2p host once started (py-libp2p is not typed)
        self.host: Any = None
        self._addrs: list[str] = []
        self._stop: trio.Event | None = None
        self._nursery: trio.Nursery | None = None

    async def start(self) -> None:
        from ..errors import TransportError

        for addr in self.listen:
            check_bindable(addr)
        self.bridge.start()
        try:
            self._addrs = await self.bridge.call(self._trio_start)
        except Exception as exc:
            self.bridge.stop()
            raise TransportError(f"the relay cannot listen on {', '.join(self.listen)}: {why(exc)}") from None

    def addresses(self) -> list[str]:
        return list(self._addrs)

    def set_allowed(self, allowed: Allowed) -> None:
        """The fleet's members changed: applies to new requests at once; reservations, circuits
        and connections of removed members end on the relay's thread."""
        self.gate.allowed = allowed
        if self.bridge._token is not None:
            self.bridge.spawn(self._trio_prune)

    def metrics(self) -> dict:
        relay = self.relay
        if relay is None:
            return {}
        connected = len(self.host.get_network().connections) if self.host is not None else 0
        return {"reservations": relay.active_reservations(), "circuits": len(relay.circuits),
                "circuits_total": relay.circuits_total, "bytes": relay.bytes, "connected_peers": connected,
                "refused": dict(relay.refused), "refused_connections": self.counters.refused_peers}

    async def close(self) -> None:
        if self._stop is not None:
            try:
                await asyncio.wait_for(self.bridge.call(self._trio_stop), 10)
            except Exception as exc:
                log.debug("the relay did not stop cleanly: %s", why(exc))
        await asyncio.to_thread(self.bridge.stop)

    async def _trio_start(self) -> list[str]:
        from libp2p.tools.anyio_service import background_trio_service

        self.host = build_host(self.identity, self.listen)
        limits = self.limits
        self.relay = fleet_relay(self.host, limits, self.gate.may_send)
        if self.dial_back:
            honest_autonat(self.host)
        started, stop, self._finished = trio.Event(), trio.Event(), trio.Event()
        self._stop = stop
        failure: list[BaseException] = []

        async def run() -> None:
            try:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    hardening = Hardening(self.host.get_network(), self.gate, self.counters,
                                          bounds_for=lambda pid: limits.bounds(),
                                          on_trusted=lambda pid: None, spawn=nursery.start_soon)
                    hardening.install()
                    try:
                        async with self.host.run([multiaddr.Multiaddr(a) for a in self.listen]):
                            hardening.guard_listeners()
                            async with background_trio_service(self.relay):
                                started.set()
                                await stop.wait()
                                await close_swarm(self.host)
                    finally:
                        hardening.close()
                    nursery.cancel_scope.cancel()
            except BaseException as exc:  # noqa: BLE001 - reported through `failure`
                failure.append(exc)
                started.set()
                if isinstance(exc, trio.Cancelled):
                    raise
            finally:
                self._finished.set()

        self.bridge.spawn(run)
        await started.wait()
        if failure:
            raise failure[0]
        return [a if "/p2p/" in a else f"{a}/p2p/{self.identity.peer_id}" for a in map(str, self.host.get_addrs())]

    async def _trio_prune(self) -> None:
        from libp2p.peer.id import ID

        for pid in self.relay.prune() if self.relay is not None else []:
            for conn in list(self.host.get_network().connections.get(ID.from_base58(pid), [])):
                await close_quietly(conn)
        for pid, conns in list(self.host.get_network().connections.items()):
            if not self.gate.may_connect(pid.to_base58()):
                for conn in list(conns):
                    await close_quietly(conn)

    async def _trio_stop(self) -> None:
        if self._stop is not None:
            self._stop.set()
            with trio.move_on_after(5):
                await self._finished.wait()
