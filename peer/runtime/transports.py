"""Build the transport a peer.toml asks for."""

from __future__ import annotations

from gossip.identity import Identity
from gossip.transport import MemoryHub, Transport

from ..config.parse import PeerConfig
from ..errors import ConfigError


def make_transport(cfg: PeerConfig, identity: Identity, hub: MemoryHub | None = None, *, max_size: int,
                   allowed: set[str] | None = None, members=None) -> Transport:
    """`max_size`: the largest message to read (peer.runtime.parts.message_limit); `allowed`: the PeerIds
    libp2p lets connect (a live set: fleet membership changes it); `members`: the fleet's PeerIds
    (a live container), whom a peer with transport.serve_relay relays for."""
    kind = cfg.transport.kind
    if kind == "memory":
        return (hub or MemoryHub()).transport(identity.peer_id)
    if kind == "libp2p":
        try:
            from gossip.libp2p_transport import Libp2pTransport
        except ImportError as exc:
            raise ConfigError(f"transport.kind = libp2p is not available: {exc}") from None
        t = cfg.transport
        return Libp2pTransport(identity, t.listen, {n.id: n.addr for n in cfg.neighbours}, max_size=max_size,
                               mdns=t.mdns, allowed=allowed, relays=t.relays, reachability=t.reachability,
                               hole_punch=t.hole_punch, announce=t.announce, serve_relay=t.serve_relay,
                               relay_for=members, reconnect_cap=cfg.round.interval or cfg.round.deadline,
                               state_dir=cfg.data_dir / "libp2p")
    if kind == "mqtt":
        try:
            from gossip.mqtt_transport import MqttTransport
        except ImportError as exc:
            raise ConfigError(f"transport.kind = mqtt is not available: {exc}") from None
        t = cfg.transport
        return MqttTransport(identity, cfg.network, host=t.host, port=t.port, username=t.username,
                             password=t.password, tls=t.tls, ca_file=t.ca_file, prefix=t.topic_prefix,
                             status=t.status, max_size=max_size, name=cfg.name)
    raise ConfigError(f"transport.kind must be memory, libp2p or mqtt, got {kind!r}")
