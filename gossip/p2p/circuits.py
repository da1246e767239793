"""The client side of Circuit Relay v2, written against py-libp2p's messages (hop and stop
protocols, `HopMessage`/`StopMessage`), not its CircuitV2Transport, which with the client role
also reserves on every dial, never re-reserves after a reconnection until 30 s before expiry,
and reads its relays from the peerstore. Here:

- `reserve(host, relay)`: one RESERVE on a hop stream of our connection to that relay; the
  reservation keeper (gossip/p2p/nat.py) calls it at start, after every reconnection to the
  relay and at half the reservation's time to live;
- `dial_circuit(host, relay, target)`: CONNECT through the relay, then the ordinary outbound
  upgrade of the relayed stream (Noise to `target`: the relay can neither read nor forge it,
  and the yamux bounds apply) into a connection of the swarm, tagged as relayed;
- `StopHandler`: accepts a relayed connection only from a relay of `is_relay(PeerId)` (py-libp2p
  accepts STOP from any connected peer); the inner connection is then upgraded through the
  swarm's hardened path, so the trust gate sees the end-to-end PeerId.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import multiaddr
import trio

from .streams import close_quietly, remote_peer, reset, why

HOP_TIMEOUT = 15.0

log = logging.getLogger("gossipfl.libp2p")


class CircuitError(Exception):
    """A relay refused or failed a reservation or a circuit; the message says which status."""


@dataclass(frozen=True)
class Relay:
    peer_id: str
    addr: str  # /ip4/.../tcp/... without /p2p

    @classmethod
    def parse(cls, text: str) -> Relay:
        """`/ip4/HOST/tcp/PORT/p2p/PEERID` (or /dns4, /ip6)."""
        try:
            ma = multiaddr.Multiaddr(text)
            peer_id = ma.value_for_protocol("p2p")
        except Exception:
            peer_id = None
        if not peer_id or "/p2p-circuit" in text or "/tcp/" not in text:
            raise ValueError(f"a relay is /ip4/HOST/tcp/PORT/p2p/PEERID, got {text!r}")
        return cls(peer_id, text.split("/p2p/")[0])

    def circuit_to(self, target: str) -> str:
        return f"{self.addr}/p2p/{self.peer_id}/p2p-circuit/p2p/{target}"


@dataclass(frozen=True)
class Reservation:
    relay: str
    expires: float  # unix seconds
    ttl: float  # seconds from when it was granted


def _status_name(code: int) -> str:
    from libp2p.relay.circuit_v2.protocol_buffer import StatusCode

    try:
        return StatusCode(code).name
    except ValueError:
        return str(code)


async def reserve(host, relay_id: str) -> Reservation:
    """RESERVE on the relay (we must be connected to it); raises CircuitError when refused."""
    from libp2p.peer.id import ID
    from libp2p.relay.circuit_v2.pb.circuit_pb2 import HopMessage
    from libp2p.relay.circuit_v2.protocol import PROTOCOL_ID
    from libp2p.relay.circuit_v2.utils import read_delimited_msg, write_delimited_msg

    with trio.fail_after(HOP_TIMEOUT):
        stream = await host.new_stream(ID.from_base58(relay_id), [PROTOCOL_ID])
        try:
            await write_delimited_msg(stream, HopMessage(type=HopMessage.RESERVE))
            reply = await read_delimited_msg(stream, HopMessage)
        finally:
            await close_quietly(stream)
    if reply.status != 100:
        raise CircuitError(f"relay {relay_id} refused the reservation: {_status_name(reply.status)}")
    expires = float(reply.reservation.expire) if reply.HasField("reservation") else 0.0
    now = time.time()
    return Reservation(relay_id, expires, max(0.0, expires - now))


async def dial_circuit(host, relay_id: str, target: str):
    """A connection to `target` through the relay (we must be connected to the relay)."""
    from libp2p.connection_types import ConnectionType
    from libp2p.network.connection.raw_connection import RawConnection
    from libp2p.peer.id import ID
    from libp2p.relay.circuit_v2.pb.circuit_pb2 import HopMessage
    from libp2p.relay.circuit_v2.pb.circuit_pb2 import PeerId as CircuitPeerId
    from libp2p.relay.circuit_v2.protocol import PROTOCOL_ID
    from libp2p.relay.circuit_v2.utils import read_delimited_msg, write_delimited_msg

    target_id = ID.from_base58(target)
    with trio.fail_after(HOP_TIMEOUT):
        stream = await host.new_stream(ID.from_base58(relay_id), [PROTOCOL_ID])
        try:
            await write_delimited_msg(stream, HopMessage(type=HopMessage.CONNECT,
                                                         peer=CircuitPeerId(id=target_id.to_bytes())))
            reply = await read_delimited_msg(stream, HopMessage)
        except BaseException:
            await reset(stream)
            raise
    if reply.status != 100:
        await reset(stream)
        raise CircuitError(f"relay {relay_id} refused a circuit to {target}: {_status_name(reply.status)}")
    circuit = multiaddr.Multiaddr(f"/p2p/{relay_id}/p2p-circuit/p2p/{target}")
    raw = RawConnection(stream=stream, initiator=True, connection_type=ConnectionType.RELAYED,
                        addresses=[circuit])
    try:
        conn = await host.upgrade_outbound_connection(raw, target_id)
    except BaseException:
        await reset(stream)
        raise
    conn.set_transport_info([circuit], ConnectionType.RELAYED)
    return conn


def is_relayed(conn) -> bool:
    """A swarm connection carried by a circuit (ours or one accepted through STOP)."""
    from libp2p.connection_types import ConnectionType

    try:
        if conn.get_connection_type() == ConnectionType.RELAYED:
            return True
        return any("/p2p-circuit" in str(a) for a in conn.get_transport_addresses())
    except Exception:
        return False


def stop_handler(host, is_relay: Callable[[str], bool], counters):
    """py-libp2p's STOP side (a CircuitV2Protocol service without hop), accepting circuits only
    from our relays. Run it with `background_trio_service`."""
    from libp2p.relay.circuit_v2.protocol import CircuitV2Protocol
    from libp2p.relay.circuit_v2.protocol_buffer import StatusCode

    class StopHandler(CircuitV2Protocol):
        async def _handle_stop_stream(self, stream) -> None:
            remote = remote_peer(stream) or "?"
            if not is_relay(remote):
                counters.refused_circuits += 1
                log.debug("refusing a relayed connection offered by %s: not one of our relays", remote)
                try:
                    with trio.move_on_after(2):
                        await self._send_stop_status(stream, StatusCode.PERMISSION_DENIED, "not our relay")
                finally:
                    await reset(stream)
                return
            try:
                await super()._handle_stop_stream(stream)
            except Exception as exc:
                log.debug("a relayed connection through %s failed: %s", remote, why(exc))

    return StopHandler(host, allow_hop=False)
