"""Which inbound connections get to hold a slot, decided before any protocol work (pure).

An inbound TCP connection passes two bounded stages before it is a connection of the swarm
(gossip/p2p/host.py): it waits for its first byte in one of WAITING slots, then runs the
Noise handshake in one of HANDSHAKE slots. When a stage is full, a newcomer evicts the
oldest holder of the source address that holds the most slots: a flood from one address
(or one NAT) evicts its own connections first, and an honest neighbour's handshake from
another address keeps its slot however fast the flood comes. From a single address the
policy is plain drop-oldest.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

T = TypeVar("T", bound=Hashable)  # what holds a slot: a file descriptor, a cancel scope


class Slots(Generic[T]):
    """At most `capacity` holders, each (token, source); `add` returns the evicted token."""

    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self._by_source: dict[str, OrderedDict[T, None]] = {}
        self._source_of: dict[T, str] = {}

    def __len__(self) -> int:
        return len(self._source_of)

    def __contains__(self, token: object) -> bool:
        return token in self._source_of

    def add(self, token: T, source: str) -> T | None:
        """Take a slot for `token`; when all are taken, first free the oldest slot of the
        source holding the most (ties: the source that came first) and return its token."""
        evicted = None
        if len(self._source_of) >= self.capacity:
            busiest = max(self._by_source.values(), key=len)
            evicted = next(iter(busiest))
            self.remove(evicted)
        self._source_of[token] = source
        self._by_source.setdefault(source, OrderedDict())[token] = None
        return evicted

    def remove(self, token: T) -> None:
        source = self._source_of.pop(token, None)
        if source is None:
            return
        held = self._by_source[source]
        del held[token]
        if not held:
            del self._by_source[source]

    def held_by(self, source: str) -> int:
        return len(self._by_source.get(source, ()))
