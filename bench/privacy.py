"""What privacy costs: protocol time per round with differential privacy and secure aggregation,
and accuracy against epsilon with and without attackers.

Part 1 - cost. Five in-process peers on a complete graph (4 neighbours each, memory transport),
100k and 1M parameters, 3 rounds each: plain mean (the baseline), mean with DP in update mode
(clip + noise the model change), secure_mean (double masking, every neighbour delivers; next to it the
single masking it replaced, measured on this machine before it was removed: SINGLE_MASKING), and
the bytes each member sends per round for double masking's keys, shares, consents and reveals
(everything but its masked inputs), per peer and per receiver.
Protocol time = round time - training - evaluation, median over peers and rounds: the five peers
share one event loop, so it is the protocol work of the whole five-peer round (seal or mask, send,
verify, aggregate or unmask, log, checkpoint); the ratio is to plain mean in the same run. DP in record mode costs in training (per-example gradients), not in
the protocol: its row gives the training time per round against plain SGD instead.

Part 2 - accuracy against epsilon. The protocol engine, digits, 32 nodes on a random 8-regular
graph, update-mode DP with the noise multiplier calibrated by the accountant so that every node
spends exactly epsilon (delta 1e-5) over the run; clean, and with 12.5% of the nodes sending
sign-flipped models (capped: at most two per honest neighbourhood; robust rules get f = 2); rules
secure_mean, mean and the robust rules. Prints the table and, last, one JSON line.

    python bench/privacy.py            # about 8 minutes on 2 cores
    python bench/privacy.py --quick    # epsilon 8 and infinity only, fewer rounds
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from bench._table import emit_json, print_table  # noqa: E402

MODELS = {"100k": [1024, 32], "1M": [1024, 900]}  # MLP hidden sizes (64 inputs): ~100k and ~1M parameters
DELTA = 1e-5
CLIP = 0.5  # update mode: a round's model change is clipped to this L2 norm
# secure_mean by single masking (lead 5dcccce, `python bench/privacy.py --part cost` on this machine,
# the run before double masking replaced it): protocol seconds per round, and the ratio to mean then
SINGLE_MASKING = {"100k": (0.0618, 1.608), "1M": (0.6311, 3.252)}


def _cost_run(hidden: list[int], rule: str, privacy: dict | None, rounds: int = 3) -> dict:
    """Median protocol and training seconds per round of 5 peers on complete:5."""
    import torch

    from peer.audit.verify import load_events
    from peer.ops.plan import write_plan
    from peer.runtime.local import build_memory_network, run_peers
    from peer.runtime.process import configure_process
    from topology import from_spec

    configure_process()
    torch.set_num_threads(1)
    over = {"model": {"options": {"hidden": hidden}}, "train": {"local_steps": 2, "batch_size": 32},
            "aggregation": {"rule": rule, "f": 0}, "round": {"deadline": 60.0, "train_in_thread": False}}
    if privacy:
        over["privacy"] = privacy
    with tempfile.TemporaryDirectory() as tmp:
        nodes = write_plan(from_spec("complete:5"), tmp, transport="memory", overrides=over, draw=False)
        _, peers = build_memory_network(nodes)
        asyncio.run(run_peers(peers, rounds))
        recs = [r for p in peers for r in p.history[1:]]  # round 0 pays one-off costs
        out = {"protocol": statistics.median(r.seconds - r.train_seconds - r.eval_seconds for r in recs),
               "train": statistics.median(r.train_seconds for r in recs),
               "params": peers[0].model.size}
        if rule == "secure_mean":  # what a member sends besides its masked inputs (from the logs)
            extra = []
            for n, p in zip(nodes, peers, strict=True):
                _, sent = load_events(n.dir / "data" / "provenance.db", kind="sent")
                for r in p.history[1:]:
                    extra.append(r.bytes_sent - sum(e.details["bytes"] for e in sent if e.round == r.round))
            out["share_bytes"] = statistics.median(extra)
        return out


def cost_table(quick: bool) -> dict:
    rows, figures = [], {}
    variants = [("mean", "mean", None), ("mean + DP update", "mean", {"mode": "update", "noise_multiplier": 1.0}),
                ("mean + DP record", "mean", {"mode": "record", "noise_multiplier": 1.0}),
                ("secure_mean (double masking)", "secure_mean", None)]
    for size, hidden in MODELS.items():
        base = None
        for label, rule, privacy in variants:
            t = time.monotonic()
            r = _cost_run(hidden, rule, privacy, rounds=2 if quick else 3)
            if base is None:
                base = r
            key = f"{size}_{label.split(' (')[0].replace(' + ', '_').replace(' ', '_')}"
            if "record" in label:
                ratio = r["train"] / base["train"]
                rows.append([size, label, f"train {r['train']:.3f} s", f"{ratio:.2f}x plain SGD"])
                figures[f"{key}_train_s"], figures[f"{key}_train_ratio"] = round(r["train"], 4), round(ratio, 3)
            else:
                ratio = r["protocol"] / base["protocol"]
                rows.append([size, label, f"protocol {r['protocol']:.3f} s", f"{ratio:.2f}x mean"])
                figures[f"{key}_protocol_s"], figures[f"{key}_ratio"] = round(r["protocol"], 4), round(ratio, 3)
            if rule == "secure_mean":
                single_s, single_ratio = SINGLE_MASKING[size]
                rows.append([size, "secure_mean (single, before)", f"protocol {single_s:.3f} s",
                             f"{single_ratio:.2f}x mean then"])
                vs = ratio / single_ratio  # each against plain mean in its own run: the machine's load cancels
                rows.append([size, "double / single masking", f"{vs:.2f}x (each / mean)",
                             f"shares: {r['share_bytes']:,.0f} B/peer"])
                figures[f"{key}_vs_single"], figures[f"{key}_share_bytes_per_peer"] = round(vs, 3), r["share_bytes"]
            print(f"  {size} {label}: {time.monotonic() - t:.0f} s", file=sys.stderr, flush=True)
    print_table(["model", "variant", "per round", "ratio"], rows,
                "Privacy cost per round (5 peers in one process, complete graph, memory transport: protocol work of "
                "the whole round, median over peers and rounds)")
    return figures


def noise_for(epsilon: float, rounds: int) -> float:
    """The noise multiplier with which `rounds` update-mode releases spend exactly `epsilon`."""
    from privacy.accountant import Accountant, Release

    def spent(sigma: float) -> float:
        acct = Accountant("rdp", DELTA)
        for _ in range(rounds):
            acct.spend(Release(sigma, 1.0, 1))
        return acct.epsilon()

    lo, hi = 0.05, 500.0
    for _ in range(40):  # epsilon falls as sigma grows: bisect on a log scale
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if spent(mid) > epsilon else (lo, mid)
    return hi


def accuracy_table(quick: bool) -> dict:
    from sim.report import summary_row
    from sim.run import run_one
    from sim.scenario import build

    rounds = 10 if quick else 20
    epsilons = [8.0, math.inf] if quick else [1.0, 3.0, 8.0, 30.0, 100.0, math.inf]
    rules = ["mean", "secure_mean", "median", "nnm+trimmed_mean"]
    rows, figures = [], {}
    for attack in ("none", "sign_flip"):
        for eps in epsilons:
            sigma = None if math.isinf(eps) else noise_for(eps, rounds)
            line = ["none" if attack == "none" else "12.5% sign flip", "inf" if math.isinf(eps) else f"{eps:g}",
                    "-" if sigma is None else f"{sigma:.2f}"]
            for rule in rules:
                doc = {"name": "privacy", "seed": 1, "rounds": rounds, "engine": "protocol",
                       "topology": {"graph": "regular:32,8"}, "data": {"dataset": "digits"},
                       "model": {"name": "mlp", "options": {"hidden": [32]}},
                       "train": {"local_steps": 5, "batch_size": 32, "lr": 0.1},
                       "aggregation": {"rules": [rule], "f": 0 if rule in ("mean", "secure_mean") else 2},
                       "faults": {"deadline": 2.0}}
                if attack != "none":
                    doc["attack"] = {"kind": attack, "byzantine": 4, "cap": 2}
                if sigma is not None:
                    doc["privacy"] = {"mode": "update", "noise_multiplier": sigma, "clip": CLIP, "delta": DELTA}
                t = time.monotonic()
                with tempfile.TemporaryDirectory() as tmp:
                    res, _ = run_one(build(doc), rule, Path(tmp) / "run")
                acc = summary_row(res)["mean_accuracy"]
                line.append(f"{100 * acc:.1f}%")
                key = f"{attack}_eps{'inf' if math.isinf(eps) else f'{eps:g}'}_{rule}"
                figures[key] = round(acc, 4)
                if res.epsilon is not None:
                    figures[key + "_epsilon_spent"] = round(res.epsilon, 3)
                print(f"  {attack} eps={eps:g} {rule}: {100 * acc:.1f}% ({time.monotonic() - t:.0f} s)",
                      file=sys.stderr, flush=True)
            rows.append(line)
    print_table(["attack", "epsilon", "sigma", *rules], rows,
                f"Mean honest accuracy after {rounds} rounds: digits, 32 nodes (8-regular), update-mode DP "
                f"(clip {CLIP}, delta {DELTA:g})")
    return figures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--part", choices=["cost", "accuracy", "both"], default="both")
    args = ap.parse_args()
    figures: dict = {}
    if args.part in ("cost", "both"):
        figures.update(cost_table(args.quick))
    if args.part in ("accuracy", "both"):
        figures.update(accuracy_table(args.quick))
    emit_json(figures)


if __name__ == "__main__":
    main()
