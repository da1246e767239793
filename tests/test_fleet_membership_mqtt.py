"""Fleet membership over MQTT, on one real Mosquitto started with an MQTT plan's own password
file and ACL: the admin's login may only write membership records into inboxes; four
gateways in separate processes, one revoked and a fifth admitted while they run (the broker
reloaded with SIGHUP in between, as the operator would); nobody restarts."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import stat
from pathlib import Path

import aiomqtt
import pytest
from click.testing import CliRunner

from gossip.identity import load_key
from gossip.mqtt_transport import inbox_topic, status_topic
from gossipfl.cli import main
from peer.audit.verify import load_events, verify_log
from peer.config.parse import load_config
from peer.ops.admin import Plan
from peer.ops.mosquitto import ADMIN_PASSWORD
from peer.ops.plan import ADMIN_DIR, BROKER_DIR, write_plan
from topology import from_spec

from .netfixtures import (
    PeerProcesses,
    collect_until,
    free_ports,
    mosquitto_binary,
    mosquitto_broker,
    rounds_done,
    wait_until,
)

NET = "mqtt-fleet"
TIMEOUT = 10.0
OVERRIDES = {"train": {"local_steps": 10, "lr": 0.1}, "round": {"deadline": 3.0, "interval": 0.5, "rounds": 0},
             "aggregation": {"rule": "mean", "f": 0}}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """A ring:4 MQTT plan and one Mosquitto for the module, started with the plan's conf,
    password file and ACL; yields (plan folder, broker port, broker pid)."""
    if mosquitto_binary() is None:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    root = tmp_path_factory.mktemp("mqtt-fleet")
    (port,) = free_ports(1)
    write_plan(from_spec("ring:4"), root / "plan", network_id=NET, transport="mqtt", transport_options={"broker": f"127.0.0.1:{port}"},
               overrides=OVERRIDES, draw=False)
    with mosquitto_broker(root, root / "plan" / BROKER_DIR / "mosquitto.conf") as p:
        assert p == port
        yield root / "plan", port, broker_pid(root / "mosquitto-run.conf")


def broker_pid(conf: Path) -> int:
    """The Mosquitto process netfixtures started with `conf` (it keeps the Popen to itself)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if str(conf).encode() in argv:
                return int(entry.name)
    raise AssertionError(f"no mosquitto process runs with {conf}")


def login(plan: Path, node: str) -> dict:
    """A node's broker login, as its peer.toml and password file give it."""
    t = load_config(plan / f"node-{node}" / "peer.toml").transport
    return {"username": t.username, "password": t.password}


def admin_login(plan: Path) -> dict:
    return {"username": Plan(plan).admin.peer_id,
            "password": (plan / ADMIN_DIR / ADMIN_PASSWORD).read_text().strip()}


def mqtt(port: int, creds: dict) -> aiomqtt.Client:
    return aiomqtt.Client("127.0.0.1", port, timeout=TIMEOUT, **creds)




def test_the_admin_login_writes_membership_records_into_inboxes_only(fleet):
    plan, port, _ = fleet
    secret = plan / ADMIN_DIR / ADMIN_PASSWORD
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    admin = admin_login(plan)
    assert admin["password"] not in (plan / BROKER_DIR / "passwd").read_text()  # only its hash is there
    for node in plan.glob("node-*"):  # never on a gateway
        assert not any(admin["password"] in f.read_text(errors="replace") for f in node.rglob("*") if f.is_file())
    n0, n1 = (load_key(plan / f"node-{i}" / "peer.key").peer_id for i in (0, 1))
    aid = admin["username"]

    async def scenario():
        async with mqtt(port, login(plan, "1")) as c1, mqtt(port, admin) as ca, mqtt(port, login(plan, "0")) as c0:
            await c1.subscribe(inbox_topic("gossipfl", NET, n1, "+"), qos=1)
            await c1.subscribe(status_topic("gossipfl", NET, "+"), qos=1)
            await ca.subscribe(inbox_topic("gossipfl", NET, n1, "+"), qos=1)  # not the admin's to read
            await ca.subscribe(inbox_topic("gossipfl", NET, aid, "+"), qos=1)
            await ca.publish(status_topic("gossipfl", NET, aid), b"admin status", qos=1)  # refused
            await ca.publish(inbox_topic("gossipfl", NET, n1, n0), b"admin as node 0", qos=1)  # refused
            await c0.publish(inbox_topic("gossipfl", NET, n1, n0), b"update from 0", qos=1)  # allowed
            await ca.publish(inbox_topic("gossipfl", NET, n1, aid), b"record", qos=1)  # allowed
            await ca.publish(inbox_topic("gossipfl", NET, n0, aid), b"record for 0", qos=1)  # allowed
            got_1 = await collect_until(c1, b"record")
            await c1.publish(inbox_topic("gossipfl", NET, aid, n1), b"to the admin", qos=1)  # refused
            await c0.publish(inbox_topic("gossipfl", NET, n1, n0), b"marker", qos=1)
            await collect_until(c1, b"marker")
            await ca.publish(inbox_topic("gossipfl", NET, n1, aid), b"admin marker", qos=1)
            await collect_until(c1, b"admin marker")  # routed: anything for the admin has been too
            got_a = []
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    async for m in ca.messages:
                        got_a.append((str(m.topic), bytes(m.payload)))
            return got_1, got_a

    got_1, got_a = asyncio.run(scenario())
    assert got_1 == [(inbox_topic("gossipfl", NET, n1, n0), b"update from 0"),
                     (inbox_topic("gossipfl", NET, n1, aid), b"record")]
    assert got_a == []  # it read neither node 1's inbox nor anything sent to it



def db(folder: Path) -> Path:
    return folder / "data" / "provenance.db"


@pytest.mark.timeout(300)
def test_revoke_one_and_admit_a_fifth_gateway_while_four_run_over_mqtt(fleet, tmp_path):
    plan, _, broker = fleet
    pp = PeerProcesses(tmp_path)
    ids = {str(i): load_key(plan / f"node-{i}" / "peer.key").peer_id for i in range(4)}
    try:
        for i in range(4):
            pp.start(str(i), plan / f"node-{i}" / "peer.toml")
        wait_until(pp, list(ids), rounds_done(2), 120)

        r = CliRunner().invoke(main, ["fleet", "revoke", str(plan), "3"])
        assert r.exit_code == 0, r.output
        assert "epoch 1: revoke" in r.output and "delivered to 4 of 4 gateways" in r.output, r.output
        assert "broker login removed" in r.output and "kill -HUP" in r.output, r.output
        assert ids["3"] not in (plan / BROKER_DIR / "passwd").read_text()
        assert f"/{ids['3']}/" not in (plan / BROKER_DIR / "acl").read_text()
        # node 3 got the record too: it says so, publishes a "revoked" status and stops for good (exit 3)
        assert pp.procs["3"].wait(60) == 3, pp.log("3")[-2000:]
        assert "was revoked by the network admin" in pp.log("3")
        r = CliRunner().invoke(main, ["fleet", "status", str(plan), "--source", "mqtt", "--json"])
        assert r.exit_code == 0, r.output
        status = {row["name"]: row for row in json.loads(r.output)}
        assert status["3"]["online"] is False and status["3"]["error"] == "revoked", status["3"]
        done = {n: pp.log(n).count(" neighbours accepted") for n in ("0", "2")}
        for n, k in done.items():  # rejections before a signature holds are logged when a round closes
            wait_until(pp, [n], rounds_done(k + 2))

        r = CliRunner().invoke(main, ["fleet", "admit", str(plan), "--name", "g5", "--neighbours", "0,2"])
        assert r.exit_code == 0, r.output
        assert "epoch 2: admit" in r.output and "delivered to 3 of 3 gateways" in r.output, r.output
        assert "broker login added" in r.output, r.output
        g5 = Plan(plan).node("g5")
        ids["g5"] = g5["peer_id"]
        assert f"{ids['g5']}:$7$" in (plan / BROKER_DIR / "passwd").read_text()
        os.kill(broker, signal.SIGHUP)  # the operator reloads the broker: g5 may log in, 3 no longer
        pp.start("g5", plan / g5["config"])
        wait_until(pp, ["0", "2"], lambda t: "neighbours now" in t)
        wait_until(pp, ["g5"], rounds_done(3), 120)
        pp.kill("0")  # a neighbour of g5 dies and comes back from its unchanged folder
        pp.start("0-again", plan / "node-0" / "peer.toml")
        wait_until(pp, ["0-again"], rounds_done(2), 120)
        done = {n: pp.log(n).count(" neighbours accepted") for n in ("0-again", "2")}
        for n, k in done.items():
            wait_until(pp, [n], rounds_done(k + 1))
    finally:
        pp.stop_all()

    folders = {n: plan / f"node-{n}" for n in ("0", "1", "2", "3", "g5")}
    for label, folder in folders.items():
        assert verify_log(db(folder)).ok, label
    for label in ("0", "2"):  # node 3's former neighbours
        _, membership = load_events(db(folders[label]), kind="membership")
        assert [(e.details["epoch"], e.details["action"]) for e in membership] == [(1, "revoke"), (2, "admit")]
        revoked_at = membership[0].round
        _, received = load_events(db(folders[label]), kind="received")
        assert not [e for e in received if e.counterpart == ids["3"] and e.round >= revoked_at + 2], label
        _, aggregated = load_events(db(folders[label]), kind="aggregated")
        assert not [e for e in aggregated if ids["3"] in e.details["senders"] and e.round >= revoked_at + 2]
        assert any(ids["g5"] in e.details["senders"] for e in aggregated), label  # the fifth counts
    _, started = load_events(db(folders["0"]), kind="started")
    _, aggregated = load_events(db(folders["0"]), kind="aggregated")
    first = [e for e in aggregated if e.round >= started[-1].round][:2]  # within one round of the restart
    assert any(ids["g5"] in e.details["senders"] for e in first), [e.details["senders"] for e in first]
    _, aggregated = load_events(db(folders["g5"]), kind="aggregated")
    assert any({ids["0"], ids["2"]} & set(e.details["senders"]) for e in aggregated)
    _, membership = load_events(db(folders["1"]), kind="membership")  # passed on by its neighbours too
    assert [e.details["epoch"] for e in membership] == [1, 2]


def test_a_record_larger_than_a_tiny_models_update_still_gets_in():
    """The MQTT transport reads updates up to the model's exact size, but a membership record
    up to its own bound: admitting a gateway with many neighbours must reach a tiny-model peer."""
    from gossip.identity import Identity
    from gossip.membership import seal_record
    from gossip.mqtt_transport import MqttTransport

    admin = Identity.generate()
    record = seal_record(admin, network=NET, epoch=1, action="admit", peer=Identity.generate().peer_id,
                         neighbours=[Identity.generate().peer_id for _ in range(20)])
    t = MqttTransport(Identity.generate(), NET, max_size=len(record) // 2)
    assert t._fits(record)
    assert not t._fits(b"\x8e" + bytes(len(record)))  # anything else keeps the update bound
    assert t._fits(bytes(len(record) // 2))


def test_admit_next_to_a_revoked_gateway_is_refused_and_leaves_nothing_behind(tmp_path):
    plan = tmp_path / "plan"
    write_plan(from_spec("ring:4"), plan, network_id=NET, transport="mqtt", draw=False)
    r = CliRunner().invoke(main, ["fleet", "revoke", str(plan), "3", "--no-send"])
    assert r.exit_code == 0 and "broker login removed" in r.output, r.output
    before = {f: f.read_bytes() for f in (plan / BROKER_DIR).iterdir()}
    r = CliRunner().invoke(main, ["fleet", "admit", str(plan), "--name", "g5", "--neighbours", "0,3", "--no-send"])
    assert r.exit_code != 0 and "was revoked at epoch 1" in r.output and "Traceback" not in r.output, r.output
    assert {f: f.read_bytes() for f in (plan / BROKER_DIR).iterdir()} == before
    nodes = json.loads((plan / "plan.json").read_text())["nodes"]  # (a PeerId may contain "g5" by chance)
    assert not (plan / "node-g5").exists() and "g5" not in [n["node"] for n in nodes]
