"""MQTT plans with a Mosquitto password file and ACL: the files a plan writes, checked against a
real broker started with them (anonymous and wrong logins refused, no publishing under another
peer's sender suffix, no reading another peer's inbox, real peers still learn), and the plan's
defaults taken from the config dataclasses."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
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
from peer.ops.mosquitto import password_hash
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
    assert sorted(line.split(":", 1)[0] for line in passwd) == sorted([c.transport.username for c in configs] + [admin])
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


def test_planned_peers_run_rounds_through_the_acl_broker(acl_broker, peer_processes):
    configs, port = acl_broker
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

    async def read_status():  # a peer's login reads another peer's retained status (dashboards)
        async with client(configs[1], port) as c:
            await c.subscribe(status_topic("gossipfl", NET, configs[0].transport.username), qos=1)
            async with asyncio.timeout(TIMEOUT):
                return bytes((await anext(c.messages)).payload)

    assert b'"round": 2' in asyncio.run(read_status())


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
