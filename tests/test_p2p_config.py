"""peer.toml's [transport] fields for NAT traversal: parsed, refused by name when wrong, and
carried into the libp2p transport the peer builds."""

from __future__ import annotations

import pytest

from gossip.identity import Identity, load_key
from peer.config.parse import load_config
from peer.errors import ConfigError
from peer.ops.plan import write_plan
from peer.runtime.transports import make_transport
from topology import from_spec

from .netfixtures import free_ports

RELAY = f"/ip4/203.0.113.1/tcp/4001/p2p/{Identity.generate().peer_id}"


@pytest.fixture
def node_config(tmp_path):
    nodes = write_plan(from_spec("ring:3"), tmp_path / "plan", network_id="lab", transport="libp2p",
                       ports=free_ports(3), overrides={"round": {"interval": 2.5}}, draw=False)
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
    transport = make_transport(cfg, load_key(cfg.key), max_size=1000, allowed=set(), members=members)
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


@pytest.mark.parametrize("line, field", [
    ('relays = ["/ip4/203.0.113.1/tcp/4001"]', "transport.relays"),
    (f'relays = ["{RELAY}/p2p-circuit"]', "transport.relays"),
    ('reachability = "sometimes"', "transport.reachability"),
    ('hole_punch = "yes"', "transport.hole_punch"),
    ('announce = ["198.51.100.7:4001"]', "transport.announce"),
])
def test_wrong_nat_fields_are_refused_by_name(node_config, line, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(node_config(line))
