"""Six gateways over libp2p in separate processes: the admin admits a seventh and revokes one
while they run; nobody restarts."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from peer.audit.verify import load_events, verify_log
from peer.ops.admin import Plan, deliver
from peer.ops.plan import write_plan
from topology import from_spec

from .netfixtures import free_ports, rounds_done, wait_until


def db(folder):
    return folder / "data" / "provenance.db"





@pytest.mark.timeout(400)
def test_admit_a_seventh_gateway_and_revoke_one_while_six_run(tmp_path, peer_processes):
    ports = free_ports(7)
    over = {"train": {"local_steps": 10, "lr": 0.1}, "round": {"deadline": 3.0, "interval": 0.5, "rounds": 0},
            "aggregation": {"rule": "mean", "f": 0}}
    nodes = write_plan(from_spec("ring:6"), tmp_path / "plan", network_id="lab", transport_options={"ports": ports[:6]}, overrides=over,
                       draw=False)
    names = [n.label for n in nodes]
    for n in nodes:
        peer_processes.start(n.label, n.config)
    wait_until(peer_processes, names, rounds_done(2))

    from click.testing import CliRunner

    from gossipfl.cli import main

    r = CliRunner().invoke(main, ["fleet", "admit", str(tmp_path / "plan"), "--name", "g7", "--neighbours", "0,3",
                                  "--port", str(ports[6])])
    assert r.exit_code == 0 and "epoch 1: admit" in r.output and "delivered to 6 of 6 gateways" in r.output, r.output
    g7 = Plan(tmp_path / "plan").node("g7")
    joined = SimpleNamespace(config=tmp_path / "plan" / g7["config"], peer_id=g7["peer_id"],
                             record=next((tmp_path / "plan" / "admin" / "records").glob("000001-*")))
    peer_processes.start("g7", joined.config)
    wait_until(peer_processes, ["0", "3"], lambda t: "neighbours now" in t, 60)
    wait_until(peer_processes, ["g7"], rounds_done(3))

    r = CliRunner().invoke(main, ["fleet", "revoke", str(tmp_path / "plan"), "5"])
    assert r.exit_code == 0 and "epoch 2: revoke" in r.output and "delivered to 7 of 7" in r.output, r.output
    assert peer_processes.procs["5"].wait(60) == 3  # the revoked gateway got it too and stopped for good
    stale = deliver(Plan(tmp_path / "plan"), joined.record.read_bytes(), [Plan(tmp_path / "plan").node("0")])
    assert stale == {"0": True}  # delivered, and refused by the peer as an older epoch
    done = {n: peer_processes.log(n).count(" neighbours accepted") for n in ("0", "3", "g7")}
    for n, k in done.items():  # a few more rounds everywhere after the revocation
        wait_until(peer_processes, [n], rounds_done(k + 4))
    peer_processes.stop_all()

    folders = {n.label: n.dir for n in nodes} | {"g7": joined.config.parent}
    ids = {n.label: n.peer_id for n in nodes} | {"g7": joined.peer_id}
    for label, folder in folders.items():
        assert verify_log(db(folder)).ok, label
    for label in ("0", "3"):  # the seventh is aggregated by its new neighbours
        _, aggregated = load_events(db(folders[label]), kind="aggregated")
        assert any(ids["g7"] in e.details["senders"] for e in aggregated), label
    for label in ("0", "1", "2", "3", "4", "g7"):  # the revoked one counts nowhere within two rounds
        _, membership = load_events(db(folders[label]), kind="membership")
        assert [e.details["epoch"] for e in membership][-1] == 2, label
        revoked_at = membership[-1].round
        _, received = load_events(db(folders[label]), kind="received")
        assert not [e for e in received if e.counterpart == ids["5"] and e.round >= revoked_at + 2], label
        _, aggregated = load_events(db(folders[label]), kind="aggregated")
        assert any(e.round >= revoked_at + 2 for e in aggregated), label  # and it kept working
    _, rejected = load_events(db(folders["0"]), kind="rejected")
    assert any(e.details["reason"] == "stale_membership" for e in rejected)
