"""MQTT plans with a Mosquitto password file and ACL: the files a plan writes, checked against a
real broker started with them (anonymous and wrong logins refused, no publishing under another
peer's sender suffix, no reading another peer's inbox, real peers still learn), and the plan's
defaults taken from the config dataclasses."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import shutil
import stat
import subprocess
from pathlib import Path

import aiomqtt
import pytest
from click.testing import CliRunner

from gossip.errors import TransportError
from gossip.identity import load_key
from gossip.mqtt_transport import MqttTransport, inbox_topic, status_topic
from gossipfl.cli import main
from peer.audit.verify import load_events, verify_log
from peer.config.parse import (
    AggregationConfig,
    DataConfig,
    ModelConfig,
    RoundConfig,
    TransportConfig,
    load_config,
    parse_config,
)
from peer.learning.classification import TrainConfig
from peer.ops.mosquitto import DASHBOARD_PASSWORD, DASHBOARD_USER, password_hash
from peer.ops.plan import BROKER_DIR, write_plan
from topology import from_spec

from .netfixtures import collect_until, free_ports, mosquitto_binary, mosquitto_broker

NET = "acl-lab"
TIMEOUT = 10.0


def mqtt_plan(tmp_path: Path, spec: str = "ring:4") -> list:
    """Through the command line, as a user plans it."""
    (port,) = free_ports(1)
    out = tmp_path / "plan"
    r = CliRunner().invoke(main, ["topology", "plan", spec, "--out", str(out), "--transport", "mqtt",
                                  "--network-id", NET, "--broker", f"127.0.0.1:{port}"])
    assert r.exit_code == 0, r.output
    return [load_config(out / f"node-{i}" / "peer.toml") for i in range(len(from_spec(spec).nodes))]


@pytest.fixture
def acl_broker(tmp_path):
    """A ring:4 mqtt plan and a real Mosquitto started with the plan's own mosquitto.conf."""
    if mosquitto_binary() is None:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    configs = mqtt_plan(tmp_path)
    with mosquitto_broker(tmp_path, tmp_path / "plan" / BROKER_DIR / "mosquitto.conf") as port:
        assert port == configs[0].transport.port
        yield configs, port


def client(cfg, port: int, password: str | None = None) -> aiomqtt.Client:
    t = cfg.transport
    return aiomqtt.Client("127.0.0.1", port, username=t.username, password=password or t.password,
                          timeout=TIMEOUT)




def test_plan_writes_a_login_per_peer_and_the_broker_files(tmp_path):
    configs = mqtt_plan(tmp_path)
    broker = tmp_path / "plan" / BROKER_DIR
    passwd = (broker / "passwd").read_text().splitlines()
    admin = load_key(tmp_path / "plan" / "admin" / "admin.key").peer_id  # writes membership records into inboxes
    assert sorted(line.split(":", 1)[0] for line in passwd) == sorted(
        [c.transport.username for c in configs] + [admin, DASHBOARD_USER])
    dashboard = broker / DASHBOARD_PASSWORD  # fleet status's login: read every status, nothing else
    assert stat.S_IMODE(dashboard.stat().st_mode) == 0o600 and dashboard.read_text().strip() not in "".join(passwd)
    for c in configs:
        assert c.transport.username == load_key(c.key).peer_id  # the ACL has a user section per PeerId
        assert c.transport.password and c.transport.password not in (broker / "passwd").read_text()
        secret = Path(c.transport.password_file)
        assert secret.parent == c.source.parent and stat.S_IMODE(secret.stat().st_mode) == 0o600
        assert c.transport.password not in c.source.read_text()  # peer.toml holds no secret
    assert stat.S_IMODE((broker / "passwd").stat().st_mode) == 0o600
    conf = (broker / "mosquitto.conf").read_text()
    assert f"listener {configs[0].transport.port} 127.0.0.1" in conf and "allow_anonymous false" in conf
    acl = (broker / "acl").read_text()
    for c in configs:  # exactly one inbox a peer may write per neighbour, all under its own suffix
        section = acl.split(f"user {c.transport.username}\n", 1)[1].split("\n\n", 1)[0].splitlines()
        writes = sorted(line.removeprefix("topic write ") for line in section if line.startswith("topic write "))
        assert writes == sorted(inbox_topic("gossipfl", NET, n.id, c.transport.username) for n in c.neighbours)
        reads = [line.split()[-1] for line in section if line.startswith("topic read")]
        assert reads == [inbox_topic("gossipfl", NET, c.transport.username, "+"),
                         status_topic("gossipfl", NET, c.transport.username)]  # its own status, no other
    section = acl.split(f"user {DASHBOARD_USER}\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert section == [f"topic read {status_topic('gossipfl', NET, '+')}"]


def test_password_hash_is_what_mosquitto_passwd_writes(tmp_path):
    tool = shutil.which("mosquitto_passwd")
    if tool is None:
        pytest.skip("mosquitto_passwd is not installed")
    f = tmp_path / "pw"
    f.write_text("someone:s3cret-ü\n")
    subprocess.run([tool, "-U", str(f)], check=True, timeout=30, capture_output=True)
    written = f.read_text().strip().split(":", 1)[1]
    _, seven, iterations, salt, _ = written.split("$")
    assert seven == "7"
    assert password_hash("s3cret-ü", base64.b64decode(salt), int(iterations)) == written
    assert password_hash("s3cret-u", base64.b64decode(salt), int(iterations)) != written


def test_anonymous_and_wrong_password_are_refused(acl_broker):
    configs, port = acl_broker

    async def scenario():
        for kw in ({}, {"username": configs[0].transport.username, "password": "not-the-password"},
                   {"username": "intruder", "password": configs[0].transport.password}):
            with pytest.raises(aiomqtt.MqttCodeError) as err:
                async with aiomqtt.Client("127.0.0.1", port, timeout=TIMEOUT, **kw):
                    pass
            assert err.value.rc in (5, 135), (kw, err.value)  # not authorized
        ident = load_key(configs[0].key)
        t = MqttTransport(ident, NET, port=port, username=ident.peer_id, password="not-the-password")
        with pytest.raises(TransportError, match="refused the login"):
            await t.start()
        async with client(configs[0], port):  # the right login gets in
            pass

    asyncio.run(scenario())


def test_a_peer_cannot_spoof_a_sender_suffix_nor_read_another_inbox(acl_broker):
    configs, port = acl_broker
    a, b, c = configs[0], configs[1], configs[2]  # ring:4: b's neighbours are a and c; a and c are not
    assert {n.id for n in b.neighbours} == {a.transport.username, c.transport.username}
    ida, idb, idc = (x.transport.username for x in (a, b, c))

    async def scenario():
        # QoS 1: the broker has routed (or dropped) a message before its PUBACK, so a message
        # published after it reaches a subscriber after it: each marker is an ordering barrier
        async with client(b, port) as cb, client(a, port) as ca, client(c, port) as cc:
            await cb.subscribe(inbox_topic("gossipfl", NET, idb, "+"), qos=1)
            await cc.subscribe(inbox_topic("gossipfl", NET, idc, "+"), qos=1)
            await ca.subscribe(inbox_topic("gossipfl", NET, idb, "+"), qos=1)  # b's inbox: not a's to read
            await ca.subscribe(status_topic("gossipfl", NET, ida), qos=1)
            await ca.publish(inbox_topic("gossipfl", NET, idb, idc), b"spoofed as c", qos=1)
            await ca.publish(inbox_topic("gossipfl", NET, idc, ida), b"to a non-neighbour", qos=1)
            await ca.publish(inbox_topic("gossipfl", NET, idb, ida), b"from a", qos=1)  # allowed
            await cc.publish(inbox_topic("gossipfl", NET, idb, idc), b"from c", qos=1)  # allowed
            await cb.publish(inbox_topic("gossipfl", NET, idc, idb), b"from b", qos=1)  # allowed
            await ca.publish(status_topic("gossipfl", NET, ida), b"a's status", qos=1)  # allowed
            return (await collect_until(cb, b"from c"), await collect_until(cc, b"from b"),
                    await collect_until(ca, b"a's status"))

    got_b, got_c, got_a = asyncio.run(scenario())
    assert got_b == [(inbox_topic("gossipfl", NET, idb, ida), b"from a"),
                     (inbox_topic("gossipfl", NET, idb, idc), b"from c")]  # not "spoofed as c"
    assert got_c == [(inbox_topic("gossipfl", NET, idc, idb), b"from b")]  # not a's, a is no neighbour
    assert [payload for _, payload in got_a] == [b"a's status"]  # nothing of b's inbox reached a


def test_planned_peers_run_rounds_through_the_acl_broker(acl_broker, peer_processes, tmp_path):
    configs, port = acl_broker
    with open(configs[0].source, "a") as f:  # node 0 opts in to sharing its learning metrics
        f.write("\n[metrics]\nshare_learning_metrics = true\n")
    for i, cfg in enumerate(configs):
        peer_processes.start(f"node-{i}", cfg.source, "--rounds", "3")
    codes = peer_processes.wait_all(240)
    assert all(code == 0 for code in codes.values()), (codes, peer_processes.log("node-0")[-3000:])
    for cfg in configs:
        db = cfg.data_dir / "provenance.db"
        assert verify_log(db).ok
        _, received = load_events(db, kind="received")
        assert {e.counterpart for e in received} == {n.id for n in cfg.neighbours}, cfg.name
        _, rejected = load_events(db, kind="rejected")  # only timing: a late update of a past round
        assert {e.details["reason"] for e in rejected} <= {"stale_round"}, [e.details for e in rejected]
    ids = [c.transport.username for c in configs]
    dashboard = (tmp_path / "plan" / BROKER_DIR / DASHBOARD_PASSWORD).read_text().strip()

    async def read_statuses():
        # a peer's login: another peer's retained status is not delivered (Mosquitto grants the
        # subscription and filters), its own is; retained messages come in subscription order,
        # so had the others been delivered, they would have come before its own
        async with client(configs[1], port) as c:
            await c.subscribe(status_topic("gossipfl", NET, ids[0]), qos=1)
            await c.subscribe(status_topic("gossipfl", NET, "+"), qos=1)
            await c.subscribe(status_topic("gossipfl", NET, ids[1]), qos=1)
            own = await until_topic(c, status_topic("gossipfl", NET, ids[1]))
        async with dashboard_client() as d:  # the dashboard login: every status
            await d.subscribe(status_topic("gossipfl", NET, "+"), qos=1)
            got = {}
            async with asyncio.timeout(TIMEOUT):
                async for m in d.messages:
                    got[str(m.topic)] = json.loads(m.payload)
                    if len(got) == len(ids):
                        break
        return own, got

    def dashboard_client() -> aiomqtt.Client:
        return aiomqtt.Client("127.0.0.1", port, username=DASHBOARD_USER, password=dashboard, timeout=TIMEOUT)

    own, statuses = asyncio.run(read_statuses())
    assert own == [status_topic("gossipfl", NET, ids[1])]  # only its own
    for i, pid in enumerate(ids):
        status = statuses[status_topic("gossipfl", NET, pid)]
        assert status["round"] == 2 and status["online"] is False and status["reason"] == "stopped"
        shared = {k for k in ("loss", "train", "eval") if k in status}
        assert shared == ({"loss", "train", "eval"} if i == 0 else set()), (i, status)  # opted in: node 0 only
    assert "accuracy" in statuses[status_topic("gossipfl", NET, ids[0])]["eval"]

    plan = tmp_path / "plan"  # `fleet status --source mqtt` reads the plan's dashboard login
    rows = fleet_json(plan, "--source", "mqtt")
    assert [(r["round"], r["source"]) for r in rows] == [(2, "mqtt")] * 4, rows
    assert [r["metric"] for r in rows] == ["accuracy", None, None, None]
    table = CliRunner().invoke(main, ["fleet", "status", str(plan), "--source", "mqtt", "--timeout", "3"],
                               env={"COLUMNS": "80"})
    assert table.exit_code == 0 and "accuracy" in table.output and "share_learning_metrics" in table.output
    assert max(map(len, table.output.splitlines())) <= 80, table.output
    # a peer's own login (what a dashboard had to borrow before) reads its own status only
    rows = fleet_json(plan, "--source", "mqtt", "--username", ids[1],
                      "--password-file", str(plan / "node-1" / "mqtt.password"))
    assert [r["round"] for r in rows] == [None, 2, None, None], rows
    assert rows[0]["error"] == "no status on the broker"

    async def dashboard_writes():
        """The dashboard publishes a forged status; then node 2 publishes a marker to its own:
        the forged one, had the broker routed it, would reach the subscriber before the marker."""
        async with dashboard_client() as d, client(configs[2], port) as c2:
            await c2.subscribe(status_topic("gossipfl", NET, ids[2]), qos=1)
            await until_topic(c2, status_topic("gossipfl", NET, ids[2]))  # the retained one
            await d.publish(status_topic("gossipfl", NET, ids[2]), b"forged", qos=1)
            await c2.publish(status_topic("gossipfl", NET, ids[2]), b"marker", qos=1)
            return await collect_until(c2, b"marker")

    assert [payload for _, payload in asyncio.run(dashboard_writes())] == [b"marker"]


async def until_topic(c: aiomqtt.Client, topic: str) -> list[str]:
    """The topics of the messages a client gets up to and including the first on `topic`."""
    got = []
    async with asyncio.timeout(TIMEOUT):
        async for m in c.messages:
            got.append(str(m.topic))
            if got[-1] == topic:
                return got
    return got


def fleet_json(*args) -> list[dict]:
    r = CliRunner().invoke(main, ["fleet", "status", "--json", "--timeout", "3", *map(str, args)])
    assert r.exit_code == 0, r.output
    return json.loads(r.output)


def test_a_planned_node_gets_the_config_defaults(tmp_path):
    nodes = write_plan(from_spec("ring:3"), tmp_path / "plan", transport="memory", draw=False)
    for i, node in enumerate(nodes):
        cfg = load_config(node.config)
        assert cfg.train == TrainConfig()
        assert cfg.aggregation == AggregationConfig()
        assert cfg.round == RoundConfig()
        assert cfg.model == ModelConfig()
        assert cfg.data == dataclasses.replace(DataConfig(), shard=i, shards=3)
    # and a config that leaves everything out parses to the same defaults
    bare = parse_config({"identity": {"key": "k"}, "network": {"id": "n", "trust": "t"}}, tmp_path)
    assert (bare.train, bare.aggregation, bare.round, bare.model, bare.data, bare.transport) == (
        TrainConfig(), AggregationConfig(), RoundConfig(), ModelConfig(), DataConfig(), TransportConfig())


def test_a_refused_inbox_subscription_is_recognised():
    """Brokers whose ACL refuses a subscription answer 0x80 (Mosquitto's acl_file grants it and
    filters delivery instead): the transport then fails its start with the reason."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.reasoncodes import ReasonCode

    from gossip.mqtt_transport import _refused

    assert _refused([ReasonCode(PacketTypes.SUBACK, identifier=0x80)])
    assert _refused((0x80,))
    assert not _refused([ReasonCode(PacketTypes.SUBACK, identifier=1)])
    assert not _refused((1,))
