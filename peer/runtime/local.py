"""Many peers in one event loop over a MemoryHub: the protocol engine of the simulator and
the harness of the peer tests. Same Peer class, same signing, verification and logs."""

from __future__ import annotations

import asyncio

from gossip.transport import MemoryHub

from ..config.parse import load_config
from ..ops.plan import PlannedNode
from .driver import Peer
from .parts import build_parts


def memory_peer(config_path, hub: MemoryHub) -> Peer:
    cfg = load_config(config_path)
    return Peer(build_parts(cfg, hub=hub))


async def run_peers(peers: list[Peer], rounds: int) -> None:
    """Start every peer, run `rounds` rounds each concurrently, close them all."""
    for p in peers:
        await p.start()
    await asyncio.gather(*(p.run(rounds) for p in peers))


def build_memory_network(nodes: list[PlannedNode], hub: MemoryHub | None = None) -> tuple[MemoryHub, list[Peer]]:
    hub = hub or MemoryHub()
    return hub, [memory_peer(n.config, hub) for n in nodes]
