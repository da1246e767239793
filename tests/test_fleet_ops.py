"""Setting a fleet up and changing it, without hand edits: plans from a template, the [round]
values a plan writes, round.rounds as the round to stop at, and what admit and revoke leave in
the plan folder (free ports, a unit, the template's modules; a revoked key nowhere)."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from gossip.trust import load_trust_list
from gossipfl.cli import main
from peer.config.parse import load_config
from peer.errors import ConfigError
from peer.ops.admin import Plan
from peer.ops.plan import write_plan
from peer.ops.template import NodeTemplate
from peer.runtime.driver import Peer
from peer.runtime.local import build_memory_network, memory_peer
from peer.runtime.membership import Membership
from peer.runtime.parts import build_parts
from topology import from_spec

from .netfixtures import ROOT, free_ports

EXAMPLE = ROOT / "examples" / "iot_anomaly"


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def peer_toml(path: Path) -> dict:
    return tomllib.loads(path.read_text())


# --- plans from a template -------------------------------------------------------------------


def test_a_template_gives_every_node_the_users_learner_data_and_metrics(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    shutil.copy(EXAMPLE / "gateway.py", site / "gateway.py")
    (site / "data").mkdir()
    for name in ("0", "1", "2"):  # the per-node data the template's pattern names (node 3 has none here)
        x = np.random.default_rng(int(name)).normal(size=(20, 4))
        (site / "data" / f"{name}.csv").write_text("a,b,c,d,label\n" + "".join(
            ",".join(f"{v:.4f}" for v in row) + f",{i % 2}\n" for i, row in enumerate(x)))
    template = site / "peer.toml"
    template.write_text((EXAMPLE / "peer.toml").read_text().replace(
        '[data]\nsource = "gateway:sensors"', '[data]\nsource = "csv"\npath = "data/{name}.csv"') +
        '\n[metrics]\nlisten = "127.0.0.1:9400"\n\n[round]\ndeadline = 4.0\n\n[identity]\nkey = "mine.key"\n')
    base, metrics = free_ports(1)[0], 9400
    r = cli("topology", "plan", "ring:4", "--out", tmp_path / "plan", "--template", template, "--base-port", base,
            "--rounds", 5)
    assert r.exit_code == 0, r.output
    assert "template: [identity] ignored" in r.output and "copied into every node folder: gateway.py" in r.output
    assert "no such file beside the template for 1 node(s)" in r.output and "node-3/data/3.csv" in r.output
    for i in range(4):
        node = tmp_path / "plan" / f"node-{i}"
        cfg = load_config(node / "peer.toml")  # loads: gateway.py is beside it
        assert (cfg.model.name, cfg.train.learner) == ("gateway:autoencoder", "gateway:AnomalyLearner")
        assert cfg.train.lr == 0.003 and cfg.model.options == {"hidden": 32, "code": 8}
        assert cfg.data.source == "csv" and cfg.data.path == str(node / "data" / f"{i}.csv")
        assert (cfg.data.shard, cfg.data.shards) == (i, 4)
        assert cfg.metrics.listen == f"127.0.0.1:{metrics + i}"
        assert cfg.round.deadline == 4.0 and cfg.round.rounds == 5 and cfg.key == node / "peer.key"
        assert (node / "gateway.py").read_bytes() == (EXAMPLE / "gateway.py").read_bytes()
        assert (node / "data" / f"{i}.csv").exists() == (i < 3)
    kept = tmp_path / "plan" / "template"
    assert (kept / "gateway.py").exists() and 'path = "data/{name}.csv"' in (kept / "template.toml").read_text()
    manifest = json.loads((tmp_path / "plan" / "plan.json").read_text())
    assert [n["metrics_port"] for n in manifest["nodes"]] == [metrics + i for i in range(4)]
    assert manifest["gateway"]["install_dir"] == "/opt/gossipfl"


def test_template_mistakes_are_one_line_errors_before_anything_is_written(tmp_path):
    bad = tmp_path / "bad.toml"
    for text, needle in [('[data]\npath = "data/{node}.csv"\n', "unknown placeholder {node}"),
                         ('[metrics]\nlisten = "nowhere"\n', "template metrics.listen must be HOST:PORT"),
                         ('[model]\nname = "missing:factory"\n', "no module 'missing'"),
                         ('oops = 1\n', "oops = ... at the top level")]:
        bad.write_text(text)
        r = cli("topology", "plan", "ring:3", "--out", tmp_path / "p", "--template", bad, "--transport", "memory")
        assert r.exit_code == 2 and needle in r.output and len(r.output.strip().splitlines()) == 1, r.output
    base = free_ports(1)[0]
    r = cli("topology", "plan", "ring:3", "--out", tmp_path / "p", "--base-port", base, "--metrics",
            f"127.0.0.1:{base + 1}")
    assert r.exit_code == 2 and "ports clash" in r.output, r.output
    r = cli("topology", "plan", "ring:3", "--out", tmp_path / "p", "--broker", "127.0.0.1:1999")
    assert r.exit_code == 2 and "--broker applies to --transport mqtt" in r.output, r.output
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize("spec, rule, f, quorum", [
    ("regular:6,4", "median", 1, 3),  # median can aggregate the 4 models of 3 neighbours and itself with f = 1
    ("regular:8,4", "krum", 1, 0),  # krum needs n > 2f + 2: 4 models are too few, wait for all
    ("ring:5", "mean", 0, 0),  # nobody may stay silent with f = 0
])
def test_a_plan_writes_explicit_round_values_with_their_reasons(tmp_path, spec, rule, f, quorum):
    nodes = write_plan(from_spec(spec), tmp_path / "plan", transport="libp2p", draw=False,
                       transport_options={"ports": free_ports(len(from_spec(spec)))},
                       overrides={"aggregation": {"rule": rule, "f": f}})
    text = nodes[0].config.read_text()
    cfg = load_config(nodes[0].config)
    assert (cfg.round.quorum, cfg.round.interval, cfg.round.deadline, cfg.round.rounds) == (quorum, 2.0, 10.0, 0)
    assert "\ninterval = 2.0 " in text and "keep in step" in text and "the round to stop at" in text
    assert ("proceed once" in text) == (quorum > 0) and (f"{rule} cannot aggregate" in text) == (rule == "krum")
    memory = write_plan(from_spec(spec), tmp_path / "memory", transport="memory", draw=False,
                        overrides={"aggregation": {"rule": rule, "f": f}})
    mem = load_config(memory[0].config).round
    assert (mem.quorum, mem.interval) == (0, 0.0)  # one process: the caller runs the rounds


# --- round.rounds: the round to stop at ------------------------------------------------------


def test_round_rounds_is_the_round_to_stop_at_across_restarts(tmp_path):
    over = {"round": {"deadline": 5.0, "train_in_thread": False, "rounds": 3}, "train": {"local_steps": 2}}
    nodes = write_plan(from_spec("ring:3"), tmp_path, transport="memory", overrides=over, draw=False)

    async def run_all(peers):
        for p in peers:
            await p.start()
        await asyncio.gather(*(p.run() for p in peers))

    _, peers = build_memory_network(nodes)
    asyncio.run(run_all(peers))
    assert [p.round for p in peers] == [3, 3, 3] and all(len(p.history) == 3 for p in peers)
    _, again = build_memory_network(nodes)  # restarted at round 3 of 3: nothing left to do
    asyncio.run(run_all(again))
    assert [p.round for p in again] == [3, 3, 3] and all(not p.history for p in again)
    for n in nodes:
        n.config.write_text(n.config.read_text().replace("\nrounds = 3 ", "\nrounds = 5 "))
    _, later = build_memory_network(nodes)  # to round 5: two more, not five
    asyncio.run(run_all(later))
    assert [p.round for p in later] == [5, 5, 5] and all(len(p.history) == 2 for p in later)
    _, counted = build_memory_network(nodes)  # run(n) still means n more rounds
    asyncio.run(run_all_n(counted, 1))
    assert [p.round for p in counted] == [6, 6, 6]


async def run_all_n(peers, n):
    for p in peers:
        await p.start()
    await asyncio.gather(*(p.run(n) for p in peers))


# --- admit: free ports, a unit, the template -----------------------------------------------------


def test_admit_picks_ports_no_node_uses_and_writes_the_unit_and_modules(tmp_path):
    plan = tmp_path / "plan"
    listen = free_ports(3)
    nodes = write_plan(from_spec("ring:4"), plan, template=NodeTemplate.load(EXAMPLE / "peer.toml"),
                       overrides={"metrics": {"listen": "127.0.0.1:9400"}}, draw=False,
                       transport_options={"ports": [*listen, 9404]})  # node 3 listens where a 5th metrics would
    highest = max(listen)
    busy = socket.socket()
    try:  # something else on this machine holds the port after the plan's highest
        busy.bind(("127.0.0.1", highest + 1))
    except OSError:
        pass  # held already: the same for admit
    try:
        r = cli("fleet", "admit", plan, "--name", "g5", "--neighbours", "0,2", "--no-send")
    finally:
        busy.close()
    assert r.exit_code == 0, r.output
    cfg = load_config(plan / "node-g5" / "peer.toml")
    port = int(cfg.transport.listen[0].split("/")[4])
    metrics = int(cfg.metrics.listen.rpartition(":")[2])
    used = {n.port for n in nodes} | {n.metrics_port for n in nodes}
    assert port not in used and metrics not in used and port != metrics and port > highest + 1
    assert metrics >= 9405  # the template's base + 4 is node 3's listening port: the next free one
    assert f"listen port {port}, metrics port {metrics}" in r.output
    unit = plan / "node-g5" / "gossipfl-g5.service"
    assert unit.exists() and "ExecStart=/opt/gossipfl/venv/bin/gossipfl peer start --config " \
        "/opt/gossipfl/node-g5/peer.toml" in unit.read_text()
    assert (plan / "node-g5" / "gateway.py").exists() and cfg.train.learner == "gateway:AnomalyLearner"
    assert (cfg.data.shard, cfg.data.shards) == (4, 5) and "copied into it from the plan's template: gateway.py" \
        in r.output
    for label in ("0", "2"):  # its neighbours' peer.toml name it, with its address
        nb = {n.id: n for n in load_config(plan / f"node-{label}" / "peer.toml").neighbours}
        g5 = Plan(plan).node("g5")["peer_id"]
        assert nb[g5].addr == f"{cfg.transport.listen[0]}/p2p/{g5}" and nb[g5].degree == 2
    r = cli("fleet", "admit", plan, "--name", "g6", "--neighbours", "1", "--port", nodes[2].port, "--no-send")
    assert r.exit_code == 2 and f"--port {nodes[2].port} is node 2's listening port" in r.output, r.output


# --- revoke: the key leaves the plan, the former neighbours still start -------------------------------


def test_revoke_takes_the_key_out_of_the_plan_and_a_node_set_up_again_does_not_trust_it(tmp_path):
    plan = tmp_path / "plan"
    write_plan(from_spec("ring:4"), plan, transport_options={"ports": free_ports(4)}, draw=False,
               overrides={"aggregation": {"rule": "mean", "f": 0}})
    stolen = Plan(plan).node("1")["peer_id"]
    r = cli("fleet", "revoke", plan, "1", "--no-send")
    assert r.exit_code == 0 and "rewrote the neighbours in node-0, node-2" in r.output, r.output
    assert stolen not in load_trust_list(plan / "trust.toml").peers
    assert stolen not in (plan / "trust.toml").read_text()
    for label in ("0", "2"):
        assert stolen not in (plan / f"node-{label}" / "peer.toml").read_text()
    # a former neighbour set up again from the plan (a fresh data folder): the stolen key is nobody
    peer = Peer(build_parts(load_config(plan / "node-0" / "peer.toml")))
    try:
        assert stolen not in peer.membership.trusted and stolen not in peer.verifier.trusted
        assert stolen not in peer.neighbours and stolen not in peer.parts.allowed
    finally:
        peer.prov.close()
        peer.lock.release()
    r = cli("fleet", "revoke", plan, "1", "--no-send")
    assert r.exit_code == 2 and "revoked already" in r.output


def test_a_peer_toml_naming_a_revoked_neighbour_starts_with_a_warning(tmp_path, caplog):
    plan = tmp_path / "plan"
    nodes = write_plan(from_spec("ring:4"), plan, transport="memory", draw=False,
                       overrides={"aggregation": {"rule": "mean", "f": 0}, "round": {"deadline": 0.5}})
    old = nodes[0].config.read_text()  # what node 0's gateway still has
    r = cli("fleet", "revoke", plan, "1", "--no-send")
    assert r.exit_code == 0, r.output
    nodes[0].config.write_text(old)
    revoked = nodes[1].peer_id
    with pytest.raises(ConfigError, match="is not on the trust list .* copy this peer.toml from the plan again"):
        build_parts(load_config(nodes[0].config))  # no record here yet: an unknown name is still an error
    record = next((plan / "admin" / "records").glob("*-revoke-*"))
    (nodes[0].dir / "data").mkdir(exist_ok=True)
    stored = Membership(nodes[0].peer_id, "gossipfl", load_trust_list(plan / "trust.toml").admin, set(), {},
                        nodes[0].dir / "data" / "membership.msgpack")
    assert stored.offer(record.read_bytes()).record is not None  # what the running peer stored
    with caplog.at_level(logging.WARNING, logger="gossipfl.peer"):
        parts = build_parts(load_config(nodes[0].config))
    assert [n.id for n in parts.cfg.neighbours] == [nodes[3].peer_id] and parts.neighbours == [nodes[3].peer_id]
    assert any("was revoked by the network admin: not a neighbour any more" in m for m in caplog.messages)
    run = subprocess.run([sys.executable, "-m", "gossipfl", "peer", "start", "--config", str(nodes[0].config),
                          "--rounds", "1"], capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "was revoked by the network admin" in run.stderr and "error:" not in run.stderr
    again = memory_peer(nodes[0].config, None)
    try:
        assert revoked not in again.neighbours and revoked in again.membership.revoked
    finally:
        again.prov.close()
        again.lock.release()
