"""`fleet rotate-admin` while three gateways run (real `gossipfl peer start` processes over
libp2p): afterwards the old admin key (a thief's copy) cannot connect, its records reaching a
peer another way are refused as `retired_admin` (logged), and the new key's records apply; the
same after a restart, both with the plan's rewritten trust.toml and with the gateway's own
copy of the old one (the chain of admin keys comes from the log)."""

from __future__ import annotations

import asyncio
import signal

import pytest
from click.testing import CliRunner

from gossip.identity import load_key
from gossip.membership import seal_record
from gossipfl.cli import main
from peer.audit.verify import load_events, verify_log
from peer.ops.admin import Plan, deliver
from peer.ops.plan import write_plan
from peer.transports.libp2p import _send_all
from topology import from_spec

from .netfixtures import free_ports, rounds_done, wait_until

SETTINGS = {"train": {"local_steps": 5, "lr": 0.1}, "round": {"deadline": 2.0, "interval": 0.3, "rounds": 0},
            "aggregation": {"rule": "mean", "f": 0}}





def has(text, k=1):
    return lambda log: log.count(text) >= k


@pytest.mark.timeout(300)
def test_rotating_the_admin_key_while_the_fleet_runs(tmp_path, peer_processes):
    plan_dir = tmp_path / "plan"
    ports = free_ports(4)
    nodes = write_plan(from_spec("ring:3"), plan_dir, network_id="lab", overrides=SETTINGS, draw=False,
                       transport_options={"ports": ports[:3]})
    by = {n.label: n for n in nodes}
    thief = load_key(plan_dir / "admin" / "admin.key")  # a copy of the admin key, stolen
    old_trust = (plan_dir / "trust.toml").read_text()
    for n in nodes:
        peer_processes.start(n.label, n.config)
    wait_until(peer_processes, list(by), rounds_done(2))

    run = CliRunner().invoke(main, ["fleet", "rotate-admin", str(plan_dir)])
    assert run.exit_code == 0 and "epoch 1: rotate the admin key to" in run.output, run.output
    assert "delivered to 3 of 3 gateways" in run.output, run.output
    plan = Plan(plan_dir)
    new = plan.admin.peer_id
    wait_until(peer_processes, list(by), has(f"membership epoch 1: rotate the admin key to {new}"), 30)

    def stolen(epoch, action, who):  # what the thief signs with the old key
        return seal_record(thief, network="lab", epoch=epoch, action=action, peer=by[who].peer_id)

    addrs = {by[x].peer_id: f"/ip4/127.0.0.1/tcp/{ports[i]}/p2p/{by[x].peer_id}" for i, x in enumerate("012")}
    direct = asyncio.run(_send_all(thief, addrs, stolen(2, "revoke", "0"), {p: p for p in addrs}))
    assert not any(direct.values()), direct  # the peers no longer let the old key connect
    relayed = deliver(plan, stolen(2, "revoke", "0"), plan.live)  # by another path (here: the new key's)
    assert all(relayed.values()), relayed
    wait_until(peer_processes, list(by), has("membership record refused (retired_admin)"), 30)

    run = CliRunner().invoke(main, ["fleet", "revoke", str(plan_dir), "2"])  # the new key signs
    assert run.exit_code == 0 and "epoch 2: revoke" in run.output and "delivered to 3 of 3" in run.output, run.output
    assert peer_processes.procs["2"].wait(60) == 3  # the revoked gateway stopped by itself, for good
    wait_until(peer_processes, ["0", "1"], has("membership epoch 2: revoke"), 30)

    for label in ("0", "1"):  # restarted: "0" with the plan's new trust.toml, "1" with its old copy
        proc = peer_processes.procs[label]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, peer_processes.log(label)[-2000:]
    (plan_dir / "old-trust.toml").write_text(old_trust)
    kept = by["1"].dir / "peer-old-trust.toml"
    kept.write_text(by["1"].config.read_text().replace('"../trust.toml"', '"../old-trust.toml"'))
    assert kept.read_text() != by["1"].config.read_text()
    peer_processes.start("0-again", by["0"].config)
    peer_processes.start("1-again", kept)
    wait_until(peer_processes, ["0-again", "1-again"], rounds_done(2))
    live = [plan.node("0"), plan.node("1")]
    assert all(deliver(plan, stolen(3, "rotate", "0"), live).values())  # the old key cannot rotate again
    wait_until(peer_processes, ["0-again", "1-again"], has("membership record refused (retired_admin)"), 30)
    run = CliRunner().invoke(main, ["fleet", "admit", str(plan_dir), "--name", "g4", "--neighbours", "0",
                                    "--port", str(ports[3])])
    assert run.exit_code == 0 and "epoch 3: admit" in run.output and "delivered to 2 of 2" in run.output, run.output
    wait_until(peer_processes, ["0-again", "1-again"], has("membership epoch 3: admit"), 30)
    peer_processes.stop_all()

    for label in ("0", "1"):
        db = by[label].dir / "data" / "provenance.db"
        assert verify_log(db).ok, label
        _, membership = load_events(db, kind="membership")
        assert [(e.details["epoch"], e.details["action"]) for e in membership] == [(1, "rotate"), (2, "revoke"),
                                                                                  (3, "admit")], label
        _, rejected = load_events(db, kind="rejected")
        refused = [e for e in rejected if e.details["reason"] == "retired_admin"]
        assert len(refused) >= 2 and {e.counterpart for e in refused} == {thief.peer_id}, label
        _, started = load_events(db, kind="started")
        assert any(e.round > started[-1].round for e in refused), label  # refused after the restart too
