"""The fleet relay and the relay client on 127.0.0.1, with real sockets: what py-libp2p 0.8.1's
hop got wrong (NOTES-libp2p-nat.md of branch nat) stays fixed, and only our relays may hand us
a relayed connection. Every wait is for a condition, bounded."""

from __future__ import annotations

import asyncio
import time

import pytest

from gossip.identity import Identity
from gossip.libp2p_transport import Libp2pTransport
from gossip.p2p.relay import RelayLimits
from gossip.p2p.relay_service import RelayService

pytestmark = pytest.mark.timeout(120)
LOCAL = ["/ip4/127.0.0.1/tcp/0"]


async def until(condition, timeout: float, what: str = "condition", extra=None) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, f"{what} not reached in {timeout} s ({extra() if extra else ''})"
        await asyncio.sleep(0.05)


async def started(*things):
    for t in things:
        await t.start()
    return things


async def reserved(t: Libp2pTransport, relay: RelayService) -> None:
    end = time.monotonic() + 20
    while (await t.connectivity()).get("reserved_on") != [relay.identity.peer_id]:
        assert time.monotonic() < end, "no reservation"
        await asyncio.sleep(0.1)


def gateway(identity, neighbours, relay, **kw) -> Libp2pTransport:
    kw.setdefault("hole_punch", False)
    kw.setdefault("reachability", "private")
    return Libp2pTransport(identity, LOCAL, {n.peer_id: None for n in neighbours}, relays=[relay.addresses()[0]],
                           reconnect_cap=0.5, **kw)


async def hop(t: Libp2pTransport, relay: RelayService, message):
    """Send one HopMessage to the relay on t's connection to it; the relay's answer."""
    from libp2p.peer.id import ID
    from libp2p.relay.circuit_v2.pb.circuit_pb2 import HopMessage
    from libp2p.relay.circuit_v2.protocol import PROTOCOL_ID
    from libp2p.relay.circuit_v2.utils import read_delimited_msg, write_delimited_msg

    from gossip.p2p.circuits import Relay
    from gossip.p2p.nat import connect_relay

    async def go():
        await connect_relay(t.host, Relay.parse(relay.addresses()[0]))
        stream = await t.host.new_stream(ID.from_base58(relay.identity.peer_id), [PROTOCOL_ID])
        await write_delimited_msg(stream, message)
        reply = await read_delimited_msg(stream, HopMessage)
        await stream.close()
        return reply.status

    return await t.bridge.call(go)


def test_a_member_reserves_only_for_itself():
    async def scenario():
        from libp2p.peer.id import ID
        from libp2p.relay.circuit_v2.pb.circuit_pb2 import HopMessage
        from libp2p.relay.circuit_v2.pb.circuit_pb2 import PeerId as CircuitPeerId

        r, a, b = Identity.generate(), Identity.generate(), Identity.generate()
        (relay,) = await started(RelayService(r, LOCAL, {a.peer_id, b.peer_id}, limits=RelayLimits(max_reservations=2)))
        ta = Libp2pTransport(a, LOCAL, {}, relays=[relay.addresses()[0]], reachability="public")
        await ta.start()  # public: no reservation of its own; we speak hop by hand
        try:
            for _ in range(3):  # slots for PeerIds that are not the connection's own: refused, none taken
                other = CircuitPeerId(id=ID.from_base58(Identity.generate().peer_id).to_bytes())
                assert await hop(ta, relay, HopMessage(type=HopMessage.RESERVE, peer=other)) == 202
            assert await hop(ta, relay, HopMessage(type=HopMessage.RESERVE, peer=CircuitPeerId(
                id=ID.from_base58(b.peer_id).to_bytes()))) == 202  # not even for another member
            assert relay.metrics()["reservations"] == 0
            assert await hop(ta, relay, HopMessage(type=HopMessage.RESERVE)) == 100
            assert relay.metrics()["reservations"] == 1
            assert relay.metrics()["refused"] == {"reservation for another PeerId": 4}
        finally:
            await ta.close()
            await relay.close()

    asyncio.run(scenario())


def test_circuits_end_one_at_a_time_idle_ones_at_their_limit_and_revoked_members_lose_theirs():
    async def scenario():
        r, t, s1, s2 = (Identity.generate() for _ in range(4))
        members = {t.peer_id, s1.peer_id, s2.peer_id}
        relay = RelayService(r, LOCAL, set(members), limits=RelayLimits(circuit_seconds=4))
        await relay.start()
        tt = gateway(t, [s1, s2], relay)
        ts1, ts2 = gateway(s1, [t], relay), gateway(s2, [t], relay)
        await started(tt, ts1, ts2)
        try:
            await reserved(tt, relay)
            assert await ts1.send(t.peer_id, b"one") and await ts2.send(t.peer_id, b"two")
            await until(lambda: tt.queue.qsize() == 2, 10, "both updates")
            assert (await ts1.links())[t.peer_id] == "relayed" and relay.metrics()["circuits"] == 2
            opened = relay.metrics()["circuits_total"]
            await ts1.close()  # one circuit of the target ends ...
            await until(lambda: relay.metrics()["circuits"] == 1, 10, "s1's circuit gone")
            assert await ts2.send(t.peer_id, b"still") and relay.metrics()["circuits_total"] == opened
            await until(lambda: tt.queue.qsize() == 3, 10, "s2's update on its own circuit")
            # ... and the other one, idle, ends at circuit_seconds though no byte comes to check it
            await until(lambda: relay.metrics()["circuits"] == 0, 15, "the idle circuit closed")
            assert await ts2.send(t.peer_id, b"again")  # a new circuit
            await until(lambda: relay.metrics()["circuits"] == 1, 10, "a new circuit")
            relay.set_allowed(members - {t.peer_id})  # the target is revoked
            await until(lambda: relay.metrics()["circuits"] == 0 and relay.metrics()["reservations"] == 1, 10,
                        "the revoked member's reservation and circuit gone", relay.metrics)
            assert not await ts2.send(t.peer_id, b"to the revoked")
        finally:
            for x in (ts2, ts1, tt):
                await x.close()
            await relay.close()

    asyncio.run(scenario())


def test_a_circuit_past_its_byte_limit_is_cut_and_the_next_send_opens_another():
    async def scenario():
        r, a, b = Identity.generate(), Identity.generate(), Identity.generate()
        relay = RelayService(r, LOCAL, {a.peer_id, b.peer_id}, limits=RelayLimits(circuit_bytes=400_000))
        await relay.start()
        ta, tb = gateway(a, [b], relay), gateway(b, [a], relay)
        await started(ta, tb)
        try:
            await reserved(ta, relay)
            await tb.send(a.peer_id, bytes(1_000_000))  # more than the circuit may carry
            assert relay.metrics()["bytes"] < 500_000  # it was cut (a window or so past the limit)
            end = time.monotonic() + 30
            while ta.queue.empty():  # later sends notice the cut (one may still meet the dying
                assert time.monotonic() < end, "no new circuit"  # connection) and open another
                tb._backoff.clear()
                if await tb.send(a.peer_id, b"small"):
                    for _ in range(40):  # up to 2 s for it to arrive
                        if not ta.queue.empty():
                            break
                        await asyncio.sleep(0.05)
            sender, data = ta.queue.get_nowait()
            assert (sender, bytes(data)) == (b.peer_id, b"small")  # the big one never arrived
            assert relay.metrics()["circuits_total"] >= 2
        finally:
            for x in (tb, ta):
                await x.close()
            await relay.close()

    asyncio.run(scenario())


def test_only_our_relays_may_hand_us_a_relayed_connection():
    """py-libp2p accepts STOP from any connected peer; a neighbour with a direct connection
    offering us a 'relayed' connection from someone is refused."""
    async def scenario():
        from libp2p.peer.id import ID
        from libp2p.relay.circuit_v2.pb.circuit_pb2 import PeerId as CircuitPeerId
        from libp2p.relay.circuit_v2.pb.circuit_pb2 import StopMessage
        from libp2p.relay.circuit_v2.protocol import STOP_PROTOCOL_ID
        from libp2p.relay.circuit_v2.utils import read_delimited_msg, write_delimited_msg

        r, a, b = Identity.generate(), Identity.generate(), Identity.generate()
        (relay,) = await started(RelayService(r, LOCAL, {a.peer_id, b.peer_id}))
        ta = gateway(a, [b], relay)
        await ta.start()
        tb = Libp2pTransport(b, LOCAL, {a.peer_id: ta.addresses()[0]})
        await tb.start()
        try:
            assert await tb.send(a.peer_id, b"direct")  # b is a trusted neighbour with a direct connection

            async def offer():
                stream = await tb.host.new_stream(ID.from_base58(a.peer_id), [STOP_PROTOCOL_ID])
                try:  # a refuses at once: the write itself may meet the reset
                    await write_delimited_msg(stream, StopMessage(type=StopMessage.CONNECT, peer=CircuitPeerId(
                        id=ID.from_base58(b.peer_id).to_bytes())))
                    return (await read_delimited_msg(stream, StopMessage)).status
                except Exception:
                    return None

            assert await tb.bridge.call(offer) in (202, None)
            assert ta.counters.refused_circuits == 1
            assert (await ta.links())[b.peer_id] == "direct"
        finally:
            for x in (tb, ta):
                await x.close()
            await relay.close()

    asyncio.run(scenario())


def test_the_relay_dials_back_honestly():
    """py-libp2p's dial-back reused the connection the request came on: everyone was PUBLIC."""
    async def scenario():
        r, a, b = Identity.generate(), Identity.generate(), Identity.generate()
        (relay,) = await started(RelayService(r, LOCAL, {a.peer_id, b.peer_id}))
        reachable = Libp2pTransport(a, LOCAL, {}, relays=[relay.addresses()[0]], reachability="auto")
        # b claims an address where nothing listens (port 9, discard): the dial-back fails
        unreachable = Libp2pTransport(b, LOCAL, {}, relays=[relay.addresses()[0]], reachability="auto",
                                      announce=["/ip4/127.0.0.1/tcp/9"])
        await started(reachable, unreachable)
        try:
            await until(lambda: reachable.reachability == "public" and unreachable.reachability == "private", 60,
                        "both verdicts")
        finally:
            for x in (unreachable, reachable):
                await x.close()
            await relay.close()

    asyncio.run(scenario())


def test_large_updates_cross_a_relay_and_no_stream_holds_more_than_a_window():
    """py-libp2p grows a yamux stream's window up to 16 MB as it is read; on connections that
    carry circuits the relay's bound is a window per stream, so growth is turned off there (the
    relay closed a sender's connection mid-update under load before)."""
    async def scenario():
        r, a, b = Identity.generate(), Identity.generate(), Identity.generate()
        (relay,) = await started(RelayService(r, LOCAL, {a.peer_id, b.peer_id}))
        ta, tb = gateway(a, [b], relay, max_size=16 << 20), gateway(b, [a], relay, max_size=16 << 20)
        await started(ta, tb)
        try:
            await reserved(ta, relay)
            for i in range(3):
                payload = bytes([i]) * (8 << 20)
                assert await tb.send(a.peer_id, payload) and await ta.send(b.peer_id, payload)
                got = [await asyncio.wait_for(t.queue.get(), 30) for t in (ta, tb)]
                assert all(bytes(data) == payload for _, data in got)
            assert relay.counters.violations == ta.counters.violations == tb.counters.violations == 0

            async def windows():
                return [s.target_recv_window for conns in relay.host.get_network().connections.values()
                        for c in conns for s in c.muxed_conn.streams.values()]

            assert max(await relay.bridge.call(windows)) <= 256 * 1024
        finally:
            for x in (tb, ta):
                await x.close()
            await relay.close()

    asyncio.run(scenario())


def test_a_reachable_peer_serves_as_relay_for_the_fleet_only():
    """serve_relay: a public peer of the plan relays for `relay_for` (the fleet's members); a
    neighbour of it that is not a member may connect to it, but not reserve through it."""
    async def scenario():
        p, a, b, c = (Identity.generate() for _ in range(4))
        tp = Libp2pTransport(p, LOCAL, {a.peer_id: None, b.peer_id: None, c.peer_id: None}, serve_relay=True,
                             relay_for={a.peer_id, b.peer_id}, reachability="public")
        await tp.start()
        relay_addr = [tp.addresses()[0]]
        ta = Libp2pTransport(a, LOCAL, {b.peer_id: None}, relays=relay_addr, reachability="private", hole_punch=False)
        tb = Libp2pTransport(b, LOCAL, {a.peer_id: None}, relays=relay_addr, reachability="private", hole_punch=False)
        tc = Libp2pTransport(c, LOCAL, {a.peer_id: None}, relays=relay_addr, reachability="private", hole_punch=False)
        await started(ta, tb, tc)
        try:
            await until(lambda: tp.node.relay is not None and tp.node.relay.active_reservations() == 2, 20,
                        "the members' reservations")
            assert await tb.send(a.peer_id, b"through a peer")
            sender, data = await asyncio.wait_for(ta.queue.get(), 10)
            assert (sender, bytes(data)) == (b.peer_id, b"through a peer")
            assert (await ta.links())[b.peer_id] == "relayed"
            await until(lambda: tp.node.relay.refused.get("reservation by a non-member", 0) >= 1, 20,
                        "c's reservation refused")
            assert not await tc.send(a.peer_id, b"c through p")  # and no circuit for it either
            status = await tp.connectivity()
            assert status["relay"]["reservations"] == 2 and status["relay"]["circuits_total"] == 1, status
            assert tp.queue.qsize() == 0  # the relay traffic never reached p's inbox
        finally:
            for x in (tc, tb, ta, tp):
                await x.close()

    asyncio.run(scenario())


def test_over_a_circuit_the_gate_and_the_size_bound_hold_as_on_a_direct_connection():
    """The end-to-end PeerId is what the gate and the read slots see, relayed or not: a fleet
    member that is not a neighbour is closed right after Noise, an update over max_size is cut."""
    async def scenario():
        r, a, b, s = (Identity.generate() for _ in range(4))
        (relay,) = await started(RelayService(r, LOCAL, {a.peer_id, b.peer_id, s.peer_id}))
        ta = gateway(a, [b], relay, max_size=100_000)  # s is a member of the fleet, not a's neighbour
        tb, ts = gateway(b, [a], relay), gateway(s, [a], relay)
        await started(ta, tb, ts)
        try:
            await reserved(ta, relay)
            assert not await ts.send(a.peer_id, b"not your neighbour")
            assert ta.counters.refused_peers >= 1 and ta.queue.empty()
            await tb.send(a.peer_id, bytes(200_000))  # twice a's max_size
            await until(lambda: ta.counters.violations >= 1, 10, "the oversize update cut")
            assert ta.queue.empty()
            tb._backoff.clear()
            end = time.monotonic() + 20
            while ta.queue.empty():  # the neighbour itself is not shut out
                assert time.monotonic() < end, "b could not send again"
                await tb.send(a.peer_id, bytes(100_000))
                await asyncio.sleep(0.3)
            sender, data = ta.queue.get_nowait()
            assert sender == b.peer_id and len(data) == 100_000  # exactly max_size is fine
        finally:
            for x in (ts, tb, ta):
                await x.close()
            await relay.close()

    asyncio.run(scenario())
