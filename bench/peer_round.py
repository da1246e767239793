"""Per-round protocol overhead of one peer (seal, send, verify 8 neighbours' updates,
aggregate, provenance, checkpoint), excluding training, next to one epoch of local
training on its digits shard; and the peak RSS of a peer process with a 1M-parameter model.

    python bench/peer_round.py
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from bench._table import emit_json, free_ports, print_table  # noqa: E402

MODELS = {"100k": [1024, 32], "1M": [1024, 900]}  # MLP hidden sizes: ~100k and ~1M parameters


def run(hidden: list[int], rounds: int, rule: str, shards: int) -> dict:
    import torch

    from gossip.envelope import seal_update
    from gossip.identity import load_key
    from gossip.transport import MemoryHub
    from peer.local import memory_peer
    from peer.plan import write_plan
    from peer.runtime import configure_process
    from topology import from_spec

    configure_process()
    with tempfile.TemporaryDirectory() as tmp:
        nodes = write_plan(from_spec("star:9"), tmp, transport="memory", draw=False, overrides={
            "model": {"options": {"hidden": hidden}}, "train": {"epochs": 1.0, "batch_size": 32},
            "data": {"shards": shards, "shard": 0},
            "aggregation": {"rule": rule, "f": 2}, "round": {"deadline": 30.0, "train_in_thread": False}})
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
                for o, t in zip(others, raws, strict=True):
                    x = base + 0.01 * torch.randn_like(base)
                    msg = seal_update(o, x, net="gossipfl", round=r, schema=peer.model.schema, deg=1)
                    await t.send(peer.peer_id, msg.data)
                await peer.run_round()
            await peer.close()

        asyncio.run(scenario())
        hist = peer.history[1:]  # the first round warms up
        overhead = sum(h.seconds - h.train_seconds for h in hist) / len(hist)
        train = sum(h.train_seconds for h in hist) / len(hist)
        return {"params": peer.model.size, "overhead_s": overhead, "train_epoch_s": train,
                "samples": len(peer.trainer.data.y_train), "accepted": hist[-1].accepted,
                "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def process_peak_rss(hidden: list[int], rounds: int, rule: str) -> dict:
    """Nine real `gossipfl peer start` processes over libp2p on 127.0.0.1 (a star: the
    centre has 8 neighbours); the centre's peak RSS as the kernel accounts it (wait4)."""
    from peer.plan import write_plan
    from topology import from_spec

    with tempfile.TemporaryDirectory() as tmp:
        nodes = write_plan(from_spec("star:9"), tmp, transport="libp2p", ports=free_ports(9), draw=False,
                           overrides={"model": {"options": {"hidden": hidden}},
                                      "train": {"epochs": 1.0, "batch_size": 32},
                                      "aggregation": {"rule": rule, "f": 2},
                                      "round": {"rounds": rounds, "deadline": 60.0}})
        procs = []
        try:
            for n in nodes[1:] + nodes[:1]:  # leaves first: the centre dials them as it starts
                log = open(os.path.join(tmp, f"{n.label}.log"), "wb")
                procs.append(subprocess.Popen([sys.executable, "-m", "gossipfl", "peer", "start", "--config",
                                               str(n.config), "--log-format", "json"], stdout=log, stderr=log))
            _, status, usage = os.wait4(procs[-1].pid, 0)
            if status != 0:
                raise SystemExit(open(os.path.join(tmp, f"{nodes[0].label}.log")).read()[-3000:])
            rounds_done = [json.loads(line) for line in open(os.path.join(tmp, f"{nodes[0].label}.log"))
                           if '"round ' in line]
        finally:
            for p in procs:
                if p.returncode is None and p.poll() is None:
                    p.terminate()
            for p in procs:
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        return {"centre_peak_rss_mb": usage.ru_maxrss / 1024, "rounds": len(rounds_done)}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(run(json.loads(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5]))))
        return
    rows, figures = [], {}
    for name, hidden in MODELS.items():
        for shards, what in ((9, "1/9 of digits"), (1, "all of digits")):
            # each measurement in a fresh process, so peak RSS is that of one peer
            out = subprocess.run([sys.executable, __file__, "--child", json.dumps(hidden), "6", "median", str(shards)],
                                 capture_output=True, text=True, check=True)
            fig = json.loads(out.stdout.strip().splitlines()[-1])
            ratio = fig["overhead_s"] / fig["train_epoch_s"]
            rows.append([name, f"{fig['params']:,}", f"{what} ({fig['samples']})", fig["overhead_s"],
                         fig["train_epoch_s"], f"{100 * ratio:.0f}%", f"{fig['maxrss_mb']:.0f}"])
            figures[f"{name}/shards{shards}"] = {k: round(v, 4) if isinstance(v, float) else v for k, v in fig.items()}
            figures[f"{name}/shards{shards}"]["overhead_vs_epoch"] = round(ratio, 3)
    print_table(["model", "params", "shard (train samples)", "protocol s/round", "1 epoch train s",
                 "overhead/epoch", "peak RSS MB"], rows,
                title="one peer, 8 neighbours, median, raw-f32 (protocol = seal, send, verify 8, aggregate, log, checkpoint)")
    emit_json(figures)


if __name__ == "__main__":
    main()
