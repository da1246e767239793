"""The headline robustness table: honest accuracy per aggregation rule under attack.

32 nodes on a random 8-regular graph, digits, one local SGD step then one aggregation per
round on the batched engine (sim.batched), IID and non-IID (two label shards per node),
f in {0, 4, 8} Byzantine nodes placed at random or capped (no honest node has more than
the minimal feasible number of Byzantine neighbours; rules are told that number as f),
attacks sign flip, Gaussian, IPM (eps 0.1), ALIE (z from the formula), dissensus (eps 1.5)
and label flip, each computed per targeted honest neighbourhood. Baselines in the same run:
local training only, and clean gossip averaging.

    python bench/robustness.py             # 3 seeds, 300 rounds, both placements (about an hour)
    python bench/robustness.py --quick     # 1 seed, 150 rounds, capped placement (about 15 minutes)

Prints a markdown table, writes robustness.png (heatmap) and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

RULES = ["mean", "median", "trimmed_mean", "krum", "self_centered_clip", "nnm+trimmed_mean"]
ATTACKS = ["sign_flip", "gaussian", "ipm", "alie", "dissensus", "label_flip"]


def minimal_cap(graph, byzantine: int, seed: int) -> int:
    """The smallest per-node cap for which `byzantine` attackers can be placed."""
    import random

    from sim.errors import ScenarioError
    from sim.placement import place_byzantine

    if byzantine == 0:
        return 0
    for cap in range(1, max(d for _, d in graph.degree()) + 1):
        try:
            place_byzantine(graph, byzantine, random.Random(seed + 1), cap=cap)
            return cap
        except ScenarioError:
            continue
    return 0


def run_point(graph, *, rule, attack, byzantine, cap, f, split, rounds, seed):
    """One cell on the batched engine: (mean, min) honest accuracy after `rounds`. rule=None:
    local training only (nobody aggregates: the rule keeps the own model)."""
    from sim.batched import BatchedEngine
    from sim.scenario import Scenario

    sc = Scenario(name="robustness", seed=seed, rounds=rounds, topology="regular:32,8", dataset="digits",
                  partition="labels" if split == "noniid" else "iid", labels_per_shard=2, local_steps=1,
                  batch_size=32, lr=0.1, rules=[rule or "mean"], f=f, attack=attack, byzantine=byzantine,
                  placement="random", cap=cap, engine="batched", loss=0.999999 if rule is None else 0.0)
    res = BatchedEngine(sc, rule or "mean", graph, ".").run()
    accs = list(res.rounds[-1].accuracy.values())
    return float(np.mean(accs)), float(np.min(accs))


def main() -> None:
    import torch

    from topology import from_spec

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--seeds", type=int, default=None)
    ap.add_argument("--out", default="robustness.png")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rounds = args.rounds or (150 if args.quick else 300)
    seeds = list(range(args.seeds or (1 if args.quick else 3)))
    placements = ["capped"] if args.quick else ["capped", "random"]
    settings = []
    for split in ("iid", "noniid"):
        settings.append((split, 0, "none", "capped"))
        for f in (4, 8):
            for placement in placements:
                for attack in ATTACKS:
                    settings.append((split, f, attack, placement))
    results: dict = {}
    t0 = time.time()
    total = len(seeds) * (2 + len(settings) * len(RULES))
    done = 0
    for seed in seeds:
        graph = from_spec("regular:32,8", seed=seed)
        for split in ("iid", "noniid"):
            r = run_point(graph, rule=None, attack="none", byzantine=0, cap=0, f=0, split=split, rounds=rounds,
                          seed=seed)
            results.setdefault(("local-only", split, 0, "none", "-"), []).append(r)
            done += 1
        for split, byz, attack, placement in settings:
            cap = minimal_cap(graph, byz, seed)
            for rule in RULES:
                r = run_point(graph, rule=rule, attack=attack, byzantine=byz, cap=cap if placement == "capped" else 0,
                              f=cap, split=split, rounds=rounds, seed=seed)
                results.setdefault((rule, split, byz, attack, placement), []).append(r)
                done += 1
                print(f"[{done}/{total}] {time.time() - t0:6.0f}s {split} f={byz} {attack} {placement} {rule}: "
                      f"mean {r[0]:.3f} min {r[1]:.3f}", file=sys.stderr, flush=True)

    def agg(key):
        vals = results[key]
        return float(np.mean([v[0] for v in vals])), float(np.min([v[1] for v in vals]))

    columns = [(s, f, a, p) for s, f, a, p in settings]
    header = ["rule"] + [f"{s} f={f} {a}" + (f" ({p})" if f else "") for s, f, a, p in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for rule in RULES:
        cells = [rule] + [f"{100 * agg((rule, *c))[0]:.1f} / {100 * agg((rule, *c))[1]:.1f}" for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    local = {s: agg(("local-only", s, 0, "none", "-")) for s in ("iid", "noniid")}
    lines.append("| local-only | " + " | ".join(f"{100 * local[c[0]][0]:.1f} / {100 * local[c[0]][1]:.1f}"
                                               for c in columns) + " |")
    print(f"honest test accuracy, mean / min (%), {len(seeds)} seed(s), {rounds} rounds, 32 nodes, 8-regular\n")
    print("\n".join(lines))

    # heatmap: rules x settings, mean honest accuracy
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = np.array([[agg((rule, *c))[0] for c in columns] for rule in RULES])
    fig, ax = plt.subplots(figsize=(max(8, len(columns) * 0.45), 4))
    im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax.set_yticks(range(len(RULES)), RULES)
    ax.set_xticks(range(len(columns)), [h for h in header[1:]], rotation=90, fontsize=7)
    fig.colorbar(im, ax=ax, label="mean honest accuracy")
    ax.set_title("robustness: 32 nodes, 8-regular, digits")
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    plt.close(fig)
    print(f"\nheatmap: {args.out}")

    clean_gossip = agg(("mean", "iid", 0, "none", "capped"))[0]
    figures = {"rounds": rounds, "seeds": len(seeds), "local_only_iid": local["iid"][0],
               "clean_gossip_iid": clean_gossip, "cells": {f"{k[0]}|{k[1]}|f{k[2]}|{k[3]}|{k[4]}": agg(k)
                                                          for k in results}}
    for rule in RULES:
        iid12 = [agg((rule, "iid", 4, a, "capped")) for a in ATTACKS]
        iid25 = [agg((rule, "iid", 8, a, "capped")) for a in ATTACKS]
        figures[f"gate/{rule}"] = {
            "clean_within_1pt": abs(agg((rule, "iid", 0, "none", "capped"))[0] - clean_gossip) <= 0.01,
            "f4_mean>=93_min>=90": all(m >= 0.93 and lo >= 0.90 for m, lo in iid12),
            "f8_mean>=88_and_above_local": all(m >= 0.88 and m >= local["iid"][0] for m, _ in iid25)}
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
