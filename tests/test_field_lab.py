"""Real `gossipfl peer start` processes in the network lab (tests/labfleet.py, tests/netlab.py):
a plan as `topology plan` writes it, pointed at the lab's addresses; gateways behind NAT
routers that drop every inbound connection reach the fleet through a gateway that serves as
its relay. Every wait is for a condition, bounded; the lab tears everything down, also when a
test fails. Skips without root or nftables."""

from __future__ import annotations

import json
import time

import pytest

from gossip.p2p.node import BOOK_FILE
from gossip.p2p.records import open_record

from .labfleet import LabFleet

pytestmark = pytest.mark.timeout(240)


def six_gateways(lab, tmp_path, nat: str = "symmetric", **kw) -> LabFleet:
    """ring:6 - gateways 0 (the relay), 1 and 2 on the public internet, 3, 4 and 5 each behind
    its own NAT: links 3-4 and 4-5 can only go through the relay."""
    hosts = {str(i): lab.public(f"g{i}") for i in range(3)}
    hosts |= {str(i): lab.site(f"site{i}", nat=nat).host(f"g{i}") for i in range(3, 6)}
    return LabFleet(lab, tmp_path, "ring:6", hosts, relay="0", **kw)


def full_rounds(fleet: LabFleet, label: str, since: int = 0) -> list[int]:
    """The rounds in which the gateway aggregated every one of its neighbours."""
    return [r.round for r in fleet.rounds(label, since) if r.accepted == r.neighbours]


def test_six_gateways_three_behind_nat_aggregate_every_neighbour_every_round(lab, tmp_path):
    fleet = six_gateways(lab, tmp_path)
    fleet.start()
    # once every gateway aggregated all its neighbours, each of its next rounds does too
    fleet.wait(lambda f: all(full_rounds(f, n) for n in f.labels), 150, "every gateway's first full round")
    mark = fleet.mark()
    fleet.wait(lambda f: all(len(f.rounds(n, mark[n])) >= 3 for n in f.labels), 90, "three more rounds each")
    for label in fleet.labels:
        rounds = fleet.rounds(label, mark[label])
        assert all(r.accepted == r.neighbours == 2 for r in rounds), (label, rounds, fleet.text(label)[-3000:])
    for label in ("3", "4", "5"):  # links between two NATed gateways go through the relay
        row = fleet.status(label)
        assert row["online"] and row["reachability"] == "private", row
        relayed = {n for n, kind in row["links"].items() if kind == "relayed"}
        assert relayed == {"4"} if label == "3" else {"3", "5"} if label == "4" else {"4"}, row
    row = fleet.status("1")
    assert row["reachability"] == "public" and set(row["links"].values()) == {"direct"}, row
    codes = fleet.stop()
    assert set(codes.values()) == {0}, (codes, fleet.tails())
    verified = fleet.verify()
    assert verified.returncode == 0, verified.stdout + verified.stderr


PARTITION = 25.0  # seconds in the test (a minute in bench/fieldlab.py): three 8 s round deadlines


def test_lossy_links_and_a_partitioned_site_nobody_aborts_and_the_site_catches_up(lab, tmp_path):
    fleet = six_gateways(lab, tmp_path)
    for g in fleet.gateways.values():  # 5 % of the packets lost each way on every internet link
        lab.set_loss(g.host.site if g.behind_nat else g.host, 5)
    fleet.start()
    fleet.wait(lambda f: all(full_rounds(f, n) for n in f.labels), 150, "every gateway's first full round")
    site = fleet.gateways["4"].host.site
    lab.partition(site)  # gateway 4's site is cut off: its relayed links to 3 and 5 go silent
    cut = fleet.mark()
    time.sleep(PARTITION)  # the partition's length is the condition under test, not a wait for one
    lab.heal(site)
    healed = fleet.mark()
    # meanwhile the rest of the fleet went on: rounds closed, by the deadline where 4 was missing
    # (its neighbours waited it out, and theirs in turn waited for them: quorum 0 with f = 0)
    for label in ("0", "1", "2", "3", "5"):
        assert len(fleet.rounds(label, cut[label])) >= 2, (label, fleet.rounds(label, cut[label]))
    # within 3 rounds of the healing gateway 4 aggregates both neighbours again, and they it
    fleet.wait(lambda f: all(len(f.rounds(n, healed[n])) >= 4 for n in ("3", "4", "5")), 120,
               "four rounds after the healing")
    assert_caught_up(fleet, ("3", "4", "5"), healed)
    codes = fleet.stop()
    assert set(codes.values()) == {0}, (codes, fleet.tails())
    verified = fleet.verify()
    assert verified.returncode == 0, verified.stdout + verified.stderr


def assert_caught_up(fleet: LabFleet, labels, since: dict) -> None:
    """Each of `labels` aggregated all its neighbours in one of its first 3 rounds after `since`."""
    for label in labels:
        after = fleet.rounds(label, since[label])
        caught = next((i for i, r in enumerate(after) if r.accepted == r.neighbours), None)
        assert caught is not None and caught < 3, (label, after, fleet.text(label)[-3000:])


def known_addresses(fleet: LabFleet, of: str, at: str) -> list[str]:
    """The direct addresses of `of`'s newest signed record that gateway `at` keeps (verified again)."""
    saved = json.loads((fleet.gateways[at].dir / "data" / "libp2p" / BOOK_FILE).read_text())
    record = open_record(bytes.fromhex(saved[fleet.gateways[of].peer_id]), fleet.gateways[of].peer_id, None)
    return [a for a in record.addrs if "/p2p-circuit" not in a]


def test_a_gateway_whose_address_changed_mid_run_is_found_again(lab, tmp_path):
    fleet = six_gateways(lab, tmp_path, listen_any=("2",))
    fleet.start()
    fleet.wait(lambda f: all(full_rounds(f, n) for n in f.labels), 150, "every gateway's first full round")
    mover = fleet.gateways["2"]
    old = mover.host.address
    new = lab.readdress(mover.host)  # a new DHCP lease: the old address is gone, connections on it die
    moved = fleet.mark()
    # its neighbours (1 on the public side, 3 behind NAT) aggregate it again within 3 rounds
    fleet.wait(lambda f: all(len(f.rounds(n, moved[n])) >= 4 for n in ("1", "2", "3")), 120,
               "four rounds after the move")
    assert_caught_up(fleet, ("1", "2", "3"), moved)
    fleet.wait(lambda f: any(new in a for a in known_addresses(f, "2", "1")), 30, "1 keeping 2's new record")
    assert not any(old in a for a in known_addresses(fleet, "2", "1"))
    codes = fleet.stop()
    assert set(codes.values()) == {0}, (codes, fleet.tails())
    assert any(new in a for a in known_addresses(fleet, "2", "3"))


def test_a_gateway_behind_nat_enrolled_with_its_own_key_joins_the_running_fleet(lab, tmp_path):
    fleet = six_gateways(lab, tmp_path)
    admin = lab.public("admin")
    host = lab.site("site6", nat="symmetric").host("g6")
    fleet.start()
    fleet.wait(lambda f: all(full_rounds(f, n) for n in f.labels), 150, "every gateway's first full round")
    keys = {str(p) for p in fleet.plan.rglob("*.key")}
    admitted = fleet.enrol("6", host, ["1", "4"], admin)  # one neighbour on the public side, one behind NAT
    assert admitted.returncode == 0, admitted.stdout + admitted.stderr
    # the admin reached the public gateways (0, 1, 2); the NATed ones got the record from their neighbours
    assert "delivered to 3 of 6 gateways" in admitted.stdout and "no key written" in admitted.stdout, admitted.stdout
    assert {str(p) for p in fleet.plan.rglob("*.key")} == keys  # no key of the new gateway in the plan folder
    fleet.wait(lambda f: all("neighbours now" in f.text(n) for n in ("1", "4")), 60, "1 and 4 taking in 6")
    mark = fleet.mark()
    fleet.start(["6"])
    fleet.wait(lambda f: all(any(r.accepted == 3 for r in f.rounds(n, mark[n])) for n in ("1", "4"))
               and any(r.accepted == 2 for r in f.rounds("6")), 120, "1 and 4 aggregating 6, and 6 both")
    row = fleet.status("6")
    assert row["reachability"] == "private" and row["links"] == {"1": "direct", "4": "relayed"}, row
    codes = fleet.stop()
    assert set(codes.values()) == {0}, (codes, fleet.tails())
    verified = fleet.verify()
    assert verified.returncode == 0, verified.stdout + verified.stderr
