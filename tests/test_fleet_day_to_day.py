"""Operating a libp2p fleet day to day, with real `gossipfl peer start` processes (issue 24):
a gateway admitted while the fleet runs, a neighbour of it killed with SIGKILL and restarted
from its unchanged plan folder (it must take the admitted gateway's updates at once), a gateway
revoked (it learns it, says so and stops for good with exit status 3), and `fleet status`
counting neighbours as the membership says after each change."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from gossipfl.cli import main
from peer.audit.verify import load_events, verify_log
from peer.ops.admin import Plan

from .netfixtures import free_ports, free_run, rounds_done, wait_until


def status(plan) -> dict:
    r = CliRunner().invoke(main, ["fleet", "status", str(plan), "--json"])
    assert r.exit_code == 0, r.output
    return {row["name"]: row for row in json.loads(r.output)}


def wait_for_counts(plan, expected: dict, timeout=60):
    end = time.time() + timeout
    while True:
        rows = status(plan)
        got = {name: rows[name]["neighbours"] for name in expected}
        if got == expected or time.time() > end:
            assert got == expected, rows
            return rows
        time.sleep(0.5)


@pytest.mark.timeout(500)
def test_admit_restart_and_revoke_while_the_fleet_runs(tmp_path, peer_processes):
    plan = tmp_path / "plan"
    listen, metrics = free_run(4), free_run(5)
    template = tmp_path / "template.toml"  # what every gateway inherits, as an operator writes it
    template.write_text('[train]\nlocal_steps = 5\n[round]\ndeadline = 3.0\ninterval = 0.3\n'
                        '[aggregation]\nrule = "mean"\nf = 0\n')
    r = CliRunner().invoke(main, ["topology", "plan", "ring:4", "--out", str(plan), "--network-id", "lab",
                                  "--template", str(template), "--base-port", str(listen),
                                  "--metrics", f"127.0.0.1:{metrics}", "--rounds", "0"])
    assert r.exit_code == 0, r.output
    nodes = [SimpleNamespace(label=str(i), config=plan / f"node-{i}" / "peer.toml", dir=plan / f"node-{i}")
             for i in range(4)]
    for n in nodes:
        peer_processes.start(n.label, n.config)
    names = [n.label for n in nodes]
    wait_until(peer_processes, names, rounds_done(2))
    wait_for_counts(plan, {"0": 2, "1": 2, "2": 2, "3": 2})

    (port,) = free_ports(1)
    r = CliRunner().invoke(main, ["fleet", "admit", str(plan), "--name", "g5", "--neighbours", "0,2",
                                  "--port", str(port)])
    assert r.exit_code == 0 and "epoch 1: admit" in r.output, r.output
    g5 = Plan(plan).node("g5")
    peer_processes.start("g5", plan / g5["config"])
    wait_until(peer_processes, ["g5"], rounds_done(2))
    wait_for_counts(plan, {"0": 3, "1": 2, "2": 3, "3": 2, "g5": 2})

    # node 0 dies (SIGKILL) and comes back from its unchanged folder: it must let g5 in at once
    peer_processes.kill("0")
    peer_processes.start("0-again", nodes[0].config)
    wait_until(peer_processes, ["0-again"], rounds_done(3))  # the aggregated event waits for the next checkpoint
    db0 = nodes[0].dir / "data" / "provenance.db"
    _, started = load_events(db0, kind="started")
    restart = started[-1].round
    _, aggregated = load_events(db0, kind="aggregated")
    first = [e for e in aggregated if e.round >= restart][:2]  # within one round of the restart
    assert any(g5["peer_id"] in e.details["senders"] for e in first), ([e.details["senders"] for e in first],
                                                                     peer_processes.log("0-again")[-4000:])
    assert "error:" not in peer_processes.log("0-again")

    r = CliRunner().invoke(main, ["fleet", "revoke", str(plan), "1"])
    assert r.exit_code == 0 and "epoch 2: revoke" in r.output, r.output
    assert peer_processes.procs["1"].wait(60) == 3, peer_processes.log("1")[-3000:]  # stopped by itself, for good
    assert "was revoked by the network admin" in peer_processes.log("1")
    rows = wait_for_counts(plan, {"0": 2, "2": 2, "3": 2, "g5": 2})  # 1 was a neighbour of 0 and 2
    assert rows["1"]["online"] is False and rows["1"]["error"] == "revoked (epoch 2)"
    again = CliRunner().invoke(main, ["peer", "start", "--config", str(nodes[1].config)])
    assert again.exit_code == 3 and "was revoked" in again.output  # and refuses to come back
    peer_processes.stop_all()
    for folder in [n.dir for n in nodes] + [(plan / g5["config"]).parent]:
        assert verify_log(folder / "data" / "provenance.db").ok, folder
