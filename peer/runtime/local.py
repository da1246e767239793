"""Many peers in one event loop over a MemoryHub: the protocol engine of the simulator and
the harness of the peer tests. Same Peer class, same signing, verification and logs."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

from gossip.transport import MemoryHub

from ..config.parse import load_config
from ..ops.plan import PlannedNode
from .driver import Peer
from .parts import PeerParts, build_parts


def memory_peer(config_path, hub: MemoryHub, prepare: Callable[[PeerParts], None] | None = None) -> Peer:
    """A peer on the memory transport; `prepare` may change its parts before the peer is built
    (the simulator arms attackers and seeds noise there: a peer has no attack code path)."""
    parts = build_parts(load_config(config_path), hub=hub)
    if prepare is not None:
        prepare(parts)
    return Peer(parts)


async def run_peers(peers: list[Peer], rounds: int) -> None:
    """Start every peer, run `rounds` rounds each concurrently, close them all."""
    for p in peers:
        await p.start()
    await asyncio.gather(*(p.run(rounds) for p in peers))


def build_memory_network(nodes: list[PlannedNode], hub: MemoryHub | None = None,
                         prepare: Mapping[int, Callable[[PeerParts], None]] | None = None
                         ) -> tuple[MemoryHub, list[Peer]]:
    """One peer per planned node on one hub (`prepare`: node index -> a change to its parts)."""
    hub = hub or MemoryHub()
    prepare = prepare or {}
    return hub, [memory_peer(n.config, hub, prepare.get(i)) for i, n in enumerate(nodes)]
