"""The libp2p transport behind real NAT: tests/p2p_node.py processes in the network lab's
namespaces (tests/netlab.py: routers that masquerade and drop every inbound connection; "cone"
keeps ports, "symmetric" randomizes them), a fleet relay on the public side. Every wait is
for a condition, bounded; the lab tears everything down. Skips without root or nftables."""

from __future__ import annotations

import itertools

import pytest

from gossip.identity import Identity

from .labnodes import LabNode, addr, peer_spec, relay_spec, send_until

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

    def one_attempt_over(me, other):
        def check(s):
            punch = s[me.peer_id].get("hole_punching", {}).get(other.peer_id)
            return punch is not None and punch["attempts"] >= 1 and not punch["running"]
        return check

    nodes[0].wait_status(one_attempt_over(a, b), 60)
    nodes[1].wait_status(one_attempt_over(b, a), 60)
    exchange(nodes, (a, b), "after")
    for node, me, other in ((nodes[0], a, b), (nodes[1], b, a)):
        assert node.status()[me.peer_id]["links"][other.peer_id] == "relayed"
