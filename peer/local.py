"""Many peers in one event loop over a MemoryHub: the protocol engine of the simulator and
the harness of the peer tests. Same Peer class, same signing, verification and logs."""

from __future__ import annotations

import asyncio

from gossip.identity import load_key
from gossip.transport import MemoryHub

from .config import load_config
from .node import Peer, build_parts
from .plan import PlannedNode
from .transports import make_transport


def memory_peer(config_path, hub: MemoryHub, **peer_kw) -> Peer:
    cfg = load_config(config_path)
    ident = load_key(cfg.key)
    return Peer(build_parts(cfg, make_transport(cfg, ident, hub), ident), **peer_kw)


async def run_peers(peers: list[Peer], rounds: int) -> None:
    """Start every peer, run `rounds` rounds each concurrently, close them all."""
    for p in peers:
        await p.start()
    await asyncio.gather(*(p.run(rounds) for p in peers))


def build_memory_network(nodes: list[PlannedNode], hub: MemoryHub | None = None,
                         peer_kw: dict | None = None) -> tuple[MemoryHub, list[Peer]]:
    hub = hub or MemoryHub()
    peer_kw = peer_kw or {}
    return hub, [memory_peer(n.config, hub, **peer_kw.get(n.label, {})) for n in nodes]
