"""The cost of double-masking secure aggregation (privacy.secagg*) next to the single-masking
core it replaced (kept as a baseline in bench/_single_masking.py), per round, for one receiver and its group of n = 8 members,
and the bytes each member sends.

CPU seconds of the pure cores only (no transport, no envelope signing of the masked payload,
which both pay alike), every message through its bytes (encode, parse, verify). A peer of an
n-regular graph is a member of n groups and the receiver of one, so its protocol work per
round is n * member + receiver: the "per peer" column, whose ratio is the figure to hold to
2x. Cases: everyone delivers, and one member drops before sending its masked input (single
masking then asks the others to reveal their seeds towards it; double masking reconstructs
its pair key). The best of REPEAT runs (the machine is shared: the least disturbed run is the
closest to the cost), one thread.

    python bench/secagg.py            # about a minute on 2 cores
    python bench/secagg.py --quick    # 100k parameters only
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections import defaultdict

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import torch  # noqa: E402

from bench import _single_masking as single  # noqa: E402
from bench._table import emit_json, print_table  # noqa: E402
from gossip.identity import Identity  # noqa: E402
from privacy import secagg_wire as wire  # noqa: E402
from privacy.masking import FixedPoint  # noqa: E402
from privacy.secagg import Context  # noqa: E402
from privacy.secagg_ledger import MemberLedger  # noqa: E402
from privacy.secagg_member import MemberSession  # noqa: E402
from privacy.secagg_receiver import ReceiverSession  # noqa: E402

N = 8
NET = "bench-net"
ROUND = 11
REPEAT = 5
IDS = [Identity.from_seed(bytes([i + 1]) * 32) for i in range(N + 1)]
RECEIVER, MEMBERS = IDS[0], sorted(IDS[1:], key=lambda p: p.peer_id)
BY_ID = {p.peer_id: p for p in IDS}


SAMPLE: dict[str, bytes] = {}  # the messages one member sent, for the breakdown of its bytes


def breakdown() -> dict[str, int]:
    """What one member's bytes to one receiver are made of."""
    deal, reveal = wire.parse(SAMPLE["deal"]), wire.parse(SAMPLE["reveal"])
    out = {"keys (c_pub, s_pub)": 2 * 32,
           "shares (boxes, revealed)": len(deal.boxes) * wire.BOX_LEN
           + (len(reveal.b_shares) + len(reveal.s_shares)) * wire.SEALED_SHARE_LEN,
           "signatures (4 messages + boxes)": 64 * (4 + len(deal.boxes)),
           "commitments": 32 + 64 * len(deal.commits)}
    out["framing, PeerIds, survivor list"] = sum(len(SAMPLE[k]) for k in ("advert", "deal", "consent", "reveal")) \
        - sum(out.values())
    return out


class Clock:
    """CPU seconds per party: this thread's CPU time around each party's own calls (not wall
    time, which on a shared machine also counts other processes' turns)."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)

    def __call__(self, party: str, fn, *args):
        t0 = time.thread_time()
        out = fn(*args)
        self.seconds[party] += time.thread_time() - t0
        return out


def single_masking(xs: dict, d: int, drop: str | None, clock: Clock) -> None:
    """The baseline: what secure_mean did before double masking (bench/_single_masking.py)."""
    group = [m.peer_id for m in MEMBERS]
    keys = {p.peer_id: single.agreement_key(p) for p in IDS}
    pubs = {pid: single.public_bytes(k) for pid, k in keys.items()}
    fp = FixedPoint(1.0, N)
    r = RECEIVER.peer_id
    payloads = {j: clock(j, single.masked_payload, xs[j], j, r, group, ROUND, NET, keys[j], pubs, fp)
                for j in group if j != drop}
    missing = [drop] if drop else []
    reveals = {j: clock(j, single.reveal, BY_ID[j], keys[j], r, ROUND, missing, NET, pubs) for j in payloads} \
        if drop else {}
    clock("receiver", single.unmask, payloads, reveals, group, missing, fp)


def double_masking(xs: dict, d: int, drop: str | None, clock: Clock, sizes: dict) -> None:
    group = tuple(m.peer_id for m in MEMBERS)
    ctx = Context(NET, RECEIVER.peer_id, ROUND, group)
    fp = FixedPoint(1.0, N)
    rs = clock("receiver", lambda: ReceiverSession(RECEIVER, ctx, size=d))
    ms = {m.peer_id: clock(m.peer_id, lambda m=m: MemberSession(m, ctx, MemberLedger())) for m in MEMBERS}

    def to_receiver(j: str, data: bytes, kind: str) -> None:
        sizes[kind].append(len(data))
        if j == MEMBERS[0].peer_id:
            SAMPLE[kind] = data
        clock("receiver", lambda: rs.receive(wire.parse(data, N)))

    def to_members(out: dict[str, bytes], kind: str) -> dict[str, bytes | None]:
        sizes[kind].append(len(next(iter(out.values()))))
        return {k: clock(k, lambda k=k, b=b: ms[k].receive(wire.parse(b, N))) for k, b in out.items()}

    for j in group:
        to_receiver(j, clock(j, ms[j].advert), "advert")
    for j, deal in to_members(clock("receiver", rs.advance), "book").items():
        to_receiver(j, deal, "deal")
    to_members(clock("receiver", rs.advance), "forward")
    for j in group:
        if j != drop:
            payload = clock(j, ms[j].mask, xs[j], fp)
            sizes["masked payload overhead"].append(len(payload) - 4 * d)
            clock("receiver", rs.receive_masked, j, payload)
    for j, consent in to_members(clock("receiver", rs.advance), "survivors").items():
        to_receiver(j, consent, "consent")
    for j, reveal in to_members(clock("receiver", rs.advance), "proof").items():
        to_receiver(j, reveal, "reveal")
    clock("receiver", rs.result, fp)


def measure(d: int, drop: bool) -> dict:
    torch.manual_seed(d)
    xs = {m.peer_id: torch.randn(d) * 0.3 for m in MEMBERS}
    dropped = MEMBERS[3].peer_id if drop else None
    runs = {"single": [], "double": []}
    sizes: dict[str, list[int]] = defaultdict(list)
    for _ in range(REPEAT):
        for name in runs:
            clock = Clock()
            if name == "single":
                single_masking(xs, d, dropped, clock)
            else:
                double_masking(xs, d, dropped, clock, sizes)
            members = [clock.seconds[m.peer_id] for m in MEMBERS if m.peer_id != dropped]
            runs[name].append((statistics.mean(members), clock.seconds["receiver"]))
    out = {}
    for name, values in runs.items():
        member = min(v[0] for v in values)
        receiver = min(v[1] for v in values)
        out[name] = {"member": member, "receiver": receiver, "peer": N * member + receiver}
    out["sizes"] = {k: max(v) for k, v in sizes.items()}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows, figures = [], {}
    for label, d in ([("100k", 100_000)] if args.quick else [("100k", 100_000), ("1M", 1_000_000)]):
        for drop in (False, True):
            r = measure(d, drop)
            case = "1 dropped" if drop else "all deliver"
            ratio = r["double"]["peer"] / r["single"]["peer"]
            for name in ("single", "double"):
                rows.append([label, case, name, r[name]["member"] * 1e3, r[name]["receiver"] * 1e3,
                             r[name]["peer"] * 1e3, f"{ratio:.2f}x" if name == "double" else ""])
                key = f"{label}_{'drop1' if drop else 'full'}_{name}"
                figures[f"{key}_member_ms"] = round(r[name]["member"] * 1e3, 2)
                figures[f"{key}_receiver_ms"] = round(r[name]["receiver"] * 1e3, 2)
                figures[f"{key}_peer_ms"] = round(r[name]["peer"] * 1e3, 2)
            figures[f"{label}_{'drop1' if drop else 'full'}_ratio"] = round(ratio, 3)
            sizes = r["sizes"]
    print_table(["params", "case", "masking", "member ms", "receiver ms", "per peer ms", "ratio"], rows,
                f"Secure aggregation CPU per round, group of n = {N} (per peer = {N} x member + receiver)")
    member = ["advert", "deal", "consent", "reveal", "masked payload overhead"]
    receiver = ["book", "forward", "survivors", "proof"]
    print_table(["message", "bytes", "sent by"], [[k, sizes[k], "each member, per receiver"] for k in member]
                + [["member total", sum(sizes[k] for k in member), f"x {N} receivers per peer"]]
                + [[k, sizes[k], "the receiver, to each member"] for k in receiver],
                f"Bytes per round of double masking (n = {N}, 1 dropped: reveals carry s shares too); single masking "
                f"sent a masked payload overhead of {32 * N} bytes and, on a drop-out, a reveal")
    parts = breakdown()
    print_table(["part", "bytes"], [[k, v] for k, v in parts.items()],
                "What a member's messages to one receiver are made of")
    figures.update({f"bytes_{k.replace(' ', '_')}": v for k, v in sizes.items()})
    figures.update({f"bytes_part_{k.split(' ')[0]}": v for k, v in parts.items()})
    figures["bytes_member_total"] = sum(sizes[k] for k in member)
    emit_json(figures)


if __name__ == "__main__":
    main()
