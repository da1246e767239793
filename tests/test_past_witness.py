"""Neighbours witness a peer's past (issue 23), with real `gossipfl peer start` processes over
libp2p: an older, valid log + checkpoint pair swapped into a peer's data folder verifies on its
own, but its neighbour holds headers the peer signed since. The peer refuses to start from it
(one line, exit 2); with --accept-rollback it starts, says so in its `started` event, and its
neighbour rejects its updates whose signed epsilon went down as `privacy_rollback`."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time

import pytest

from peer.audit.verify import load_events, verify_log
from peer.ops.plan import write_plan
from topology import from_spec

from .netfixtures import ROOT, free_ports

OVER = {"train": {"local_steps": 2, "batch_size": 16, "lr": 0.1},
        "round": {"deadline": 1.0, "interval": 0.2, "rounds": 0, "train_in_thread": False},
        "aggregation": {"rule": "mean", "f": 0}, "privacy": {"mode": "update", "noise_multiplier": 2.0}}


def both(pp, nodes, tag, *extra):
    for label in ("0", "1"):
        pp.start(f"{label}{tag}", nodes[label].config, *extra)
    for label in ("0", "1"):
        assert pp.procs[f"{label}{tag}"].wait(120) == 0, pp.log(f"{label}{tag}")[-3000:]


@pytest.mark.timeout(400)
def test_a_rolled_back_peer_is_refused_and_its_lower_epsilon_rejected(tmp_path, peer_processes):
    nodes = {n.label: n for n in write_plan(from_spec("complete:2"), tmp_path / "plan", network_id="lab",
                                              overrides=OVER, draw=False,
                                              transport_options={"ports": free_ports(2)})}
    data = nodes["0"].dir / "data"
    both(peer_processes, nodes, "-a", "--rounds", "2")
    shutil.copytree(data, tmp_path / "older")  # a valid backup of node 0 at round 3
    both(peer_processes, nodes, "-b", "--rounds", "8")  # 8 releases the backup does not know of
    older_eps = load_events(tmp_path / "older" / "provenance.db", kind="privacy")[1][-1].details["epsilon"]
    newer_eps = load_events(data / "provenance.db", kind="privacy")[1][-1].details["epsilon"]
    assert newer_eps > older_eps
    shutil.rmtree(data)
    shutil.copytree(tmp_path / "older", data)
    assert verify_log(data / "provenance.db").ok  # on its own the old pair is perfectly valid

    peer_processes.start("1-c", nodes["1"].config)  # the witness, running
    end = time.time() + 60
    while time.time() < end and "started at round" not in peer_processes.log("1-c"):
        time.sleep(0.2)
    refused = subprocess.run([sys.executable, "-m", "gossipfl", "peer", "start", "--config", str(nodes["0"].config),
                              "--rounds", "1"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    errors = [ln for ln in refused.stderr.splitlines() if ln.startswith("error:")]
    assert refused.returncode == 2 and len(errors) == 1, refused.stderr[-3000:]
    assert "rolled back" in errors[0] and "--accept-rollback" in errors[0] and "Traceback" not in refused.stderr

    peer_processes.start("0-d", nodes["0"].config, "--accept-rollback")
    db1 = nodes["1"].dir / "data" / "provenance.db"
    end = time.time() + 120
    while time.time() < end and not _rollbacks(db1, nodes["0"].peer_id):
        time.sleep(0.5)
    for name in ("0-d", "1-c"):
        peer_processes.procs[name].send_signal(signal.SIGTERM)
        assert peer_processes.procs[name].wait(60) == 0, peer_processes.log(name)[-3000:]
    assert _rollbacks(db1, nodes["0"].peer_id), peer_processes.log("1-c")[-3000:]
    _, started = load_events(data / "provenance.db", kind="started")
    assert "accepted_rollback" in started[-1].details and "--accept-rollback" in peer_processes.log("0-d")
    assert verify_log(data / "provenance.db").ok and verify_log(db1).ok


def _rollbacks(db, sender):
    try:
        _, rejected = load_events(db, kind="rejected")
    except Exception:  # being written: read again
        return []
    return [e for e in rejected if e.counterpart == sender and e.details.get("reason") == "privacy_rollback"]
