"""A small real fleet for the audit tests: four peers on a ring over the memory transport,
a few rounds, node 3 sending junk next to its honest update (a forged copy, which nobody can
attribute, and a signed update with a NaN in it, which is provably its own)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from gossip.envelope import parse, seal_update
from gossip.identity import load_key
from gossip.transport import MemoryHub
from peer.ops.plan import ADMIN_DIR, ADMIN_KEY, write_plan
from peer.runtime.local import build_memory_network, run_peers
from sim.attacks import AttackTransport, _corrupt_signature, reseal
from sim.virtual_time import run_virtual
from topology import from_spec

FAST = {"train": {"local_steps": 5, "batch_size": 32, "lr": 0.1},
        "round": {"deadline": 0.5, "train_in_thread": False},
        "aggregation": {"rule": "median", "f": 0}}
ROUNDS = 4
JUNK_NODE = 3


@dataclass
class Fleet:
    plan: Path
    logs: list[Path]          # node 0..3
    names: list[str]          # plan names, "0".."3"
    peer_ids: list[str]


def _junk(identity, victim: str):
    """To `victim`: a forged copy, then a signed update with a NaN in it (rejected under node 3's
    name: its signature proves who sent it); to the other neighbour: the honest update."""
    def rewrite(recipient: str, data: bytes) -> list[bytes]:
        if recipient != victim:
            return [data]
        raw = bytearray(parse(data).payload)
        raw[0:4] = b"\x00\x00\xc0\x7f"  # a float32 NaN, little-endian
        return [_corrupt_signature(data), reseal(identity, data, payload=bytes(raw))]
    return rewrite


def build_fleet(out: Path) -> Fleet:
    import torch

    torch.set_num_threads(1)
    nodes = write_plan(from_spec("ring:4", seed=1), out, transport="memory", overrides=FAST, draw=False)

    def arm(parts):
        parts.transport = AttackTransport(parts.transport, _junk(parts.identity, nodes[0].peer_id))

    def victim(parts):  # closes once its honest neighbour delivered: waiting out the deadline for the junk
        parts.cfg.round.quorum = 1  # node would pace its neighbours' windows to end as its next update arrives

    hub, peers = build_memory_network(nodes, prepare={JUNK_NODE: arm, 0: victim})
    run_virtual(run_peers(peers, rounds=ROUNDS))
    return Fleet(Path(out), [n.dir / "data" / "provenance.db" for n in nodes], [str(n.label) for n in nodes],
                 [p.peer_id for p in peers])


# --- a fleet with a history: admitted, crashed, revoked, caught up ------------------------------

CRASH_AFTER = 4  # rounds 0..3 run in a child process that is then killed (SIGKILL, no `stopped`)
REVOKE_AT = 6  # the round at which the admin revokes node 1
LATE_START = 8  # node 2 stays down after the crash until the others reach this round
LAST_ROUND = 10  # everyone stops cleanly after the round before this one
ADMITTED = 4  # planned with no neighbours, admitted before round 2 as a neighbour of 0 and 2


@dataclass
class LifecycleFleet:
    plan: Path
    logs: list[Path]
    names: list[str]
    peer_ids: list[str]


def build_lifecycle_fleet(out: Path) -> LifecycleFleet:
    """Five real peers over the memory transport, in lock-step rounds: 0..3 on a ring start,
    node 4 is admitted before round 2 (an admin-signed record, passed on by gossip), the child
    process running them is killed after round 3; all but node 2 resume from their checkpoints
    (a `started` with resumed_from after a log that did not end with `stopped`), node 1 is
    revoked at round REVOKE_AT, node 2 comes back at LATE_START and catches up with its
    neighbours; everyone stops cleanly before round LAST_ROUND."""
    import subprocess
    import sys

    graph = from_spec("ring:4", seed=1)
    graph.add_node(ADMITTED)
    nodes = write_plan(graph, out, transport="memory", overrides=FAST, draw=False)
    root = Path(__file__).resolve().parents[1]
    child = subprocess.run([sys.executable, "-c", f"from tests.audit_fleet import _until_killed; "
                                                  f"_until_killed({str(out)!r})"],
                           cwd=root, capture_output=True, text=True, timeout=300)
    assert child.returncode == -9, child.stderr[-3000:]  # killed, as a crash is
    run_virtual(_after_the_crash(out))
    return LifecycleFleet(Path(out), [n.dir / "data" / "provenance.db" for n in nodes],
                          [str(n.label) for n in nodes], [load_key(n.dir / "peer.key").peer_id for n in nodes])


def _nodes(out: Path) -> list:
    from peer.config.parse import load_config

    return [load_config(Path(out) / f"node-{i}" / "peer.toml") for i in range(ADMITTED + 1)]


async def _lockstep(peers, until: int) -> None:
    """Rounds for every peer together until the first of them reaches `until`."""
    while max(p.round for p in peers) < until:
        await asyncio.gather(*(p.run_round() for p in peers))


async def _membership(hub, admin, peers, epoch: int, action: str, who, neighbours=()) -> None:
    """The admin's record to node 0 (and to the admitted peer itself); wait until every running
    peer but the revoked one has applied it (gossip passes it on)."""
    from gossip.membership import seal_record

    record = seal_record(admin, network=peers[0].cfg.network, epoch=epoch, action=action, peer=who.peer_id,
                         neighbours=[p.peer_id for p in neighbours])
    sender = hub.transport(admin.peer_id)
    await sender.start()
    for p in [peers[0]] + ([who] if action == "admit" else []):
        await sender.send(p.peer_id, record)
    waiting = [p for p in peers if p is not who or action == "admit"]
    async with asyncio.timeout(30):
        while any(p.membership.epoch < epoch for p in waiting):
            await asyncio.sleep(0.02)
    await sender.close()


def _until_killed(out: str) -> None:
    """The child process: rounds 0..3, node 4 admitted on the way, then SIGKILL."""
    import os
    import signal

    import torch

    torch.set_num_threads(1)

    async def run():
        from peer.runtime.driver import Peer
        from peer.runtime.parts import build_parts

        hub = MemoryHub()
        peers = [Peer(build_parts(cfg, hub=hub)) for cfg in _nodes(out)]
        admin = load_key(Path(out) / ADMIN_DIR / ADMIN_KEY)
        ring, new = peers[:ADMITTED], peers[ADMITTED]
        for p in ring + [new]:
            await p.start()
        await _lockstep(ring, 2)
        await _membership(hub, admin, peers, 1, "admit", new, neighbours=(peers[0], peers[2]))
        await _lockstep(peers, CRASH_AFTER)
        os.kill(os.getpid(), signal.SIGKILL)

    run_virtual(run())


async def _after_the_crash(out: Path) -> None:
    import torch

    from peer.runtime.driver import Peer
    from peer.runtime.parts import build_parts

    torch.set_num_threads(1)
    hub = MemoryHub()
    peers = [Peer(build_parts(cfg, hub=hub)) for cfg in _nodes(out)]
    admin = load_key(Path(out) / ADMIN_DIR / ADMIN_KEY)
    late = peers[2]
    running = [p for p in peers if p is not late]
    for p in running:
        await p.start()
    await _lockstep(running, REVOKE_AT)
    await _membership(hub, admin, running, 2, "revoke", peers[1])
    running.remove(peers[1])  # it stops itself once it hears: it runs no more rounds
    thief = peers[1]  # but its key, in someone else's hands, is refused as revoked
    stolen = seal_update(thief.identity, thief.model.flat, net=thief.cfg.network, round=peers[0].round + 1,
                         schema=thief.model.schema)
    await thief.transport.send(peers[0].peer_id, stolen.data)
    await _lockstep(running, LATE_START)
    await late.start()
    await _lockstep(running + [late], LAST_ROUND)
    for p in peers:
        await p.close()
