"""A py-libp2p host for gossipfl, and the hardening of its swarm: who may connect, what a
connection may buffer, and how inbound connections are admitted.

`build_host(identity, listen)`: TCP + Noise + yamux with the peer's own Ed25519 key, so the
PeerId that Noise authenticates is the PeerId that signs updates. Noise is the only security
protocol offered (py-libp2p would otherwise also accept /plaintext/2.0.0, where anyone can
claim any PeerId).

`Hardening(swarm, gate, ...).install()` changes instance attributes of that one swarm only
(py-libp2p's classes stay as they are):
- the trust gate: right after the Noise handshake of every inbound connection (direct,
  relayed through a circuit, or hole-punched), `gate.may_connect(PeerId)` must hold, else the
  connection is closed before the muxer is negotiated: no stream, no read slot;
- the yamux bounds of gossip/yamux_guard.py on every connection, with `bounds_for(PeerId)`:
  STREAMS_PER_CONNECTION streams for a neighbour, more for a relay (each relayed neighbour
  is one more stream on our single connection to it);
- the inbound path for TCP connections: a connection reaches trio only once it has started
  the multistream header (gossip/p2p/acceptor.py: silent ones cost an accept and a close,
  never a trio task); then it runs the handshake in one of HANDSHAKE_SLOTS slots within
  HANDSHAKE_TIMEOUT, a newcomer evicting the oldest handshake of the source address holding
  the most (gossip/p2p/admission.py). The listen backlog is raised from py-libp2p's 128 to
  BACKLOG. A connection occupies nothing after it closes (py-libp2p's own path held a slot of
  a 250-slot limiter for the life of the swarm; it is not used).
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import NamedTuple

import multiaddr
import trio

from ..errors import TransportError
from ..identity import Identity
from ..yamux_guard import guard as guard_yamux
from .acceptor import QuietAcceptor
from .admission import Slots
from .streams import close_quietly, why

STREAMS_PER_CONNECTION = 8  # update streams both ways, identify, ping, addresses, hole punching
CONNECTIONS_PER_PEER = 3
STREAM_SLACK = 64 * 1024  # protocol negotiation and one yamux frame on top of a message
YAMUX_WINDOW = 256 * 1024
HANDSHAKE_SLOTS = 64
HANDSHAKE_TIMEOUT = 5.0
BACKLOG = 1024

log = logging.getLogger("gossipfl.libp2p")

Allowed = Collection[str] | Callable[[str], bool]


@dataclass
class Counters:
    handshakes: int = 0  # inbound handshakes started (connections that spoke multistream)
    refused_peers: int = 0  # connections closed after the handshake: not allowed
    refused_streams: int = 0  # streams reset: the sender had two open
    dropped_handshakes: int = 0  # a handshake dropped for a newer one (slots full)
    dropped_silent: int = 0  # connections closed before they started the protocol (silent, junk, evicted)
    timeouts: int = 0  # streams reset at the read deadline
    violations: int = 0  # connections closed for a protocol violation
    refused_circuits: int = 0  # relayed connections offered by a peer that is not one of our relays


class Bounds(NamedTuple):
    max_streams: int
    per_stream: int  # bytes one stream may buffer unread
    max_window: int | None = None  # a stream's receive window stays this small (relayed circuits)

    @property
    def per_conn(self) -> int:
        return self.per_stream + (self.max_streams - 1) * YAMUX_WINDOW


class Gate:
    """Who may connect (checked right after Noise) and who may send updates, read at every
    check so membership changes apply at once. `allowed` (a set read live, or a predicate)
    may connect and send; `also_connect(PeerId)` may connect but never sends an update
    (our relays; the fleet's members when we serve as their relay). A sender that broke the
    message rate is refused both for a cooldown."""

    def __init__(self, allowed: Allowed, also_connect: Callable[[str], bool] | None = None):
        self.allowed = allowed
        self.also_connect = also_connect
        self._cooling: dict[str, float] = {}  # PeerId -> refused until (monotonic)

    def may_send(self, peer_id: str) -> bool:
        until = self._cooling.get(peer_id)
        if until is not None:
            if time.monotonic() < until:
                return False
            self._cooling.pop(peer_id, None)
        return _holds(self.allowed, peer_id)

    def may_connect(self, peer_id: str) -> bool:
        if self.may_send(peer_id):
            return True
        if peer_id in self._cooling or self.also_connect is None:
            return False
        return _holds(self.also_connect, peer_id)

    def cool(self, peer_id: str, seconds: float) -> None:
        self._cooling[peer_id] = time.monotonic() + seconds


def _holds(allowed: Allowed | Callable[[str], bool], peer_id: str) -> bool:
    try:
        return bool(allowed(peer_id)) if callable(allowed) else peer_id in allowed
    except Exception:  # a broken predicate trusts nobody
        log.exception("the allowed() check failed for %s", peer_id)
        return False


def build_host(identity: Identity, listen: list[str], *, mdns: bool = False):
    """A py-libp2p host with the peer's key: Noise only, yamux; not yet running."""
    from libp2p import new_host
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
    from libp2p.security.noise.transport import PROTOCOL_ID as NOISE
    from libp2p.security.noise.transport import Transport as Noise

    key_pair = create_new_key_pair(identity.seed)
    noise_only = {NOISE: Noise(key_pair, noise_privkey=create_x25519_key_pair().private_key)}
    host = new_host(key_pair=key_pair, muxer_preference="YAMUX", enable_mDNS=mdns, sec_opt=noise_only,
                    listen_addrs=[multiaddr.Multiaddr(a) for a in listen])
    if host.get_id().to_base58() != identity.peer_id:
        raise TransportError("libp2p derived a different PeerId from the key")
    return host


async def close_swarm(host, timeout: float = 5.0) -> None:
    """Close every connection with a goodbye before the host stops: leaving host.run only
    cancels their tasks, and a relay then keeps our reservation and circuits until TCP notices."""
    with trio.move_on_after(timeout):
        try:
            await host.get_network().close()
        except Exception as exc:
            log.debug("closing the swarm failed: %s", why(exc))


class Hardening:
    """The gate, the yamux bounds and the inbound admission of one swarm (see the module doc).
    `on_trusted(PeerId)` is called on the trio thread when an allowed peer connected to us;
    `spawn(fn, *args)` starts a trio task (closing a connection that broke a bound)."""

    def __init__(self, swarm, gate: Gate, counters: Counters, *, bounds_for: Callable[[str], Bounds],
                 on_trusted: Callable[[str], None], spawn: Callable):
        self.swarm, self.gate, self.counters = swarm, gate, counters
        self.bounds_for, self.on_trusted, self.spawn = bounds_for, on_trusted, spawn
        self.handshakes: Slots[trio.CancelScope] = Slots(HANDSHAKE_SLOTS)
        self.acceptors: list[QuietAcceptor] = []

    def install(self) -> None:
        from libp2p.transport.exceptions import SecurityUpgradeFailure

        swarm = self.swarm
        swarm.set_resource_manager(None)  # its limits are global, not per neighbour; ours replace them
        swarm.connection_config.max_connections_per_peer = CONNECTIONS_PER_PEER
        # py-libp2p's auto-connector dials peers of its peerstore by itself whenever connections
        # drop (to whatever addresses identify put there, a revoked neighbour's too): only our
        # dialer decides whom to dial, how and when.
        swarm.auto_connector.maybe_connect = _never
        upgrader = swarm.upgrader
        upgrade_security, upgrade_connection = upgrader.upgrade_security, upgrader.upgrade_connection

        async def secure_then_check(raw_conn, is_initiator: bool, peer_id=None):
            secured = await upgrade_security(raw_conn, is_initiator, peer_id)
            if not is_initiator:
                remote = secured.get_remote_peer().to_base58()
                if not self.gate.may_connect(remote):
                    self.counters.refused_peers += 1
                    log.debug("closing a connection from %s: not a trusted neighbour", remote)
                    await close_quietly(secured)
                    raise SecurityUpgradeFailure(f"{remote} is not a trusted neighbour")
                self.on_trusted(remote)
            return secured

        async def mux_then_bound(secured, peer_id):
            muxed = await upgrade_connection(secured, peer_id)
            b = self.bounds_for(peer_id.to_base58())
            guard_yamux(muxed, per_stream=b.per_stream, per_conn=b.per_conn, max_streams=b.max_streams,
                        on_violation=self.violated, max_window=b.max_window)
            return muxed

        upgrader.upgrade_security = secure_then_check
        upgrader.upgrade_connection = mux_then_bound
        swarm._handle_inbound_connection = self.inbound

    def guard_listeners(self) -> None:
        """Once the host listens: raise the listen backlog (py-libp2p's 128 drops the SYNs of
        honest neighbours in a burst, where a silent connection now costs us an accept and a
        close) and put a QuietAcceptor on every TCP listener."""
        for listener in list(self.swarm.listeners.values()):
            for sock_listener in getattr(listener, "listeners", []):
                try:
                    sock_listener.socket.listen(BACKLOG)
                    self.acceptors.append(QuietAcceptor(sock_listener, self.counters))
                except (OSError, AttributeError) as exc:
                    log.warning("cannot guard the listener %s: %s", sock_listener, why(exc))

    def close(self) -> None:
        for acceptor in self.acceptors:
            acceptor.close()
        self.acceptors.clear()

    async def inbound(self, read_write_closer, maddr) -> None:
        """The handshake in a bounded stage, then hold the socket exactly as long as the
        connection lives."""
        from libp2p.network.connection.raw_connection import RawConnection

        raw = RawConnection(read_write_closer, False)
        self.counters.handshakes += 1
        scope = trio.CancelScope(deadline=trio.current_time() + HANDSHAKE_TIMEOUT)
        evicted = self.handshakes.add(scope, _source_of(read_write_closer))
        if evicted is not None:
            evicted.cancel()
            self.counters.dropped_handshakes += 1
        muxed = None
        try:
            with scope:
                muxed = await self.swarm.upgrade_inbound_raw_conn(raw, maddr)
        except Exception as exc:
            log.debug("inbound connection on %s failed: %s", maddr, why(exc))
        finally:
            self.handshakes.remove(scope)
        if muxed is None:
            await close_quietly(raw)
            return
        await muxed.event_closed.wait()

    def violated(self, conn, reason: str) -> None:
        """Called by the yamux guard (synchronously, on the trio thread): close that connection."""
        from .streams import peer_of

        self.counters.violations += 1
        log.warning("closing the connection of %s: %s", peer_of(conn), reason)
        self.spawn(close_quietly, conn)


async def _never(*args, **kwargs) -> None:
    return None


def _source_of(read_write_closer) -> str:
    try:
        address = read_write_closer.get_remote_address()
        return str(address[0]) if address else "?"
    except Exception:
        return "?"


def check_bindable(addr: str) -> None:
    """Fail early and clearly when a listen port is taken (py-libp2p only logs it)."""
    try:
        ma = multiaddr.Multiaddr(addr)
        host = ma.value_for_protocol("ip4")
        port = int(ma.value_for_protocol("tcp"))
    except Exception:
        raise TransportError(f"transport.listen: {addr!r} is not an /ip4/HOST/tcp/PORT multiaddr") from None
    if port == 0:
        return
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise TransportError(f"cannot listen on {addr}: {(exc.strerror or str(exc)).lower()} "
                                 "(another process has this port?)") from None


class run_services:  # noqa: N801 - used like a function
    """`async with run_services(services, background_trio_service):` each py-libp2p service
    runs for the life of the block."""

    def __init__(self, services, runner):
        self.services, self.runner = services, runner

    async def __aenter__(self):
        from contextlib import AsyncExitStack

        self.stack = AsyncExitStack()
        await self.stack.__aenter__()
        for svc in self.services:
            await self.stack.enter_async_context(self.runner(svc))
        return self

    async def __aexit__(self, *exc):
        return await self.stack.__aexit__(*exc)
