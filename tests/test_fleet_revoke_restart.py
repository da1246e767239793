"""After `fleet revoke`, the revoked gateway's former neighbours restart from their plan folders
(real `gossipfl peer start` processes over libp2p): one with the plan's rewritten peer.toml, one
with the old peer.toml that still names the revoked gateway (a warning, not exit 2); both run
rounds again and neither hears from the revoked gateway."""

from __future__ import annotations

import signal

import pytest
from click.testing import CliRunner

from gossipfl.cli import main
from peer.audit.verify import load_events, verify_log
from peer.ops.plan import write_plan
from topology import from_spec

from .netfixtures import free_ports, rounds_done, wait_until

SETTINGS = {"train": {"local_steps": 10, "lr": 0.1}, "round": {"deadline": 3.0, "interval": 0.5, "rounds": 0},
            "aggregation": {"rule": "mean", "f": 0}}





@pytest.mark.timeout(400)
def test_former_neighbours_of_a_revoked_gateway_restart_from_the_plan(tmp_path, peer_processes):
    plan = tmp_path / "plan"
    nodes = write_plan(from_spec("ring:4"), plan, network_id="lab", overrides=SETTINGS, draw=False,
                       transport_options={"ports": free_ports(4)})
    by = {n.label: n for n in nodes}
    old = by["0"].config.read_text()  # node 0's gateway never gets the rewritten file
    for n in nodes:
        peer_processes.start(n.label, n.config)
    wait_until(peer_processes, list(by), rounds_done(2))
    r = CliRunner().invoke(main, ["fleet", "revoke", str(plan), "1"])
    assert r.exit_code == 0 and "delivered to 4 of 4 gateways" in r.output, r.output
    assert peer_processes.procs["1"].wait(60) == 3  # the revoked gateway stopped by itself, for good
    assert "rewrote the neighbours in node-0, node-2" in r.output
    wait_until(peer_processes, ["0", "2"], lambda t: "membership epoch 1: revoke" in t, 60)
    for label in ("0", "2"):  # stopped cleanly, as systemd would on a reboot
        proc = peer_processes.procs[label]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, peer_processes.log(label)[-2000:]
    by["0"].config.write_text(old)
    assert by["1"].peer_id in old and by["1"].peer_id not in by["2"].config.read_text()
    for label in ("0", "2"):
        peer_processes.start(f"{label}-again", by[label].config)
    wait_until(peer_processes, ["0-again", "2-again"], rounds_done(2))
    again = peer_processes.log("0-again")
    assert "was revoked by the network admin: not a neighbour any more" in again and "error:" not in again
    assert "error:" not in peer_processes.log("2-again")
    peer_processes.stop_all()
    for label in ("0", "2"):
        db = by[label].dir / "data" / "provenance.db"
        assert verify_log(db).ok
        _, started = load_events(db, kind="started")
        assert len(started) == 2 and by["1"].peer_id not in started[-1].details["neighbours"]
        _, received = load_events(db, kind="received")
        after = [e for e in received if e.round > started[-1].round]
        assert after and not [e for e in after if e.counterpart == by["1"].peer_id], label
        assert {e.counterpart for e in after} == {by["3"].peer_id}  # its one remaining neighbour
