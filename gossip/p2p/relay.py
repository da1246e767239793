"""A Circuit Relay v2 relay for the fleet only, and an honest reachability dial-back (the
pieces; gossip/p2p/relay_service.py runs them on a host of their own, gossip/p2p/node.py on a
peer's host with serve_relay).

RelayLimits (all per relay): `max_reservations`, `reservation_ttl` s; per reservation
`max_circuits_per_peer` circuits at once (to that peer); per circuit `circuit_seconds`
(also when idle) and `circuit_bytes` (both directions together); `max_circuits` in all.
A relay sees who talks to whom, when and how much; it carries only Noise ciphertext
between the two ends and cannot read, alter or forge an update.

FleetRelay is py-libp2p 0.8.1's CircuitV2Protocol with these fixes (each measured, see
NOTES-libp2p-nat.md of branch nat):
1. RESERVE took the PeerId from the message: a client reserved slots for any PeerIds and
   filled `max_reservations`. Only the connection's own PeerId may reserve.
2. `_active_relays` was keyed by PeerId: ending one circuit closed other circuits of the same
   source or target. Each circuit now closes only its own two streams.
3. When one direction of a circuit ended, the other stayed blocked on its read (a local
   yamux reset does not wake a blocked reader): a refused circuit stayed open. Both
   directions now share a cancel scope.
4. The duration limit was checked only when data arrived: an idle circuit lived forever. Each
   circuit now runs under its deadline.
5. No allow-list and no total circuit cap (HopConfig is never read): both added, read per
   request.
6. A reservation of a peer no longer connected kept its slot until it expired (an hour): slots
   of disconnected peers are freed before each new reservation.
HonestAutoNAT: py-libp2p's dial-back used `host.connect`, which returns at once on the
connection the request came on: every client was told PUBLIC, NATed or not. It now dials a
fresh connection to the claimed address and closes it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import multiaddr
import trio

from .host import (
    STREAM_SLACK,
    YAMUX_WINDOW,
    Bounds,
)
from .streams import close_quietly, remote_peer, reset, why

DIALBACK_TIMEOUT = 5.0
# py-libp2p's hop logs these at ERROR for what a relay meets all the time (a client closing its
# hop stream after a reservation, a circuit ending from either side); they are dropped.
EXPECTED_HOP_NOISE = ("Error reading from hop stream", "Error sending status message",
                      "Unexpected error reading from stream", "Error relaying data",
                      "Error writing to destination stream", "Source stream closed")

log = logging.getLogger("gossipfl.relay")


class _DropExpectedHopNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(EXPECTED_HOP_NOISE)


_hop_log = logging.getLogger("libp2p.relay.circuit_v2.protocol")
if not any(isinstance(f, _DropExpectedHopNoise) for f in _hop_log.filters):
    _hop_log.addFilter(_DropExpectedHopNoise())


@dataclass(frozen=True)
class RelayLimits:
    max_reservations: int = 128
    reservation_ttl: int = 3600
    max_circuits: int = 512
    max_circuits_per_peer: int = 32
    circuit_seconds: int = 3600
    circuit_bytes: int = 1 << 30

    def __post_init__(self) -> None:
        for name in ("max_reservations", "reservation_ttl", "max_circuits", "max_circuits_per_peer",
                     "circuit_seconds", "circuit_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"relay limit {name} must be a positive whole number, got {value!r}")

    def library(self):
        from libp2p.relay.circuit_v2.resources import RelayLimits as LibraryLimits

        return LibraryLimits(duration=self.circuit_seconds, data=self.circuit_bytes,
                             max_circuit_conns=self.max_circuits_per_peer,
                             max_reservations=self.max_reservations, reservation_ttl=self.reservation_ttl)

    def bounds(self) -> Bounds:
        """yamux bounds of a member's connection to the relay: a stream per circuit it is an
        end of (as source and as target), each buffering at most a window."""
        return Bounds(2 * self.max_circuits_per_peer + 8, YAMUX_WINDOW + STREAM_SLACK, YAMUX_WINDOW)


@dataclass
class _Circuit:
    ends: tuple[str, str]
    scopes: list[trio.CancelScope] = field(default_factory=list)


class _NoSharedRelays(dict):
    """Replaces CircuitV2Protocol._active_relays: nothing is stored, so the library's per-PeerId
    cleanup never closes another circuit's streams (fix 2)."""

    def __setitem__(self, key, value) -> None:
        pass


class _Counted:
    """A relayed stream whose reads are counted into the relay's byte total."""

    def __init__(self, stream, relay):
        self._stream, self._relay = stream, relay

    async def read(self, n: int | None = None) -> bytes:
        data = await self._stream.read(n)
        self._relay.bytes += len(data)
        return data

    def __getattr__(self, name):
        return getattr(self._stream, name)


def fleet_relay(host, limits: RelayLimits, allowed: Callable[[str], bool], on_stop=None):
    """A FleetRelay service for `host` (run it with background_trio_service). `on_stop(stream)`
    handles STOP streams when this host is also a relay client; None refuses them."""
    from libp2p.peer.id import ID
    from libp2p.relay.circuit_v2.pb.circuit_pb2 import HopMessage
    from libp2p.relay.circuit_v2.protocol import CircuitV2Protocol
    from libp2p.relay.circuit_v2.protocol_buffer import StatusCode, to_proto_status
    from libp2p.relay.circuit_v2.utils import write_delimited_msg

    class FleetRelay(CircuitV2Protocol):
        def __init__(self):
            super().__init__(host, limits=limits.library(), allow_hop=True)
            self.allowed, self.fleet_limits = allowed, limits
            self._active_relays = _NoSharedRelays()
            self.circuits: dict[frozenset, _Circuit] = {}
            self.circuits_total = 0
            self.connecting = 0
            self.bytes = 0
            self.refused: dict[str, int] = {}

        def _refuse(self, reason: str) -> None:
            self.refused[reason] = self.refused.get(reason, 0) + 1
            log.info("relay refused: %s", reason)

        async def _deny(self, stream, code) -> None:
            try:
                with trio.move_on_after(5):
                    await write_delimited_msg(stream, HopMessage(type=HopMessage.STATUS, status=to_proto_status(code)))
                    await stream.close()  # a reset right away would discard the status unread
            except Exception:
                await reset(stream)

        def _member(self, peer_id: str) -> bool:
            try:
                return bool(self.allowed(peer_id))
            except Exception:
                log.exception("the relay's allowed() check failed for %s", peer_id)
                return False

        async def _handle_stop_stream(self, stream) -> None:
            if on_stop is None:
                self._refuse("a relayed connection offered to the relay")
                await reset(stream)
                return
            await on_stop(stream)

        async def _handle_reserve(self, stream, msg) -> None:
            remote: ID = stream.muxed_conn.peer_id
            if msg.HasField("peer") and msg.peer.id and msg.peer.id != remote.to_bytes():
                self._refuse("reservation for another PeerId")
                return await self._deny(stream, StatusCode.PERMISSION_DENIED)
            if not self._member(remote.to_base58()):
                self._refuse("reservation by a non-member")
                return await self._deny(stream, StatusCode.PERMISSION_DENIED)
            msg.ClearField("peer")
            self._drop_unconnected()
            await super()._handle_reserve(stream, msg)

        def _drop_unconnected(self) -> None:
            """A reservation is only valid while its peer is connected (py-libp2p checks that when
            it uses one), but it kept its slot of max_reservations until it expired: a member
            that reconnected from a new address, or left, held a slot for an hour (fix 6)."""
            rm = self.resource_manager
            for pid in [p for p in rm._reservations if not rm._is_peer_connected(p)]:
                del rm._reservations[pid]

        async def _handle_connect(self, stream, msg) -> None:
            source: ID = stream.muxed_conn.peer_id
            try:
                target = ID(msg.peer.id)
                target_text = target.to_base58()
            except Exception:
                self._refuse("malformed target")
                return await self._deny(stream, StatusCode.MALFORMED_MESSAGE)
            if not (self._member(source.to_base58()) and self._member(target_text)):
                self._refuse("circuit with a non-member")
                return await self._deny(stream, StatusCode.PERMISSION_DENIED)
            if self.connecting >= self.fleet_limits.max_circuits:  # asked for or carrying data
                self._refuse("circuits in all")
                return await self._deny(stream, StatusCode.RESOURCE_LIMIT_EXCEEDED)
            self.connecting += 1
            try:
                await super()._handle_connect(stream, msg)
            finally:
                self.connecting -= 1

        async def _relay_data(self, src, dst, peer_id, deadline=None, circuit_data_limit=None) -> None:
            """One direction of one circuit; when it ends, the other direction and both streams
            end (fix 3), and the circuit ends at its deadline even when idle (fix 4)."""
            key = frozenset((id(src), id(dst)))
            circuit = self.circuits.get(key)
            if circuit is None:
                circuit = self.circuits[key] = _Circuit((_pid(src), _pid(dst)))
                self.circuits_total += 1
            scope = trio.CancelScope(deadline=_trio_deadline(deadline))
            circuit.scopes.append(scope)
            try:
                with scope:
                    await super()._relay_data(_Counted(src, self), dst, peer_id, None,  # type: ignore[arg-type]  # a stream wrapper
                                              circuit_data_limit)
            finally:
                ended = self.circuits.pop(key, None)
                for other in ended.scopes if ended is not None else ():
                    other.cancel()
                with trio.CancelScope(shield=True), trio.move_on_after(2):
                    for s in (dst, src):
                        await reset(s)

        def active_reservations(self) -> int:
            """Reservations in force: not expired, their peer connected."""
            rm = self.resource_manager
            return sum(1 for pid in list(rm._reservations) if rm.get_reservation(pid) is not None)

        def prune(self) -> list[str]:
            """Membership changed: drop the reservations and circuits of non-members; returns the
            PeerIds whose connections should be closed."""
            gone = [pid for pid in list(self.resource_manager._reservations)
                    if not self._member(pid.to_base58())]
            for pid in gone:
                del self.resource_manager._reservations[pid]
            for circuit in list(self.circuits.values()):
                if not all(self._member(end) for end in circuit.ends):
                    for scope in circuit.scopes:
                        scope.cancel()
            return [pid.to_base58() for pid in gone]

    return FleetRelay()


def _pid(stream) -> str:
    return remote_peer(stream) or "?"


def _trio_deadline(monotonic_deadline: float | None) -> float:
    if monotonic_deadline is None:
        return float("inf")
    return trio.current_time() + max(0.0, monotonic_deadline - time.monotonic())


def honest_autonat(host):
    """An AutoNAT v1 server whose dial-back opens a fresh connection (see the module doc)."""
    from libp2p.host.autonat.autonat import AutoNATService

    class HonestAutoNAT(AutoNATService):
        async def _try_dial(self, peer_id, addrs):
            network = self.host.get_network()
            for raw in addrs:
                conn = None
                try:
                    with trio.fail_after(DIALBACK_TIMEOUT):
                        conn = await network.dial_addr(multiaddr.Multiaddr(raw), peer_id)
                    return bytes(raw)
                except Exception as exc:
                    log.debug("dial-back to %s failed: %s", peer_id, why(exc))
                    continue
                finally:
                    if conn is not None:
                        with trio.move_on_after(2):
                            await close_quietly(conn)
            return None

    return HonestAutoNAT(host, serve=True)
