"""The transport kinds, one declaration each (peer.transports.base says what one holds)."""

from __future__ import annotations

from ..errors import ConfigError
from .base import NodeEndpoint, TransportKind
from .libp2p import LIBP2P
from .memory import MEMORY
from .mqtt import MQTT

KINDS: dict[str, TransportKind] = {k.name: k for k in (LIBP2P, MQTT, MEMORY)}

__all__ = ["KINDS", "NodeEndpoint", "TransportKind", "kind_of", "names", "build_transport"]


def names() -> tuple[str, ...]:
    return tuple(KINDS)


def kind_of(name: str) -> TransportKind:
    try:
        return KINDS[name]
    except KeyError:
        raise ConfigError(f"transport.kind must be one of {', '.join(KINDS)}, got {name!r}") from None


def build_transport(cfg, identity, hub=None, *, max_size: int, allowed: set[str] | None = None, members=None):
    """The transport a peer.toml asks for. `max_size`: the largest message to read
    (peer.runtime.parts.message_limit); `allowed`: the PeerIds that may connect (a live set:
    fleet membership changes it); `members`: the fleet's PeerIds (live), whom a peer serving as
    a relay serves; `hub`: the in-process network of memory peers."""
    return kind_of(cfg.transport.kind).build(cfg, identity, hub=hub, max_size=max_size, allowed=allowed,
                                             members=members)
