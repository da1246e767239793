"""Peers in separate processes over real transports: libp2p (TCP + Noise + yamux) and MQTT
through a real Mosquitto broker. All traffic on 127.0.0.1; every process is stopped."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from gossip.envelope import seal_update
from gossip.identity import Identity
from gossip.libp2p_transport import Libp2pTransport
from gossip.mqtt_transport import MqttTransport
from gossipfl.cli import main
from peer.audit.verify import load_events, verify_log
from peer.learning.model import FlatModel, build_model
from peer.ops.plan import write_plan
from topology import from_spec

from .netfixtures import free_ports

ROUNDS = 8
SETTINGS = {"train": {"local_steps": 25, "lr": 0.1}, "round": {"deadline": 4.0, "interval": 1.0},
            "aggregation": {"rule": "median", "f": 1}}


def plan(tmp_path: Path, transport: str, rounds: int = ROUNDS, broker: int = 1883):
    over = {k: dict(v) for k, v in SETTINGS.items()}
    over["round"]["rounds"] = rounds
    return write_plan(from_spec("regular:8,4", seed=2), tmp_path / "plan", network_id="lab", transport=transport,
                      transport_options={"ports": free_ports(8), "broker": f"127.0.0.1:{broker}"}, overrides=over, draw=False)


def db(node) -> Path:
    return node.dir / "data" / "provenance.db"


def check_network(nodes, min_accuracy=0.8):
    sent = {}
    for n in nodes:
        v = verify_log(db(n))
        assert v.ok, v.line()
        owner, events = load_events(db(n))
        for e in events:
            if e.kind == "sent":
                sent[(owner, e.counterpart, e.update_hash)] = True
        trained = [e for e in events if e.kind == "trained"]
        assert trained and trained[-1].details["eval_accuracy"] >= min_accuracy, (n.label, trained[-1].details)
    for n in nodes:
        owner, received = load_events(db(n), kind="received")
        assert received, n.label
        for e in received:  # every received update was sent to this peer by its sender
            assert (e.counterpart, owner, e.update_hash) in sent


def wait_for_round(pp, names, rnd, timeout):
    end = time.time() + timeout
    while time.time() < end:
        if all(f"round {rnd}:" in pp.log(n) for n in names):
            return
        time.sleep(0.2)
    raise AssertionError(f"not all of {names} reached round {rnd}:\n" + pp.log(names[0])[-2000:])


def schema_of_plan() -> bytes:
    return FlatModel(build_model("mlp", 64, 10, {"hidden": [32]})).schema


def test_libp2p_two_transports_move_a_large_update_and_refuse_oversize():
    async def scenario():
        a, b = Identity.generate(), Identity.generate()
        ta = Libp2pTransport(a, ["/ip4/127.0.0.1/tcp/0"], {}, max_size=5_000_000, allowed={b.peer_id})
        await ta.start()
        tb = Libp2pTransport(b, ["/ip4/127.0.0.1/tcp/0"], {a.peer_id: ta.addresses()[0]})
        await tb.start()
        try:
            assert ta.addresses()[0].endswith(f"/p2p/{a.peer_id}")
            msg = bytes(range(256)) * 16_000  # 4 MB
            assert await tb.send(a.peer_id, msg)
            it = ta.__aiter__()
            sender, got = await asyncio.wait_for(it.__anext__(), 30)
            assert sender == b.peer_id and got == msg
            await tb.send(a.peer_id, bytes(6_000_000))  # over the receiver's limit: reset, never delivered
            assert await tb.send(a.peer_id, b"small")
            sender, got = await asyncio.wait_for(it.__anext__(), 30)
            assert got == b"small"
        finally:
            await tb.close()
            await ta.close()

    asyncio.run(scenario())


async def _until(condition, timeout: float) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "condition not reached in time"
        await asyncio.sleep(0.05)


def test_libp2p_bounds_streams_per_sender_and_cuts_a_trickler_without_blocking_others(monkeypatch):
    from gossip import libp2p_transport as lt
    from gossip.p2p import updates

    monkeypatch.setattr(updates, "READ_TIMEOUT_BASE", 1.0)

    async def trickle(sender: Libp2pTransport, to: str, streams: int):
        """Open `streams` streams that each declare 1,000 bytes and send 10 of them."""
        from libp2p.peer.id import ID

        async def in_trio():
            pid = ID.from_base58(to)
            await sender.node.dialer.connect(to)
            for _ in range(streams):
                try:  # the receiver may reset a stream before its protocol handshake ends
                    stream = await sender.host.new_stream(pid, [lt.PROTOCOL])
                    await stream.write((1000).to_bytes(lt.LENGTH_BYTES, "big") + b"x" * 10)
                except Exception:
                    pass

        await sender.bridge.call(in_trio)

    async def scenario():
        a, b, c = Identity.generate(), Identity.generate(), Identity.generate()
        ta = Libp2pTransport(a, ["/ip4/127.0.0.1/tcp/0"], {}, allowed={b.peer_id, c.peer_id}, max_size=100_000)
        await ta.start()
        tb = Libp2pTransport(b, ["/ip4/127.0.0.1/tcp/0"], {a.peer_id: ta.addresses()[0]})
        tc = Libp2pTransport(c, ["/ip4/127.0.0.1/tcp/0"], {a.peer_id: ta.addresses()[0]})
        await tb.start()
        await tc.start()
        try:
            it = ta.__aiter__()
            await trickle(tb, a.peer_id, 4)  # one read, one waiting, two reset at once
            assert await tc.send(a.peer_id, b"honest")  # the trickler holds one slot, not all
            sender, got = await asyncio.wait_for(it.__anext__(), 5)
            assert (sender, got) == (c.peer_id, b"honest")
            await _until(lambda: ta.refused_streams == 2, 5)
            await _until(lambda: not ta.node.receiver._senders, 10)  # both trickling streams time out (1 s each), reset
            assert await tb.send(a.peer_id, b"later")
            sender, got = await asyncio.wait_for(it.__anext__(), 5)
            assert (sender, got) == (b.peer_id, b"later")
        finally:
            for t in (tc, tb, ta):
                await t.close()

    asyncio.run(scenario())


@pytest.mark.timeout(400)
def test_eight_libp2p_peer_processes_learn_survive_kills_and_shut_out_an_intruder(tmp_path, peer_processes):
    nodes = plan(tmp_path, "libp2p", rounds=16)
    names = [n.label for n in nodes]
    for n in nodes:
        peer_processes.start(n.label, n.config)
    wait_for_round(peer_processes, names, 2, 180)
    # an intruder (this test process, not on the trust list) sends validly signed updates
    intruder = Identity.generate()
    target = nodes[0]

    async def intrude():
        t = Libp2pTransport(intruder, ["/ip4/127.0.0.1/tcp/0"],
                            {target.peer_id: f"/ip4/127.0.0.1/tcp/{target.port}/p2p/{target.peer_id}"})
        await t.start()
        delivered = 0
        try:
            x = FlatModel(build_model("mlp", 64, 10, {"hidden": [32]})).get()
            for r in range(0, 40):
                msg = seal_update(intruder, x, net="lab", round=r, schema=schema_of_plan()).data
                delivered += await t.send(target.peer_id, msg)
                if delivered >= 3:
                    break
                await asyncio.sleep(0.2)
        finally:
            await t.close()
        return delivered

    # its connection is closed right after the handshake: not one stream is read
    assert asyncio.run(intrude()) == 0, peer_processes.log(target.label)[-3000:]
    # kill -9 two peers in the middle of a round; the others keep completing rounds
    victims = names[1:3]
    for v in victims:
        peer_processes.kill(v)
    survivors = [n for n in names if n not in victims]
    wait_for_round(peer_processes, survivors, 6, 180)
    for n in nodes:
        if n.label in victims:
            peer_processes.start(n.label + "-again", n.config)
    codes = peer_processes.wait_all(300)
    assert all(codes[n] == 0 for n in survivors + [v + "-again" for v in victims]), codes
    for v in victims:
        text = peer_processes.log(v + "-again")
        assert "jumping from" in text or "started at round" in text
        assert "started at round 0 " not in text  # resumed from its checkpoint
    check_network(nodes)
    _, rejected = load_events(db(target), kind="rejected")
    assert not any(e.counterpart == intruder.peer_id for e in rejected)  # it never reached the verifier


@pytest.mark.timeout(300)
def test_eight_mqtt_peer_processes_learn_through_mosquitto(tmp_path, peer_processes, mosquitto):
    nodes = plan(tmp_path, "mqtt", broker=mosquitto)
    for n in nodes:
        peer_processes.start(n.label, n.config)
    codes = peer_processes.wait_all(240)
    assert all(c == 0 for c in codes.values()), (codes, peer_processes.log(nodes[0].label)[-3000:])
    check_network(nodes)

    async def intrude_and_read_status():
        intruder = Identity.generate()
        t = MqttTransport(intruder, "lab", port=mosquitto)
        await t.start()
        try:
            import aiomqtt
            async with aiomqtt.Client("127.0.0.1", mosquitto) as c:
                await c.subscribe(f"gossipfl/lab/{nodes[0].peer_id}/status")
                msg = await asyncio.wait_for(c.messages.__anext__(), 10)
                return msg.payload
        finally:
            await t.close()

    status = asyncio.run(intrude_and_read_status())
    assert b'"round": 7' in status  # the retained status of the last round


@pytest.mark.timeout(120)
def test_mqtt_intruder_is_rejected_as_unknown_sender(tmp_path, peer_processes, mosquitto):
    nodes = plan(tmp_path, "mqtt", rounds=3, broker=mosquitto)
    target = nodes[0]
    cfg = target.config
    cfg.write_text(cfg.read_text().replace("deadline = 4.0", "deadline = 1.0"))
    peer_processes.start(target.label, cfg)

    async def intrude():
        intruder = Identity.generate()
        t = MqttTransport(intruder, "lab", port=mosquitto)
        await t.start()
        try:
            x = FlatModel(build_model("mlp", 64, 10, {"hidden": [32]})).get()
            for _ in range(600):  # until the peer's first round ended (at most 60 s: a slow start
                # subscribes late, and what is published before that reaches nobody)
                await t.send(target.peer_id, seal_update(intruder, x, net="lab", round=0, schema=schema_of_plan()).data)
                await asyncio.sleep(0.1)
                if "round 0:" in peer_processes.log(target.label):
                    break
        finally:
            await t.close()
        return intruder.peer_id

    intruder_id = asyncio.run(intrude())
    assert peer_processes.wait_all(60)[target.label] == 0
    _, rejected = load_events(db(target), kind="rejected")
    # counted, with the sender as claimed; a stranger is never a counterpart in the log
    strangers = [e for e in rejected if e.details["reason"] == "unknown_sender"]
    assert strangers and all(e.counterpart is None for e in strangers)
    assert any(intruder_id in e.details["claimed"] for e in strangers)
    assert sum(e.details["count"] for e in strangers) >= 1


def test_peer_start_errors_are_one_line(tmp_path):
    nodes = plan(tmp_path, "libp2p", rounds=1)
    cfg = nodes[0].config
    with socket.socket() as s:  # hold the peer's port
        s.bind(("127.0.0.1", nodes[0].port))
        s.listen()
        r = CliRunner().invoke(main, ["peer", "start", "--config", str(cfg)])
    assert r.exit_code == 2 and "address already in use" in r.output, r.output
    key = nodes[1].dir / "peer.key"
    key.write_text("not a key")
    key.chmod(0o600)
    r = CliRunner().invoke(main, ["peer", "start", "--config", str(nodes[1].config)])
    assert r.exit_code == 2 and "not a PEM private key" in r.output
    mq = plan(tmp_path / "mq", "mqtt", rounds=1, broker=free_ports(1)[0])
    r = CliRunner().invoke(main, ["peer", "start", "--config", str(mq[0].config)])
    assert r.exit_code == 2 and "cannot reach the MQTT broker" in r.output, r.output


def test_mdns_discovers_a_neighbour_that_has_no_address(monkeypatch):
    """transport.mdns = true: a neighbour configured by PeerId only is found on the LAN
    (here zeroconf is bound to 127.0.0.1 so nothing leaves the machine)."""
    import functools

    import libp2p.discovery.mdns.mdns as mdns_module
    import zeroconf

    monkeypatch.setattr(mdns_module, "Zeroconf", functools.partial(zeroconf.Zeroconf, interfaces=["127.0.0.1"]))

    async def scenario():
        a, b = Identity.generate(), Identity.generate()
        ta = Libp2pTransport(a, ["/ip4/127.0.0.1/tcp/0"], {}, mdns=True, allowed={b.peer_id})
        await ta.start()
        tb = Libp2pTransport(b, ["/ip4/127.0.0.1/tcp/0"], {a.peer_id: None}, mdns=True)
        await tb.start()
        try:
            delivered = False
            for _ in range(30):
                tb._backoff.clear()
                if await tb.send(a.peer_id, b"found you"):
                    delivered = True
                    break
                await asyncio.sleep(0.5)
            assert delivered
            sender, data = await asyncio.wait_for(ta.__aiter__().__anext__(), 10)
            assert (sender, data) == (b.peer_id, b"found you")
        finally:
            await tb.close()
            await ta.close()

    asyncio.run(scenario())


@pytest.mark.timeout(300)
def test_mqtt_topic_spoofing_does_not_silence_a_neighbour(tmp_path, peer_processes, mosquitto):
    """A client that is not a peer floods node-0's inbox under node-1's id in the topic (junk, and
    updates claiming node-1 as sender under a stranger's signature): node-0 still takes node-1's
    real update every round, because its inbox charges node-1's share only for updates proven
    node-1's, and rate limits key on the signed sender, never on the topic."""
    over = {k: dict(v) for k, v in SETTINGS.items()}
    over["round"].update({"rounds": 4, "deadline": 3.0})
    nodes = write_plan(from_spec("ring:3"), tmp_path / "plan", network_id="lab", transport="mqtt",
                       transport_options={"broker": f"127.0.0.1:{mosquitto}"}, overrides=over, draw=False)
    victim, friend = nodes[0], nodes[1]
    for n in nodes:
        peer_processes.start(n.label, n.config)

    async def spoof():
        import aiomqtt

        stranger = Identity.generate()
        x = FlatModel(build_model("mlp", 64, 10, {"hidden": [32]})).get()
        topic = f"gossipfl/lab/{victim.peer_id}/inbox/{friend.peer_id}"
        sent = 0
        async with aiomqtt.Client("127.0.0.1", mosquitto) as c:
            end = time.monotonic() + 60
            while time.monotonic() < end and peer_processes.procs[victim.label].poll() is None:
                forged = seal_update(stranger, x, net="lab", round=0, schema=schema_of_plan()).data
                forged = forged.replace(stranger.peer_id.encode(), friend.peer_id.encode())
                for payload in [b"\x00"] * 20 + [forged] * 5:
                    await c.publish(topic, payload, qos=0)
                    sent += 1
                await asyncio.sleep(0.05)
        return sent

    sent = asyncio.run(spoof())
    codes = peer_processes.wait_all(120)
    assert all(c == 0 for c in codes.values()), codes
    assert sent > 500
    _, received = load_events(db(victim), kind="received")
    from_friend = sorted(e.round for e in received if e.counterpart == friend.peer_id)
    # round 0 may be published before the victim has subscribed (MQTT keeps no inbox for it); every
    # round after that, under the flood, node-1's real update arrives and counts: the transport charges an
    # update to node-1's share of the inbox only once it is proven node-1's (gossip/inbox_gate.py),
    # so junk and forgeries under its name never fill that share; and the flood is never charged
    # to node-1 (no rate limit, no rejection under its name)
    assert {1, 2, 3} <= set(from_friend), from_friend
    _, rejected = load_events(db(victim), kind="rejected")
    assert sum(e.details.get("count", 1) for e in rejected) > 100  # the junk reached the peer, was summarised
    assert all(e.counterpart is None for e in rejected)  # never attributed to node-1
    _, limited = load_events(db(victim), kind="rate_limited")
    assert not limited
    assert verify_log(db(victim)).ok


def test_a_second_process_on_one_data_folder_gets_a_one_line_error(tmp_path, peer_processes):
    nodes = plan(tmp_path, "libp2p", rounds=0)
    first = peer_processes.start("first", nodes[0].config)
    end = time.time() + 60
    while "started at round" not in peer_processes.log("first"):
        assert time.time() < end and first.poll() is None, peer_processes.log("first")[-2000:]
        time.sleep(0.1)
    second = peer_processes.start("second", nodes[0].config)
    assert second.wait(60) == 2
    text = peer_processes.log("second").strip()
    assert "Traceback" not in text
    lines = [ln for ln in text.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "in use by another gossipfl peer" in lines[0] and f"pid {first.pid}" in lines[0]
    assert first.poll() is None  # the first peer runs on, untouched
