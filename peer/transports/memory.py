"""The memory transport: peers in one process (the simulator, tests, examples)."""

from __future__ import annotations

from typing import ClassVar

from .base import TransportKind


class MemoryKind(TransportKind):
    name = "memory"
    summary = "in one process only: the simulator, tests"
    # its peers share one event loop and the caller runs their rounds: no units, no pacing
    deployed: ClassVar[bool] = False

    def build(self, cfg, identity, *, hub=None, max_size: int, allowed=None, members=None):
        from gossip.transport import MemoryHub

        return (hub or MemoryHub()).transport(identity.peer_id)


MEMORY = MemoryKind()
