"""Per-round protocol overhead of one peer (seal, send, verify 8 neighbours' updates,
aggregate, provenance, checkpoint), excluding training, next to one epoch of local
training on its digits shard; and the peak RSS of a peer process with a 1M-parameter model.

    python bench/peer_round.py [--quick] [--metrics] [--rss-only] [--transport libp2p|mqtt] [--runs N]

--rss-only: only the real-process peak RSS table; --transport: only that transport's rows;
--runs: real-process runs per row (default 3, 1 with --quick).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from bench._help import answer_help  # noqa: E402
from bench._table import emit_json, print_table  # noqa: E402

MODELS = {"100k": [1024, 32], "1M": [1024, 900]}  # MLP hidden sizes: ~100k and ~1M parameters


def run(hidden: list[int], rounds: int, rule: str, shards: int, overlapped: bool) -> dict:
    """One peer (the centre of a star) with 8 in-process neighbours over the memory transport.

    serial: the neighbours' updates are waiting when the round starts and training runs on
    the event loop, so every piece of protocol work adds to the round (an upper bound).
    overlapped: training runs on its thread and the updates arrive while it trains, as
    from neighbours that finished first; verification then uses the second core and only
    what must follow training stays on the round's critical path.
    """
    import torch

    from gossip.envelope import seal_update
    from gossip.identity import load_key
    from gossip.transport import MemoryHub
    from peer.ops.plan import write_plan
    from peer.runtime.local import memory_peer
    from peer.runtime.process import configure_process
    from topology import from_spec

    configure_process()
    with tempfile.TemporaryDirectory() as tmp:
        nodes = write_plan(from_spec("star:9"), tmp, transport="memory", draw=False, overrides={
            "model": {"options": {"hidden": hidden}}, "train": {"epochs": 1.0, "batch_size": 32},
            "data": {"shards": shards, "shard": 0},
            "aggregation": {"rule": rule, "f": 1}, "round": {"deadline": 30.0, "train_in_thread": overlapped}})
        centre_tolerates(nodes, 2)
        hub = MemoryHub()
        peer = memory_peer(nodes[0].config, hub)  # node 0 is the centre: 8 neighbours
        others = [load_key(n.dir / "peer.key") for n in nodes[1:]]

        async def scenario():
            await peer.start()
            raws = [hub.transport(o.peer_id) for o in others]
            for t in raws:
                await t.start()
            base = peer.model.get()
            for r in range(rounds):
                msgs = [seal_update(o, base + 0.01 * torch.randn_like(base), net="gossipfl", round=r,
                                    schema=peer.model.schema, deg=1) for o in others]
                if overlapped:
                    round_task = asyncio.create_task(peer.run_round())
                    await asyncio.sleep(0)
                for t, m in zip(raws, msgs, strict=True):
                    await t.send(peer.peer_id, m.data)
                if overlapped:
                    await round_task
                else:
                    await peer.run_round()
            await peer.close()

        asyncio.run(scenario())
        hist = peer.history[1:]  # the first round warms up
        overhead = sum(h.seconds - h.train_seconds - h.eval_seconds for h in hist) / len(hist)
        train = sum(h.train_seconds for h in hist) / len(hist)
        return {"params": peer.model.size, "overhead_s": overhead, "train_epoch_s": train,
                "eval_s": sum(h.eval_seconds for h in hist) / len(hist),
                "samples": len(peer.learner.data.y_train), "accepted": min(h.accepted for h in hist),
                "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def centre_tolerates(nodes, f: int) -> None:
    """The star's centre (8 neighbours) tolerates f; a leaf has one neighbour, so its config
    may not ask for more than f = 1."""
    import re

    cfg = nodes[0].config
    cfg.write_text(re.sub(r"(?m)^f = 1$", f"f = {f}", cfg.read_text(), count=1))


def breakdown(hidden: list[int], rule: str) -> dict:
    """Each piece of a round's protocol work on its own (best of 5, ms), and two floors
    measured in the same run: one read of the aggregation stack, and SHA-256 of it."""
    import hashlib

    import torch

    from aggregation import aggregate
    from bench._table import best_time
    from gossip.envelope import seal_update
    from gossip.identity import Identity
    from gossip.verify import Verifier
    from peer.learning.model import FlatModel, build_model
    from peer.runtime.process import configure_process
    from peer.runtime.stack import UpdateStack
    from peer.state import checkpoint as ckpt
    from peer.state.provenance import EventKind, NewEvent, ProvenanceLog

    configure_process()
    model = FlatModel(build_model("mlp", 64, 10, {"hidden": hidden}))
    d, me, nbrs = model.size, Identity.generate(), [Identity.generate() for _ in range(8)]
    own = model.get()
    msgs = [seal_update(o, own + 0.01 * torch.randn_like(own), net="n", round=0, schema=model.schema).data
            for o in nbrs]
    verifier = Verifier(network="n", trusted={o.peer_id for o in nbrs}, schema=model.schema, n_params=d,
                        neighbours={o.peer_id for o in nbrs}, max_size=1 << 30)
    stack = UpdateStack([o.peer_id for o in nbrs], d)

    def verify_all():  # the replay window is the round state's: each pass starts with an empty one
        return [verifier.verify(m, 0, seen=()) for m in msgs]

    accepted = sorted(verify_all(), key=lambda a: a.sender)
    settled = [stack.settle(a) for a in accepted]
    rows = stack.stacked(own, settled)
    with tempfile.TemporaryDirectory() as tmp:
        prov = ProvenanceLog(os.path.join(tmp, "p.db"), me, "n")
        events = [NewEvent(EventKind.RECEIVED, 0, a.sender, a.update_id, {"bytes": len(m)})
                  for a, m in zip(accepted, msgs, strict=True)]
        path = os.path.join(tmp, "checkpoint.msgpack")
        ck = ckpt.Checkpoint(1, model.schema, model.flat, torch.zeros(d), [], [])
        ms = {
            "seal own update": best_time(lambda: seal_update(me, own, net="n", round=0, schema=model.schema)),
            "verify 8 updates": best_time(verify_all),
            "settle 8 into the stack": best_time(lambda: [stack.settle(a) for a in accepted]),
            f"aggregate ({rule}, n=9)": best_time(lambda: aggregate(rule, rows, f=2)),
            "SHA-256 of the new model": best_time(lambda: hashlib.sha256(model.flat.detach().numpy()).digest()),
            "provenance: one transaction of 9 events": best_time(lambda: prov.append_many(events)),
            "checkpoint write (page cache)": best_time(lambda: ckpt.write(path, ck)),
            "checkpoint fsync+rename (worker thread)": best_time(lambda: ckpt.commit(ckpt.write(path, ck), path)),
            "floor: one read of the 9-row stack": best_time(lambda: rows.sum()),
            "floor: SHA-256 of the 9-row stack": best_time(lambda: hashlib.sha256(rows.numpy()).digest()),
        }
        prov.close()
    return {k: round(1000 * v, 2) for k, v in ms.items()}


def process_peak_rss(hidden: list[int], rounds: int, rule: str, transport: str = "libp2p",
                     metrics: bool = False) -> dict | None:
    """Nine real `gossipfl peer start` processes on 127.0.0.1 (a star: the centre has 8
    neighbours); the centre's peak RSS as the kernel accounts it (wait4). None for MQTT
    where Mosquitto is not installed. `metrics`: the centre serves Prometheus metrics."""
    from pathlib import Path

    from peer.ops.plan import write_plan
    from tests.netfixtures import PeerProcesses, free_ports, mosquitto_broker
    from topology import from_spec

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        with mosquitto_broker(tmp) if transport == "mqtt" else contextlib.nullcontext(1883) as broker_port:
            if broker_port is None:
                return None
            nodes = write_plan(from_spec("star:9"), tmp / "plan", transport=transport, draw=False,
                               transport_options={"ports": free_ports(9), "broker": f"127.0.0.1:{broker_port}"},
                               overrides={"model": {"options": {"hidden": hidden}},
                                          "train": {"epochs": 1.0, "batch_size": 32},
                                          "aggregation": {"rule": rule, "f": 1},
                                          "round": {"rounds": rounds, "deadline": 60.0}})
            centre_tolerates(nodes, 2)
            if metrics:
                cfg = nodes[0].config
                cfg.write_text(cfg.read_text() + f'\n[metrics]\nlisten = "127.0.0.1:{free_ports(1)[0]}"\n')
            pp = PeerProcesses(tmp)
            try:
                for n in nodes[1:] + nodes[:1]:  # leaves first: the centre dials them as it starts
                    centre = pp.start(n.label, n.config, "--log-format", "json")
                _, status, usage = os.wait4(centre.pid, 0)  # reaped here: its rusage is the figure
                centre.returncode = status
                log = pp.log(nodes[0].label)
                if status != 0:
                    raise SystemExit(log[-3000:])
                rounds_done = [json.loads(line) for line in log.splitlines() if '"round ' in line]
            finally:
                pp.stop_all()
        return {"centre_peak_rss_mb": usage.ru_maxrss / 1024, "rounds": len(rounds_done)}


def main() -> None:
    answer_help(__doc__, '[--quick] [--metrics] [--rss-only]')
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        args = json.loads(sys.argv[2])
        print(json.dumps(breakdown(*args) if sys.argv[3] == "breakdown" else run(*args)))
        return
    quick = "--quick" in sys.argv
    metrics = "--metrics" in sys.argv  # the centre serves Prometheus metrics while measured

    def child(what: str, *args) -> dict:  # each measurement in a fresh process: its own peak RSS
        out = subprocess.run([sys.executable, __file__, "--child", json.dumps(args), what],
                             capture_output=True, text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    rss_only = "--rss-only" in sys.argv
    transports = ("libp2p", "mqtt")
    if "--transport" in sys.argv:
        transports = (sys.argv[sys.argv.index("--transport") + 1],)
        if transports[0] not in ("libp2p", "mqtt"):
            raise SystemExit(f"--transport: expected libp2p or mqtt, got {transports[0]!r}")
    rows, figures = [], {}
    for name, hidden in () if rss_only else MODELS.items():
        for shards, what in ((9, "1/9 of digits"), (1, "all of digits")):
            serial = child("run", hidden, 6, "median", shards, False)
            over = child("run", hidden, 6, "median", shards, True)
            epoch = serial["train_epoch_s"]
            rows.append([name, f"{serial['params']:,}", f"{what} ({serial['samples']})", epoch,
                         serial["overhead_s"], f"{100 * serial['overhead_s'] / epoch:.0f}%",
                         over["overhead_s"], f"{100 * over['overhead_s'] / epoch:.0f}%", f"{serial['maxrss_mb']:.0f}"])
            figures[f"{name}/shards{shards}"] = {
                "params": serial["params"], "samples": serial["samples"], "train_epoch_s": round(epoch, 4),
                "serial_overhead_s": round(serial["overhead_s"], 4),
                "serial_vs_epoch": round(serial["overhead_s"] / epoch, 3),
                "overlapped_overhead_s": round(over["overhead_s"], 4),
                "overlapped_vs_epoch": round(over["overhead_s"] / epoch, 3),
                "inprocess_peak_rss_mb": round(serial["maxrss_mb"], 1)}
    if not rss_only:
        print_table(["model", "params", "shard (train samples)", "1 epoch s", "serial s", "/epoch",
                     "overlapped s", "/epoch", "RSS MB*"], rows,
                    title="one peer, 8 neighbours, median, raw-f32: protocol time per round beyond training "
                          "(seal, send, verify 8, aggregate, log, checkpoint)")
        print("  serial: updates wait, training on the loop (all work adds up); overlapped: updates arrive "
              "during training, verified on the second core.\n  *in-process: the process also holds the 8 "
              "neighbours' messages\n")
        parts = child("breakdown", MODELS["1M"], "median")
        figures["1M/breakdown_ms"] = parts
        print_table(["1M parameters: piece of the round", "ms"], [[k, v] for k, v in parts.items()])
        print()

    runs_per_row = int(sys.argv[sys.argv.index("--runs") + 1]) if "--runs" in sys.argv else 1 if quick else 3
    rss_rows = []
    for transport in transports:
        for rule in ("median",) if quick else ("median", "nnm+trimmed_mean"):
            runs = [process_peak_rss(MODELS["1M"], 4, rule, transport, metrics) for _ in range(runs_per_row)]
            if runs[0] is None:
                rss_rows.append([transport, rule, "-", "mosquitto not installed", "400"])
                continue
            peaks = [r["centre_peak_rss_mb"] for r in runs]
            figures[f"1M/process_peak_rss_mb/{transport}/{rule}"] = [round(p, 1) for p in peaks]
            rss_rows.append([transport, rule, runs[0]["rounds"], " / ".join(f"{p:.0f}" for p in peaks), "400"])
    print_table(["transport", "rule", "rounds", "peak RSS MB (each run)", "target MB"], rss_rows,
                title="a real `gossipfl peer start` process, 1M parameters, 8 neighbours in 8 other "
                      "processes on 127.0.0.1 (the peak varies with how many next-round updates it buffers)")
    emit_json(figures)


if __name__ == "__main__":
    main()
