"""`gossipfl fleet status` and `--log-format json`: read from real metrics endpoints, real
MQTT status topics on the test's own Mosquitto, and real `gossipfl peer start` processes."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import urllib.request

import pytest
from click.testing import CliRunner

from gossip.identity import load_key
from gossipfl.cli import main
from peer.ops.plan import write_plan
from peer.ops.status import Member, members, row_from_metrics, row_from_status
from peer.runtime.metrics import PeerMetrics
from topology import from_spec

from .netfixtures import free_ports

SETTINGS = {"train": {"local_steps": 10, "lr": 0.1}, "round": {"deadline": 3.0, "interval": 0.5},
            "aggregation": {"rule": "mean", "f": 0}}


def plan(tmp_path, transport="libp2p", n=3, rounds=0, broker=1883, metrics=True):
    over = {k: dict(v) for k, v in SETTINGS.items()}
    over["round"]["rounds"] = rounds
    nodes = write_plan(from_spec(f"ring:{n}"), tmp_path / "plan", network_id="lab", transport=transport,
                       transport_options={"ports": free_ports(n), "broker": f"127.0.0.1:{broker}"}, overrides=over, draw=False)
    ports = free_ports(n)
    if metrics:  # what a plan would write: one endpoint per node
        for node, port in zip(nodes, ports, strict=True):
            with open(node.config, "a") as f:
                f.write(f'\n[metrics]\nlisten = "127.0.0.1:{port}"\n')
    return nodes, ports


def status_json(*args) -> list[dict]:
    r = CliRunner().invoke(main, ["fleet", "status", "--json", "--timeout", "2", *map(str, args)])
    assert r.exit_code == 0, r.output
    return json.loads(r.output)


# --- rows from what peers publish -------------------------------------------------------------


def test_a_metrics_page_and_a_status_give_the_same_row(tmp_path):
    (port,) = free_ports(1)
    pm = PeerMetrics("gw-1", "12D3KooWp", neighbours=2, share_learning_metrics=True)
    pm.start(f"127.0.0.1:{port}", loop_lag=False)
    try:
        status = pm.round_done(6, train={"loss": 0.5}, eval={"accuracy": 0.875, "loss": 0.25}, heard=["a"],
                               aggregated=True, rejected_total={"bad_signature": 2, "replayed": 1})
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    finally:
        pm.stop()
    member = Member("gw-1", "12D3KooWp", tmp_path / "peer.toml", f"127.0.0.1:{port}", None)
    a, b = row_from_metrics(member, text), row_from_status(member, json.loads(json.dumps(status)))
    for row in (a, b):
        assert (row.online, row.round, row.metric, row.value, row.loss) == (True, 6, "accuracy", 0.875, 0.5)
        assert (row.heard, row.neighbours, row.rejected) == (1, 2, 3)
        assert 0 <= row.since_aggregation < 600
    assert (a.source, b.source) == ("metrics", "mqtt")


def test_a_learner_without_accuracy_shows_its_own_metric_and_hostile_statuses_are_dropped(tmp_path):
    member = Member("gw", "p", tmp_path, None, None)
    row = row_from_status(member, {"online": True, "round": 2, "eval": {"mse": 0.01, "bad": "x"}, "loss": "NaN",
                                   "rejected": {"a": "many", "b": 2}, "last_aggregation": None})
    assert (row.metric, row.value, row.loss, row.rejected, row.since_aggregation) == ("mse", 0.01, None, 2, None)
    gone = row_from_status(member, {"online": False, "reason": "connection lost", "round": [1]})
    assert not gone.online and gone.error == "connection lost" and gone.round is None


# --- the command against endpoints ------------------------------------------------------------


def test_fleet_status_reads_every_endpoint_and_shows_the_silent_one_offline(tmp_path):
    nodes, ports = plan(tmp_path)
    served = [PeerMetrics(n.label, n.peer_id, neighbours=2, share_learning_metrics=True) for n in nodes[:2]]
    for i, (pm, port) in enumerate(zip(served, ports, strict=False)):
        pm.start(f"127.0.0.1:{port}", loop_lag=False)
        pm.round_done(3 + i, train={"loss": 0.5}, eval={"accuracy": 0.75}, heard=[nodes[2].peer_id])
    try:
        rows = status_json(tmp_path / "plan")
        table = CliRunner().invoke(main, ["fleet", "status", "--timeout", "2", str(nodes[0].config),
                                          str(nodes[2].config)], env={"COLUMNS": "80"})
    finally:
        for pm in served:
            pm.stop()
    assert [r["name"] for r in rows] == [n.label for n in nodes]
    assert [r["round"] for r in rows] == [3, 4, None]
    assert [r["online"] for r in rows] == [True, True, False]
    assert rows[0]["value"] == 0.75 and rows[0]["heard"] == 1 and rows[0]["source"] == "metrics"
    assert f"127.0.0.1:{ports[2]}" in rows[2]["error"]
    assert table.exit_code == 0, table.output
    assert "1/2 online" in table.output and "offline" in table.output and "Traceback" not in table.output
    lines = table.output.splitlines()
    assert max(map(len, lines)) <= 80, table.output
    assert f"{nodes[2].label} (..{nodes[2].peer_id[-8:]}) is offline: metrics 127.0.0.1:{ports[2]}" in table.output
    row = next(line.split() for line in lines if line.startswith(f"{nodes[0].label} "))
    assert row[2:9] == ["3", "0.75", "0.5", "1/2", "-", "0", "online"], lines  # every column, none cut


def test_fleet_status_errors_are_one_line(tmp_path):
    r = CliRunner().invoke(main, ["fleet", "status", str(tmp_path / "nowhere")])
    assert r.exit_code == 2 and r.output.startswith("error: ") and len(r.output.splitlines()) == 1
    (tmp_path / "empty").mkdir()
    r = CliRunner().invoke(main, ["fleet", "status", str(tmp_path / "empty")])
    assert r.exit_code == 2 and "no plan.json, peer.toml" in r.output


@pytest.mark.timeout(90)
def test_fleet_status_reads_mqtt_status_topics(tmp_path, mosquitto):
    from gossip.mqtt_transport import MqttTransport

    nodes, _ = plan(tmp_path, "mqtt", broker=mosquitto, metrics=False)

    async def run():
        t = MqttTransport(load_key(nodes[0].dir / "peer.key"), "lab", port=mosquitto, name=nodes[0].label)
        await t.start()
        await t.status(PeerMetrics(nodes[0].label, nodes[0].peer_id, share_learning_metrics=True).round_done(
            9, train={"loss": 0.5}, eval={"accuracy": 0.5}, heard=[nodes[1].peer_id], aggregated=True))
        gone = MqttTransport(load_key(nodes[1].dir / "peer.key"), "lab", port=mosquitto, name=nodes[1].label)
        await gone.start()
        await gone.status({"round": 4})
        await gone.close()
        try:
            return await asyncio.to_thread(status_json, tmp_path / "plan")
        finally:
            await t.close()

    rows = asyncio.run(run())
    assert [(r["online"], r["round"], r["source"]) for r in rows] == [
        (True, 9, "mqtt"), (False, 4, "mqtt"), (False, None, "")]
    assert rows[0]["value"] == 0.5 and rows[0]["heard"] == 1 and rows[0]["since_aggregation"] is not None
    assert rows[1]["error"] == "stopped" and rows[2]["error"] == "no status on the broker"


def test_members_of_a_plan_folder_and_of_config_files(tmp_path):
    nodes, ports = plan(tmp_path)
    got = members([tmp_path / "plan"])
    assert [(m.name, m.peer_id, m.metrics) for m in got] == [
        (n.label, n.peer_id, f"127.0.0.1:{p}") for n, p in zip(nodes, ports, strict=True)]
    assert [m.peer_id for m in members([nodes[1].config, nodes[1].dir])] == [nodes[1].peer_id]


# --- real peer processes (need the peer to serve its metrics: peer.runtime.driver wiring) -------------------


def wait_rounds(peer_processes, names, rnd, timeout=180):
    end = time.time() + timeout
    while time.time() < end:
        if all(f"round {rnd}:" in peer_processes.log(n) or f'"round": {rnd}' in peer_processes.log(n)
               for n in names):
            return
        time.sleep(0.3)
    raise AssertionError(peer_processes.log(names[0])[-3000:])


def poke(port: int) -> None:
    """Junk on a libp2p port: py-libp2p has something to say about it."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"\x13/multistream/1.0.0\n" + b"\xff" * 64)
        time.sleep(0.2)


@pytest.mark.timeout(300)
def test_a_running_libp2p_fleet_is_scraped_logs_json_and_shows_a_killed_peer_offline(tmp_path, peer_processes):
    nodes, ports = plan(tmp_path)
    names = [n.label for n in nodes]
    for n in nodes:
        peer_processes.start(n.label, n.config, "--log-format", "json")
    wait_rounds(peer_processes, names, 2)
    poke(nodes[0].port)
    text = urllib.request.urlopen(f"http://127.0.0.1:{ports[0]}/metrics", timeout=10).read().decode()
    assert f'gossipfl_peer_info{{name="{nodes[0].label}",peer_id="{nodes[0].peer_id}"}} 1.0' in text
    rows = status_json(tmp_path / "plan")
    assert all(r["online"] and r["round"] >= 2 and r["source"] == "metrics" for r in rows), rows
    assert all(r["heard"] is not None for r in rows), rows
    assert all(r["metric"] is None and r["loss"] is None for r in rows), rows  # not shared by default
    peer_processes.kill(names[2])
    rows = status_json(tmp_path / "plan")
    assert [r["online"] for r in rows] == [True, True, False]
    peer_processes.stop_all()
    for name in names[:2]:  # every line a JSON object, with the peer's plan name
        lines = [ln for ln in peer_processes.log(name).splitlines() if ln.strip()]
        objects = [json.loads(ln) for ln in lines]
        assert objects and all(o.get("peer") == name for o in objects), lines[:5]
        assert any(o.get("round") is not None and o.get("event") for o in objects), lines[:20]
        others = [n.peer_id for n in nodes if n.label != name]
        assert not any(pid in o["msg"] and f"(..{pid[-8:]})" not in o["msg"] for o in objects for pid in others)
