"""A small real fleet for the audit tests: four peers on a ring over the memory transport,
a few rounds, node 3 sending junk next to its honest update (a forged copy, which nobody can
attribute, and a signed update with a NaN in it, which is provably its own)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gossip.envelope import parse
from peer.ops.plan import write_plan
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
