"""peer.toml's [transport] fields for NAT traversal: parsed, refused by name when wrong, and
carried into the libp2p transport the peer builds."""

from __future__ import annotations

import pytest

from gossip.identity import Identity, load_key
from peer.config.parse import load_config
from peer.errors import ConfigError
from peer.ops.plan import write_plan
from peer.transports import build_transport
from topology import from_spec

from .netfixtures import free_ports

RELAY = f"/ip4/203.0.113.1/tcp/4001/p2p/{Identity.generate().peer_id}"


@pytest.fixture
def node_config(tmp_path):
    nodes = write_plan(from_spec("ring:3"), tmp_path / "plan", network_id="lab", transport="libp2p",
                       transport_options={"ports": free_ports(3)}, overrides={"round": {"interval": 2.5}}, draw=False)
    path = nodes[0].config

    def with_transport(lines: str):
        text = path.read_text().replace("[transport]\n", "[transport]\n" + lines + "\n")
        path.write_text(text)
        return path

    return with_transport


def test_the_nat_fields_reach_the_transport(node_config):
    path = node_config(f'relays = ["{RELAY}"]\nreachability = "private"\nhole_punch = false\n'
                       f'serve_relay = true\nannounce = ["/ip4/198.51.100.7/tcp/4001"]')
    cfg = load_config(path)
    t = cfg.transport
    assert (t.relays, t.reachability, t.hole_punch, t.serve_relay, t.announce) == (
        [RELAY], "private", False, True, ["/ip4/198.51.100.7/tcp/4001"])
    members = {"x"}
    transport = build_transport(cfg, load_key(cfg.key), max_size=1000, allowed=set(), members=members)
    s = transport.settings
    assert [r.peer_id for r in s.relays] == [RELAY.rsplit("/", 1)[1]] and s.reachability == "private"
    assert not s.hole_punch and s.announce == ("/ip4/198.51.100.7/tcp/4001",) and s.serve_relay is not None
    assert s.relay_for("x") and not s.relay_for("y")  # the fleet's members, read live
    members.add("y")
    assert s.relay_for("y")
    assert transport._backoff.cap == 2.5  # the round interval bounds the reconnect delay
    assert s.state_dir == cfg.data_dir / "libp2p"


def test_the_defaults_keep_a_plain_libp2p_peer_as_it_was(node_config):
    cfg = load_config(node_config(""))
    t = cfg.transport
    assert (t.relays, t.reachability, t.hole_punch, t.serve_relay, t.announce) == ([], "auto", True, False, [])


def test_min_link_kbps_gives_updates_on_a_narrow_link_the_time_they_take(node_config):
    from gossip.p2p.updates import READ_TIMEOUT_BASE, read_deadline

    plain = build_transport(load_config(node_config("")), Identity.generate(), max_size=600_000, allowed=set())
    assert plain.read_deadline == plain._node.receiver.read_deadline == read_deadline(600_000)  # 1 MB/s
    narrow = load_config(node_config("min_link_kbps = 800.0"))  # 100,000 bytes/s
    assert narrow.transport.min_link_kbps == 800.0
    t = build_transport(narrow, load_key(narrow.key), max_size=600_000, allowed=set())
    # the receiver resets a stream at this deadline: 600 KB at 800 kbit/s take 6 s, not 0.6
    assert t._node.receiver.read_deadline == t.read_deadline == pytest.approx(READ_TIMEOUT_BASE + 600_008 / 100_000)


@pytest.mark.parametrize("line, field", [
    ('min_link_kbps = -1.0', "transport.min_link_kbps"),
    ('min_link_kbps = "slow"', "transport.min_link_kbps"),
    ('relays = ["/ip4/203.0.113.1/tcp/4001"]', "transport.relays"),
    (f'relays = ["{RELAY}/p2p-circuit"]', "transport.relays"),
    ('reachability = "sometimes"', "transport.reachability"),
    ('hole_punch = "yes"', "transport.hole_punch"),
    ('announce = ["198.51.100.7:4001"]', "transport.announce"),
])
def test_wrong_nat_fields_are_refused_by_name(node_config, line, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(node_config(line))


@pytest.mark.timeout(120)
def test_gossipfl_relay_start_serves_the_fleet_and_follows_a_revocation(tmp_path):
    """The relay as its own process (relay.toml beside the plan's trust list and records): two
    gateways of the plan meet through it; the admin revokes one and it loses its reservation."""
    import asyncio
    import os
    import signal
    import subprocess
    import sys
    import time
    import urllib.request

    from gossip.identity import save_key
    from gossip.libp2p_transport import Libp2pTransport
    from peer.ops.admin import Plan

    from .netfixtures import ROOT

    nodes = write_plan(from_spec("ring:3"), tmp_path / "plan", network_id="lab", transport="libp2p",
                       transport_options={"ports": free_ports(3)}, draw=False)
    plan = tmp_path / "plan"
    save_key(Identity.generate(), plan / "relay.key")
    port, metrics_port = free_ports(2)
    (plan / "relay.toml").write_text(
        '[identity]\nkey = "relay.key"\n[network]\ntrust = "trust.toml"\nrecords = "admin/records"\n'
        f'[relay]\nlisten = ["/ip4/127.0.0.1/tcp/{port}"]\nmax_reservations = 8\ncircuit_seconds = 600\n'
        f'[metrics]\nlisten = "127.0.0.1:{metrics_port}"\n')
    proc = subprocess.Popen([sys.executable, "-m", "gossipfl", "relay", "start", "--config", str(plan / "relay.toml")],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})

    def metric(name: str) -> float:
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
        return float(next(line.split()[-1] for line in text.splitlines() if line.startswith(name + " ")))

    try:
        line = proc.stdout.readline()
        assert line.startswith("relay "), line
        relay_addr = line.split(" listening on ")[1].split(",")[0].strip()
        with open(f"/proc/{proc.pid}/maps") as f:
            assert "libtorch" not in f.read()  # the relay never loads torch

        async def scenario():
            a, b = (load_key(n.dir / "peer.key") for n in nodes[:2])
            ta = Libp2pTransport(a, ["/ip4/127.0.0.1/tcp/0"], {b.peer_id: None}, relays=[relay_addr],
                                 reachability="private", hole_punch=False, reconnect_cap=0.5)
            tb = Libp2pTransport(b, ["/ip4/127.0.0.1/tcp/0"], {a.peer_id: None}, relays=[relay_addr],
                                 reachability="private", hole_punch=False, reconnect_cap=0.5)
            await ta.start()
            await tb.start()
            try:
                end = time.monotonic() + 30
                while metric("gossipfl_relay_reservations") < 2:
                    assert time.monotonic() < end, "no reservations"
                    await asyncio.sleep(0.2)
                assert await tb.send(a.peer_id, b"through the relay")
                sender, data = await asyncio.wait_for(ta.queue.get(), 10)
                assert (sender, bytes(data)) == (b.peer_id, b"through the relay")
                Plan(plan).sign("revoke", a.peer_id)  # the admin revokes a; the relay reads its records
                while metric("gossipfl_relay_reservations") > 1 or metric("gossipfl_relay_circuits") > 0:
                    assert time.monotonic() < end + 30, "the revocation did not apply"
                    await asyncio.sleep(0.2)
                while (await tb.links())[a.peer_id] is not None:  # b's relayed connection to a ended too
                    assert time.monotonic() < end + 40, await tb.links()
                    await asyncio.sleep(0.2)
                tb._backoff.clear()
                assert not await tb.send(a.peer_id, b"to the revoked")  # and no new circuit
                assert metric("gossipfl_relay_refused_connections") >= 1 and ta.queue.empty()
            finally:
                await tb.close()
                await ta.close()

        asyncio.run(scenario())
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
