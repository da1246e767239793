"""Relayed against direct: round-trip time and throughput of gossipfl's libp2p transport in the
network lab (tests/netlab.py), and what the relay process costs in memory.

Two gateways in each setting, one process each (tests/p2p_node.py), in the same run:
- direct: both on the public side, each dials the other's address;
- relayed: each behind its own fully-random NAT (hole punching cannot help), reaching the other
  through a fleet relay on the public side (gossip/p2p/relay_service.py);
- hole-punched: each behind its own port-keeping NAT, the relayed link upgraded by hole punching.
A sends an update of each size to B, B sends it back (the `echo` node); the time from A's send
to the echo's arrival is the round trip, 2 x size / that time the throughput (both ways).
Alternates the settings per repetition; prints the median and the range. The relay's and a
gateway's resident memory (VmHWM, the peak) are read from /proc; a gateway here is the transport
alone, without torch: an ordinary `gossipfl peer start` adds the model runtime (about 300 MB with
torch, bench/hostile.py prints it).

    python bench/relay.py [--sizes 10000,1000000,8000000] [--repeat 5]

Needs root, ip and nft (the lab says why not and the script exits 0).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def rss_mb(pid: int) -> dict[str, float]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) / 1024
    return out


def setting(lab, tmp: Path, kind: str):
    from gossip.identity import Identity
    from tests.labnodes import LabNode, addr, peer_spec, relay_spec, send_until

    a, b = Identity.generate(), Identity.generate()
    relay = None
    if kind == "direct":
        ha, hb = lab.public(f"{kind}-a"), lab.public(f"{kind}-b")
        na = LabNode(lab, ha, {"peers": [peer_spec(a, neighbours={b.peer_id: addr(hb.address, b)})]}, tmp)
        nb = LabNode(lab, hb, {"peers": [peer_spec(b, neighbours={a.peer_id: addr(ha.address, a)}, echo=True)]}, tmp)
    else:
        r = Identity.generate()
        hr = lab.public(f"{kind}-r")
        relay = LabNode(lab, hr, relay_spec(r, [a, b], circuit_bytes=1 << 34), tmp)
        raddr = addr(hr.address, r)
        nat = "symmetric" if kind == "relayed" else "cone"
        ha = lab.site(f"{kind}-sa", nat=nat).host(f"{kind}-a")
        hb = lab.site(f"{kind}-sb", nat=nat).host(f"{kind}-b")
        punch = kind == "hole-punched"
        na = LabNode(lab, ha, {"peers": [peer_spec(a, neighbours={b.peer_id: None}, relays=[raddr],
                                                   hole_punch=punch)]}, tmp)
        nb = LabNode(lab, hb, {"peers": [peer_spec(b, neighbours={a.peer_id: None}, relays=[raddr],
                                                   hole_punch=punch, echo=True)]}, tmp)
        for node, me in ((na, a), (nb, b)):
            node.wait_status(lambda s, me=me: s[me.peer_id].get("reserved_on") == [r.peer_id], 60)
    if not send_until(na, a, b, 60, head="warm"):
        raise RuntimeError(f"{kind}: the first update did not go through")
    na.wait_got(lambda got: len(got) >= 1, 60)
    if kind == "hole-punched":
        na.wait_status(lambda s: s[a.peer_id]["links"][b.peer_id] == "hole-punched", 60)
    return na, a, b, relay


def round_trip(na, a, b, size: int, tag: str) -> float:
    before = len(na.got)
    t0 = time.perf_counter()
    if not na.send(a, b, size=size, head=tag, timeout=300):
        raise RuntimeError(f"send of {size} bytes ({tag}) failed:\n{na.tail(1500)}")
    na.wait_got(lambda got: any(e["head"].startswith("echo") and e["head"][4:].startswith(tag[4:])
                                for e in got[before:]), 300)
    return time.perf_counter() - t0


def main() -> int:
    from tests.netlab import Lab, unavailable

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="10000,1000000,8000000")
    p.add_argument("--repeat", type=int, default=5)
    a = p.parse_args()
    why = unavailable()
    if why:
        print(f"skipped: {why}")
        return 0
    sizes = [int(x) for x in a.sizes.split(",")]
    kinds = ("direct", "relayed", "hole-punched")
    times: dict[tuple[str, int], list[float]] = {(k, s): [] for k in kinds for s in sizes}
    memory = {}
    with tempfile.TemporaryDirectory(prefix="bench-relay-") as tmp, Lab() as lab:
        built = {k: setting(lab, Path(tmp), k) for k in kinds}
        for rep in range(a.repeat):
            for size in sizes:
                for k in kinds:
                    na, ia, ib, _ = built[k]
                    times[(k, size)].append(round_trip(na, ia, ib, size, f"rtt-{rep}-{size}-{k}"))
        relay = built["relayed"][3]
        memory["relay"] = rss_mb(relay.proc.pid)
        memory["gateway"] = rss_mb(built["relayed"][0].proc.pid)
        metrics = relay.call("metrics")["metrics"]
    from bench._table import emit_json, print_table

    rows = []
    for size in sizes:
        base = statistics.median(times[("direct", size)])
        for k in kinds:
            ts = times[(k, size)]
            med = statistics.median(ts)
            rows.append([f"{size / 1e6:g} MB", k, f"{1000 * med:.1f}", f"{1000 * min(ts):.1f}-{1000 * max(ts):.1f}",
                         f"{2 * size / med / 1e6:.2f}", f"{med / base:.2f}"])
    print_table(["update", "path", "round trip ms (median)", "range ms", "MB/s both ways", "x direct"], rows,
                title=f"A -> B -> A, one update each way, {a.repeat} repetitions, settings alternated")
    print(f"  relay process: VmHWM {memory['relay']['VmHWM']:.0f} MB (VmRSS {memory['relay']['VmRSS']:.0f}); "
          f"a gateway's transport process: VmHWM {memory['gateway']['VmHWM']:.0f} MB; relay carried "
          f"{metrics['bytes'] / 1e6:.0f} MB in {metrics['circuits_total']} circuits")
    emit_json({"sizes": sizes, "repeat": a.repeat,
               "round_trip_s": {f"{k}/{s}": [round(t, 4) for t in ts] for (k, s), ts in times.items()},
               "memory_mb": memory, "relay_metrics": metrics})
    return 0


if __name__ == "__main__":
    sys.exit(main())
