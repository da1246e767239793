"""Build the transport a peer.toml asks for."""

from __future__ import annotations

from gossip.identity import Identity
from gossip.transport import MemoryHub, Transport

from .config import PeerConfig
from .errors import ConfigError


def make_transport(cfg: PeerConfig, identity: Identity, hub: MemoryHub | None = None) -> Transport:
    kind = cfg.transport.kind
    if kind == "memory":
        return (hub or MemoryHub()).transport(identity.peer_id)
    if kind == "libp2p":
        try:
            from gossip.libp2p_transport import Libp2pTransport
        except ImportError as exc:
            raise ConfigError(f"transport.kind = libp2p is not available: {exc}") from None
        return Libp2pTransport.from_config(cfg, identity)
    if kind == "mqtt":
        try:
            from gossip.mqtt_transport import MqttTransport
        except ImportError as exc:
            raise ConfigError(f"transport.kind = mqtt is not available: {exc}") from None
        return MqttTransport.from_config(cfg, identity)
    raise ConfigError(f"transport.kind must be memory, libp2p or mqtt, got {kind!r}")
