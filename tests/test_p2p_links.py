"""How a peer reaches each neighbour (direct, hole-punched, relayed) and whether it can be
dialled, as its operator sees it: Prometheus metrics, the status message and `fleet status`'s
row, from real libp2p transports and a fleet relay on 127.0.0.1. Bounded waits."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest

from gossip.identity import Identity
from gossip.libp2p_transport import Libp2pTransport
from gossip.p2p.relay_service import RelayService
from peer.ops.status import Member, row_from_metrics, row_from_status, scrape
from peer.runtime.metrics import PeerMetrics

from .netfixtures import free_ports

pytestmark = pytest.mark.timeout(120)
LOCAL = ["/ip4/127.0.0.1/tcp/0"]


async def until(condition, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < end, f"{what} not reached in {timeout} s"
        await asyncio.sleep(0.1)


def test_links_and_reachability_reach_metrics_status_and_fleet_status(caplog):
    caplog.set_level(logging.INFO, "gossipfl.metrics")

    async def scenario():
        r, a, b, c = (Identity.generate() for _ in range(4))
        relay = RelayService(r, LOCAL, {a.peer_id, b.peer_id, c.peer_id})
        await relay.start()
        relays = [relay.addresses()[0]]
        # a is behind NAT (private): b reaches it through the relay; a and c talk directly
        tc = Libp2pTransport(c, LOCAL, {a.peer_id: None}, reachability="public")
        await tc.start()
        ta = Libp2pTransport(a, LOCAL, {b.peer_id: None, c.peer_id: tc.addresses()[0]}, relays=relays,
                             reachability="private", hole_punch=False, reconnect_cap=0.5)
        tb = Libp2pTransport(b, LOCAL, {a.peer_id: None}, relays=relays, reachability="private", hole_punch=False,
                             reconnect_cap=0.5)
        await ta.start()
        await tb.start()
        metrics = PeerMetrics("gw-a", a.peer_id, neighbours=2, names={b.peer_id: "gw-b", c.peer_id: "gw-c"})
        try:
            metrics.start(f"127.0.0.1:{free_ports(1)[0]}", transport=ta)

            async def both_up():
                return (await tb.send(a.peer_id, b"hello") and await ta.send(c.peer_id, b"hi")
                        and metrics.connectivity.get("links") == {"gw-b": "relayed", "gw-c": "direct"})

            await until(both_up, 30, "a relayed link to b and a direct one to c in the metrics")
            member = Member("gw-a", a.peer_id, Path("peer.toml"), None, None)
            row = row_from_metrics(member, await asyncio.to_thread(scrape, "{}:{}".format(*metrics.address), 5))
            assert (row.reachability, row.links) == ("private", {"gw-b": "relayed", "gw-c": "direct"})
            status = metrics.round_done(3, heard=[b.peer_id])
            row = row_from_status(member, status)
            assert (row.reachability, row.links) == ("private", {"gw-b": "relayed", "gw-c": "direct"})
            await tb.close()  # b goes away: its link is shown down
            await until(lambda: _is(metrics, "gw-b", "down"), 20, "b's link down")
        finally:
            metrics.stop()
            for t in (tb, ta, tc):
                await t.close()
            await relay.close()

    asyncio.run(scenario())
    lines = [rec.getMessage() for rec in caplog.records]
    assert "reachability: private" in lines and "link to gw-b: relayed" in lines and "link to gw-c: direct" in lines



def _is(metrics, name, kind):
    async def check():
        return metrics.connectivity["links"].get(name) == kind
    return check()


def test_a_hostile_metrics_page_cannot_invent_link_kinds_or_states():
    page = ('gossipfl_link{neighbour="x",kind="teleported"} 1\n'
            'gossipfl_link{neighbour="y",kind="relayed"} 0\n'
            'gossipfl_link{neighbour="z",kind="relayed"} 1\n'
            'gossipfl_reachability{state="everywhere"} 1\n')
    row = row_from_metrics(Member("m", "p", Path("x"), None, None), page)
    assert (row.reachability, row.links) == (None, {"z": "relayed"})
    row = row_from_status(Member("m", "p", Path("x"), None, None),
                          {"online": True, "links": {"a": "wormhole", "b": "direct", "c": 7},
                           "reachability": ["public"]})
    assert (row.reachability, row.links) == (None, {"b": "direct"})
