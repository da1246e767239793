"""The per-peer upload budget (`[transport] max_upload_kbps`): the outbox paces what it sends.
Measured as bytes that arrive at the neighbours over the loop's own clock (real in-process
transports), and the pure budget over a virtual clock: in every window the bytes are within the
budget plus its burst, and the budget is used (not an idle link). Nothing asserts a duration."""

from __future__ import annotations

import asyncio
import itertools
import random

import pytest

from gossip.transport import MemoryHub, MemoryTransport
from peer.config.parse import parse_config
from peer.errors import ConfigError
from peer.runtime.outbox import Outbox, upload_budget
from peer.runtime.tasks import TaskSet
from peer.runtime.upload import UploadBudget

KBPS = 800  # 100,000 bytes a second
SIZE = 25_000
ROUNDS = 5
NEIGHBOURS = ("n1", "n2", "n3")


def within_budget(arrivals: list[tuple[float, int]], budget: UploadBudget, slack: float = 1e-3) -> bool:
    """Every window [t_i, t_j] of starts holds at most rate * (t_j - t_i + burst) bytes plus its
    last transmission (`slack` seconds for the clock's resolution)."""
    rate = budget.bytes_per_second
    times = [t for t, _ in arrivals]
    sums = list(itertools.accumulate(n for _, n in arrivals))
    return all(sums[j] - (sums[i - 1] if i else 0) <= rate * (times[j] - times[i] + budget.burst + slack)
               + arrivals[j][1] for i in range(len(arrivals)) for j in range(i, len(arrivals)))


class Metered(MemoryTransport):
    """A real in-process transport that notes when each transmission goes on the wire."""

    def __init__(self, hub: MemoryHub, peer_id: str):
        super().__init__(hub, peer_id)
        self.wire: list[tuple[float, int, str, bytes]] = []

    async def send(self, peer_id: str, data: bytes) -> bool:
        self.wire.append((asyncio.get_running_loop().time(), len(data), peer_id, bytes(data[:1])))
        return await super().send(peer_id, data)


def test_the_outbox_keeps_what_arrives_at_the_neighbours_within_the_budget():
    async def scenario():
        hub = MemoryHub()
        me = Metered(hub, "me")
        peers = {nb: hub.transport(nb) for nb in NEIGHBOURS}
        for t in (me, *peers.values()):
            await t.start()
        got: dict[str, list[bytes]] = {nb: [] for nb in NEIGHBOURS}

        async def read(nb, t):
            async for _sender, data in t:
                got[nb].append(bytes(data[:1]))

        readers = [asyncio.create_task(read(nb, t)) for nb, t in peers.items()]
        budget = upload_budget(KBPS)
        outbox = Outbox(me, TaskSet(lambda what, exc: None), lambda n: None, upload=budget)
        for r in range(ROUNDS):
            outbox.updates({nb: bytes([r]) * SIZE for nb in NEIGHBOURS}, r)
            if r == 1:
                outbox.message("n1", b"m" * 100)  # a protocol message: never waits behind updates
            while outbox.mailbox:  # each round's updates go out before the next (no replacement)
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        for t in (me, *peers.values()):
            await t.close()
        await asyncio.gather(*readers)
        return me.wire, got, budget

    arrivals, got, budget = asyncio.run(scenario())
    assert b"m" in got["n1"]  # delivered, and every update too
    assert all(len([h for h in got[nb] if h != b"m"]) == ROUNDS for nb in NEIGHBOURS)
    updates = [(t, n) for t, n, _, head in arrivals if head != b"m"]
    assert len(updates) == ROUNDS * len(NEIGHBOURS) and {n for _, n in updates} == {SIZE}
    assert within_budget(updates, budget)
    # the budget is what limits: more than its burst was sent, so the pacing was exercised
    assert sum(n for _, n in updates) > 2 * budget.bytes_per_second * budget.burst
    order = [head for *_, head in arrivals]
    assert order.index(b"m") < len(order) - 1  # the message overtook updates still waiting


def test_without_a_budget_nothing_waits():
    assert upload_budget(0) is None
    b = UploadBudget(KBPS)
    assert b.reserve(10**9, 0.0) == 0.0  # the first transmission never waits, whatever its size


def test_the_budget_over_a_virtual_clock_is_used_and_never_exceeded():
    rng = random.Random(7)
    b = UploadBudget(KBPS, burst=0.5)
    now, starts = 0.0, []
    for _ in range(2000):  # a sender that always has something: sizes vary, arrivals are bursty
        size = rng.choice((100, 5_000, 40_000, 250_000))
        now += rng.choice((0.0, 0.0, 0.01, 0.3))
        start = now + b.reserve(size, now)
        starts.append((start, size))
        now = start  # it waits its turn
    assert within_budget(starts[:400], b, slack=1e-6)  # float rounding only
    total, span = sum(n for _, n in starts[:-1]), starts[-1][0] - starts[0][0]
    assert total <= b.bytes_per_second * (span + b.burst)
    assert total >= 0.9 * b.bytes_per_second * span  # the budget is used, not wasted
    b.charge(1_000_000, now)  # bytes that went out unpaced push the next ones back
    assert b.reserve(1, now) > 0


@pytest.mark.parametrize("value, ok", [(0, True), (512, True), (1.5, True), (-1, False), ("fast", False)])
def test_max_upload_kbps_is_a_transport_field(value, ok, tmp_path):
    doc = {"identity": {"key": "k"}, "network": {"id": "n", "trust": "t"},
           "transport": {"kind": "memory", "max_upload_kbps": value}}
    if ok:
        assert parse_config(doc, tmp_path).transport.max_upload_kbps == float(value)
    else:
        with pytest.raises(ConfigError, match="max_upload_kbps"):
            parse_config(doc, tmp_path)
