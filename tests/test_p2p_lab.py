"""The libp2p transport behind real NAT: tests/p2p_node.py processes in the network lab's
namespaces (tests/netlab.py: routers that masquerade and drop every inbound connection; "cone"
keeps ports, "symmetric" randomizes them), a fleet relay on the public side. Every wait is
for a condition, bounded; the lab tears everything down. Skips without root or nftables."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time

import pytest

from gossip.identity import Identity

from .labnodes import ENV, ROOT, LabNode, addr, peer_spec, relay_spec, send_until

pytestmark = pytest.mark.timeout(120)


def test_three_gateways_behind_nat_exchange_updates_through_the_relay(lab, tmp_path):
    r = Identity.generate()
    gateways = [Identity.generate() for _ in range(3)]
    relay_host = lab.public("relay")
    relay = LabNode(lab, relay_host, relay_spec(r, gateways), tmp_path)
    relay_addr = addr(relay_host.address, r)
    hosts = [lab.site(f"site{i}", nat="cone").host(f"g{i}") for i in range(3)]
    nodes = []
    for g, host in zip(gateways, hosts, strict=True):
        # the plan names each neighbour by its router's public address: a direct dial never gets in
        neighbours = {o.peer_id: addr(h.public_address, o) for o, h in zip(gateways, hosts, strict=True) if o is not g}
        nodes.append(LabNode(lab, host, {"peers": [peer_spec(g, neighbours=neighbours, relays=[relay_addr],
                                                             hole_punch=False)]}, tmp_path))
    for node, g in zip(nodes, gateways, strict=True):  # each holds a reservation and knows it is private
        node.wait_status(lambda s, g=g: s[g.peer_id].get("reserved_on") == [r.peer_id]
                         and s[g.peer_id]["reachability"] == "private", 60)
    for (i, a), (j, b) in itertools.permutations(enumerate(gateways), 2):
        assert send_until(nodes[i], a, b, 30, head=f"{i}->{j}")
    for j in range(len(gateways)):
        got = nodes[j].wait_got(lambda got: len(got) == 2, 30)
        assert sorted((e["from"], e["head"].rstrip("\0")) for e in got) == sorted(
            (a.peer_id, f"{i}->{j}") for i, a in enumerate(gateways) if i != j)
    for node, g in zip(nodes, gateways, strict=True):
        links = node.status()[g.peer_id]["links"]
        assert set(links.values()) == {"relayed"}, links
    metrics = relay.call("metrics")["metrics"]
    assert metrics["reservations"] == 3 and metrics["circuits"] >= 3, metrics


def two_gateways(lab, tmp_path, nat: str, **settings):
    """A public relay and two gateways, each behind its own NAT of kind `nat`, neighbours of each
    other (known by PeerId only: they find each other through the relay)."""
    r, a, b = Identity.generate(), Identity.generate(), Identity.generate()
    relay_host = lab.public("relay")
    relay = LabNode(lab, relay_host, relay_spec(r, [a, b]), tmp_path)
    relay_addr = addr(relay_host.address, r)
    nodes = []
    for me, other, i in ((a, b, 1), (b, a, 2)):
        host = lab.site(f"site{i}", nat=nat).host(f"g{i}")
        nodes.append(LabNode(lab, host, {"peers": [peer_spec(me, neighbours={other.peer_id: None},
                                                             relays=[relay_addr], **settings)]}, tmp_path))
    for node, me in zip(nodes, (a, b), strict=True):
        node.wait_status(lambda s, me=me: s[me.peer_id].get("reserved_on") == [r.peer_id], 60)
    return relay, nodes, (a, b)


def exchange(nodes, ids, tag: str) -> None:
    """Each gateway sends one update to the other; both arrive."""
    (na, nb), (a, b) = nodes, ids
    before = len(na.got), len(nb.got)
    assert send_until(na, a, b, 30, head=f"{tag} a->b")
    assert send_until(nb, b, a, 30, head=f"{tag} b->a")
    nb.wait_got(lambda got: any(e["head"].startswith(f"{tag} a->b") for e in got[before[1]:]), 30)
    na.wait_got(lambda got: any(e["head"].startswith(f"{tag} b->a") for e in got[before[0]:]), 30)


def test_a_relayed_link_is_upgraded_by_hole_punching_through_port_keeping_nat(lab, tmp_path):
    relay, nodes, (a, b) = two_gateways(lab, tmp_path, "cone")
    exchange(nodes, (a, b), "relayed")
    nodes[0].wait_status(lambda s: s[a.peer_id]["links"][b.peer_id] == "hole-punched", 60)
    nodes[1].wait_status(lambda s: s[b.peer_id]["links"][a.peer_id] in ("hole-punched", "direct"), 30)
    exchange(nodes, (a, b), "punched")
    assert nodes[0].status()[a.peer_id]["links"][b.peer_id] == "hole-punched"


def test_a_relayed_link_stays_relayed_and_working_through_fully_random_nat(lab, tmp_path):
    relay, nodes, (a, b) = two_gateways(lab, tmp_path, "symmetric")
    exchange(nodes, (a, b), "relayed")

    def attempt_over(node, me, other) -> bool:
        punch = node.status()[me.peer_id].get("hole_punching", {}).get(other.peer_id)
        return punch is not None and punch["attempts"] >= 1 and not punch["running"]

    end = time.monotonic() + 60  # one side's whole hole punch (3 rounds of dials) has failed
    while not (attempt_over(nodes[0], a, b) or attempt_over(nodes[1], b, a)):
        assert time.monotonic() < end, (nodes[0].status(), nodes[1].status())
        time.sleep(0.5)
    exchange(nodes, (a, b), "after")
    for node, me, other in ((nodes[0], a, b), (nodes[1], b, a)):
        assert node.status()[me.peer_id]["links"][other.peer_id] == "relayed"


def test_a_gateway_whose_address_changed_is_found_again_through_its_signed_record(lab, tmp_path):
    g, n = Identity.generate(), Identity.generate()
    g_host, n_host = lab.public("g"), lab.public("n")
    old = g_host.address
    gateway = LabNode(lab, g_host, {"peers": [peer_spec(g, neighbours={n.peer_id: addr(n_host.address, n)})]},
                      tmp_path, name="g-before")
    neighbour = LabNode(lab, n_host, {"peers": [peer_spec(n, neighbours={g.peer_id: addr(old, g)})]}, tmp_path)
    exchange((gateway, neighbour), (g, n), "before")
    new = lab.readdress(g_host)  # DHCP gave the gateway another address; the old one is gone
    # the gateway notices, signs a new record and pushes it to its neighbour, which keeps it
    neighbour.wait_status(lambda s: s[n.peer_id]["neighbour_addresses"][g.peer_id][:1] == [addr(new)], 30)
    assert addr(old) in neighbour.status()[n.peer_id]["neighbour_addresses"][g.peer_id]  # its config, tried last
    gateway.stop()
    # the gateway restarts knowing no neighbour: only the neighbour's own dial can bring them together,
    # and the configured address is dead: it must dial the address of the record
    gateway = LabNode(lab, g_host, {"peers": [peer_spec(g, neighbours={}, allowed=[n.peer_id])]}, tmp_path,
                      name="g-after")
    assert send_until(neighbour, n, g, 30, head="after the move")
    gateway.wait_got(lambda got: any(e["head"].startswith("after the move") for e in got), 30)
    assert neighbour.status()[n.peer_id]["links"][g.peer_id] == "direct"


def test_a_stranger_can_neither_reserve_nor_open_a_circuit_on_a_fleet_relay(lab, tmp_path):
    r, a, s = Identity.generate(), Identity.generate(), Identity.generate()
    relay_host = lab.public("relay")
    relay = LabNode(lab, relay_host, relay_spec(r, [a]), tmp_path)
    relay_addr = addr(relay_host.address, r)
    member = LabNode(lab, lab.site("site1").host("a"), {"peers": [peer_spec(
        a, neighbours={}, allowed=[s.peer_id], relays=[relay_addr], hole_punch=False)]}, tmp_path)
    member.wait_status(lambda st: st[a.peer_id].get("reserved_on") == [r.peer_id], 60)
    # the stranger knows the relay and the member's PeerId, and the member would even take its updates
    stranger = LabNode(lab, lab.site("site2").host("s"), {"peers": [peer_spec(
        s, neighbours={a.peer_id: None}, relays=[relay_addr], hole_punch=False)]}, tmp_path)
    end = time.monotonic() + 60
    while relay.call("metrics")["metrics"]["refused_connections"] < 2 and time.monotonic() < end:
        assert not stranger.send(s, a, head="let me in")
        time.sleep(0.5)
    assert not stranger.send(s, a, head="let me in")
    assert stranger.status()[s.peer_id].get("reserved_on") == []
    metrics = relay.call("metrics")["metrics"]
    assert metrics["refused_connections"] >= 2, metrics  # its reservation keeper and its circuit dial
    assert metrics["reservations"] == 1 and metrics["circuits_total"] == 0, metrics
    assert member.got == []


def test_ten_relayed_neighbours_share_one_connection_to_the_relay(lab, tmp_path):
    """Each relayed neighbour is one more stream on the gateway's single connection to its relay:
    a neighbour's cap of 8 streams closed that connection at the 5th-6th (NOTES, exp7)."""
    r, a = Identity.generate(), Identity.generate()
    others = [Identity.generate() for _ in range(10)]
    relay_host = lab.public("relay")
    relay = LabNode(lab, relay_host, relay_spec(r, [a, *others]), tmp_path)
    relay_addr = addr(relay_host.address, r)
    gateway = LabNode(lab, lab.site("site1", nat="symmetric").host("a"), {"peers": [peer_spec(
        a, neighbours={o.peer_id: None for o in others}, relays=[relay_addr], hole_punch=False)]}, tmp_path)
    gateway.wait_status(lambda st: st[a.peer_id].get("reserved_on") == [r.peer_id], 60)
    # the ten in one process behind another NAT, each its own transport (and its own relay connection)
    crowd = LabNode(lab, lab.site("site2", nat="symmetric").host("crowd"), {"peers": [peer_spec(
        o, listen=[f"/ip4/0.0.0.0/tcp/{4001 + i}"], neighbours={a.peer_id: None}, relays=[relay_addr],
        hole_punch=False, reachability="private") for i, o in enumerate(others)]}, tmp_path)
    for i, o in enumerate(others):
        assert send_until(crowd, o, a, 30, head=f"from {i}")
    got = gateway.wait_got(lambda got: len(got) == 10, 30)
    assert sorted(e["from"] for e in got) == sorted(o.peer_id for o in others)
    for i, o in enumerate(others):
        assert gateway.send(a, o, head=f"to {i}")
    crowd.wait_got(lambda got: len(got) == 10, 30)
    status = gateway.status()[a.peer_id]
    assert set(status["links"].values()) == {"relayed"} and status["reserved_on"] == [r.peer_id], status
    assert status["counters"]["violations"] == 0, status  # its relay connection was never cut
    metrics = relay.call("metrics")["metrics"]
    assert metrics["circuits"] >= 10 and metrics["reservations"] == 11, metrics


def test_connection_churn_from_another_host_does_not_stall_an_established_neighbour(lab, tmp_path):
    """1,000 TCP connections a second that never send a byte, from an attacker's own address."""
    v, n = Identity.generate(), Identity.generate()
    v_host, n_host, x_host = lab.public("victim"), lab.public("neighbour"), lab.public("attacker")
    victim = LabNode(lab, v_host, {"peers": [peer_spec(v, neighbours={n.peer_id: None})]}, tmp_path)
    neighbour = LabNode(lab, n_host, {"peers": [peer_spec(n, neighbours={v.peer_id: addr(v_host.address, v)})]},
                        tmp_path)
    assert send_until(neighbour, n, v, 30, head="before")
    attacker = lab.run(x_host, [sys.executable, "-m", "tests.attackers", "stall_rate", "--target",
                                addr(v_host.address, v), "--seconds", "6", "--rate", "1000", "--connections", "6000",
                                "--linger", "30"], stdout=subprocess.PIPE, text=True, env=ENV, cwd=str(ROOT))
    sent = 0
    while attacker.poll() is None and sent < 400:
        assert neighbour.send(n, v, head=f"during {sent}")  # never fails, never waits out a timeout
        sent += 1
        time.sleep(0.05)
    out, _ = attacker.communicate(timeout=60)
    churn = json.loads(out.strip().splitlines()[-1])
    assert churn["opened"] >= 3000 and churn["still_open"] == 0, churn
    assert neighbour.send(n, v, head="after")
    got = victim.wait_got(lambda got: len(got) == sent + 2, 30)
    assert [e["head"].rstrip("\0") for e in got] == ["before", *(f"during {i}" for i in range(sent)), "after"]
    counters = victim.status()[v.peer_id]["counters"]
    assert counters["handshakes"] <= 2 and counters["dropped_silent"] >= churn["opened"] - 10, (counters, churn)
