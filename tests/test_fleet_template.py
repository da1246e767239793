"""The README's fleet walk-through, run as written: a plan from the iot_anomaly template, three
real `gossipfl peer start` processes over libp2p on 127.0.0.1 running the user's learner with
no edit of any file, two rounds, logs that verify; and what each peer says it listens on is an
address others can dial (`gossipfl peer id` prints the same)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from peer.audit.verify import load_events, verify_log

from .netfixtures import ROOT, free_run

README_PORTS = (4101, 9401)  # the listening and metrics bases the README names


def walkthrough() -> str:
    """The README's bash block that plans from the iot_anomaly template."""
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    (block,) = [b for b in blocks if "--template examples/iot_anomaly/peer.toml" in b]
    return block


@pytest.mark.timeout(400)
def test_the_readme_fleet_walkthrough_runs_a_user_learner_over_libp2p(tmp_path):
    block = walkthrough()
    assert "--transport" not in block and "--rounds 2" in block  # libp2p, the default; two rounds
    # the same commands, on ports free on this machine now (a busy test machine may hold the README's)
    listen = free_run(3)
    metrics = free_run(3, avoid=range(listen, listen + 3))
    script = block.replace(f"--base-port {README_PORTS[0]}", f"--base-port {listen}").replace(
        f"127.0.0.1:{README_PORTS[1]}", f"127.0.0.1:{metrics}")
    (tmp_path / "examples").symlink_to(ROOT / "examples")  # the README runs from a checkout
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    shell = f'set -e\ngossipfl() {{ "{sys.executable}" -m gossipfl "$@"; }}\n{script}'
    run = subprocess.run(["bash", "-c", shell], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=360)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-4000:]
    assert "copied into every node folder: gateway.py" in out
    fleet = tmp_path / "fleet"
    for i in range(3):
        assert f"peer {i} stopped at round 2 (rounds done)" in out, out[-4000:]
        db = fleet / f"node-{i}" / "data" / "provenance.db"
        assert verify_log(db).ok
        _, started = load_events(db, kind="started")
        assert started[0].details["addresses"] == [f"/ip4/127.0.0.1/tcp/{listen + i}/p2p/"
                                                   f"{_peer_id(fleet / f'node-{i}')}"]
    assert "auroc" in out  # the user's learner evaluated every round
    assert re.search(r"round 1: .* [12]/2 neighbours accepted", out), out[-4000:]  # and they learned together
    listening = re.findall(r"listening on (\S+)", out)
    ids = {_peer_id(fleet / f"node-{i}") for i in range(3)}
    assert len(listening) == 3 and all(a.rsplit("/", 1)[1] in ids for a in listening), listening
    for i in range(3):  # what it logged is what `peer id` says others dial: an address, not a name
        shown = subprocess.run([sys.executable, "-m", "gossipfl", "peer", "id", "--config",
                                str(fleet / f"node-{i}" / "peer.toml")], capture_output=True, text=True, env=env,
                               timeout=120).stdout.split()
        assert shown[1] in listening


def _peer_id(node) -> str:
    from gossip.identity import load_key

    return load_key(node / "peer.key").peer_id
