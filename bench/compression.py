"""Compressed gossip: accuracy against bytes sent, clean and under attack (sim.compression).

32 nodes on a random 8-regular graph, non-IID (Dirichlet 0.5), 5 local SGD steps a round, on
the batched engine. Per data set (digits: MLP [32], 2,410 values; Fashion-MNIST: MLP [128],
101,770 values) the baseline raw-f32 runs `rounds` rounds; every compressed variant runs
`long` rounds (it may need more rounds for fewer bytes):

    int8            the dense int8 codec (the model itself, quantized)
    topk P          top-k of the change since the last send, no error feedback, gamma 1
    topk P +ef      top-k of x - public copy (error feedback), gamma 1
    choco P         top-k with error feedback and CHOCO's step gamma (CHOCO_GAMMA[P])

Figures: bytes per node until the run's mean honest accuracy reaches what raw-f32 reaches at
its final round (within a quarter point; n/a when it never does), the ratio raw bytes / these bytes, the bytes per
node and round, final accuracy. Then, with 12.5% Byzantine nodes (4 of 32, at most 2 next to
any honest node, f = 2) running sign flip and ALIE on what they send, the final accuracy of
nnm+trimmed_mean and median with raw-f32 and with the CHOCO variant that reached the target
with the fewest bytes (`recommended`). Fashion-MNIST runs plain top-k (with and without
feedback) at 1% only, for time.
Bytes are real signed message sizes (one envelope per neighbour with degree + 1 parents).

    python bench/compression.py            # digits and Fashion-MNIST (about 25 minutes on 2 cores)
    python bench/compression.py --quick    # digits only, fewer rounds and variants (a minute)

Writes compression.png (accuracy against bytes per node, log scale) next to --out and, last,
one JSON line.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from bench._table import emit_json, print_table  # noqa: E402

FRACTIONS = (0.1, 0.01, 0.001)
CHOCO_GAMMA = {0.1: 0.5, 0.01: 0.2, 0.001: 0.05}
MODELS = {"digits": {"hidden": [32]}, "fashion_mnist": {"hidden": [128]}}


def _name(p: float) -> str:
    return f"{p:.1%}".replace(".0%", "%")


def variants(quick: bool, plain: tuple = FRACTIONS) -> dict[str, dict]:
    """raw-f32, int8, top-k without / with error feedback at the fractions `plain`, CHOCO at all."""
    out = {"raw-f32": {}, "int8": {"compressor": "none", "values": "int8", "error_feedback": False}}
    for p in FRACTIONS[:2] if quick else FRACTIONS:
        if not quick and p in plain:
            out[f"topk {_name(p)}"] = {"compressor": "topk", "fraction": p, "error_feedback": False}
            out[f"topk {_name(p)} +ef"] = {"compressor": "topk", "fraction": p}
        out[f"choco {_name(p)}"] = {"compressor": "topk", "fraction": p, "gamma": CHOCO_GAMMA[p]}
    return out


def recommended(dataset: str, figures: dict) -> str:
    """The CHOCO variant that reaches the target with the fewest bytes (else the most accurate)."""
    chocos = [f"choco {_name(p)}" for p in FRACTIONS if f"{dataset}/choco {_name(p)}" in figures]
    reached = [c for c in chocos if figures[f"{dataset}/{c}"]["bytes_to_target"] is not None]
    if reached:
        return max(reached, key=lambda c: figures[f"{dataset}/{c}"]["bytes_ratio_to_target"])
    return max(chocos, key=lambda c: figures[f"{dataset}/{c}"]["final_accuracy"])


def run(dataset: str, compression: dict, rounds: int, *, rule: str = "mean", attack: str = "none", f: int = 0,
        seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(mean honest accuracy per round, cumulative bytes per node after each round)."""
    import torch

    from sim.batched import BatchedEngine
    from sim.run import graph_of
    from sim.scenario import Scenario

    sc = Scenario(name="compression", seed=seed, rounds=rounds, topology="regular:32,8", dataset=dataset,
                  partition="dirichlet", alpha=0.5, model_options=MODELS[dataset], local_steps=5, batch_size=32,
                  lr=0.1, rules=[rule], f=f, attack=attack, byzantine=4 if attack != "none" else 0,
                  cap=2 if attack != "none" else 0, engine="batched", eval_every=1,
                  compression=compression or {"compressor": "none", "values": "f32", "error_feedback": False})
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        res = BatchedEngine(sc, rule, graph_of(sc), tmp).run()
    torch.set_num_threads(threads)
    acc = np.array([np.mean(list(r.accuracy.values())) for r in res.rounds])
    return acc, np.cumsum([r.bytes_sent / 32 for r in res.rounds])


TOLERANCE = 0.0025  # a quarter point: digits' test set has 360 images, one is 0.28 points


def bytes_to(acc: np.ndarray, sent: np.ndarray, target: float) -> float | None:
    """Bytes per node when the run first comes within TOLERANCE of `target` (None: never)."""
    hit = np.flatnonzero(acc >= target - TOLERANCE)
    return float(sent[hit[0]]) if len(hit) else None


def clean(dataset: str, quick: bool, rounds: int, long: int, plain: tuple) -> tuple[list, dict, dict]:
    curves, rows, figures = {}, [], {}
    base_acc, base_sent = run(dataset, {}, rounds)
    target = float(base_acc[-1])
    base_bytes = bytes_to(base_acc, base_sent, target)
    curves["raw-f32"] = (base_acc, base_sent)
    for name, comp in variants(quick, plain).items():
        acc, sent = curves[name] if name in curves else run(dataset, comp, rounds if name == "int8" else long)
        curves[name] = (acc, sent)
        to = bytes_to(acc, sent, target)
        ratio = None if to is None else base_bytes / to
        per_round = float(sent[0])
        rows.append([name, len(acc), f"{per_round:,.0f}", "n/a" if to is None else f"{to:,.0f}",
                     "n/a" if ratio is None else f"{ratio:.1f}x", f"{base_sent[0] / per_round:.1f}x",
                     f"{100 * acc[-1]:.1f}%"])
        figures[f"{dataset}/{name}"] = {"final_accuracy": float(acc[-1]), "bytes_to_target": to,
                                        "bytes_ratio_to_target": ratio, "bytes_per_round": per_round,
                                        "bytes_ratio_per_round": float(base_sent[0] / per_round)}
        print(f"  {dataset} {name}: {100 * acc[-1]:.1f}% after {len(acc)} rounds", file=sys.stderr, flush=True)
    figures[f"{dataset}/target_accuracy"] = target
    return rows, figures, curves


def attacked(dataset: str, rounds: int, long: int, name: str, compression: dict) -> tuple[list, dict]:
    rows, figures = [], {}
    for attack in ("sign_flip", "alie"):
        for rule in ("nnm+trimmed_mean", "median"):
            raw, _ = run(dataset, {}, rounds, rule=rule, attack=attack, f=2)
            comp, _ = run(dataset, compression, long, rule=rule, attack=attack, f=2)
            gap = 100 * (comp[-1] - raw[-1])
            rows.append([attack, rule, name, f"{100 * raw[-1]:.1f}%", f"{100 * comp[-1]:.1f}%", f"{gap:+.1f}"])
            figures[f"{dataset}/{attack}/{rule}"] = {"compression": name, "raw_accuracy": float(raw[-1]),
                                                     "compressed_accuracy": float(comp[-1]),
                                                     "compressed_minus_raw_points": float(gap)}
            print(f"  {dataset} {attack} {rule}: raw {100 * raw[-1]:.1f}%, {name} {100 * comp[-1]:.1f}%",
                  file=sys.stderr, flush=True)
    return rows, figures


def plot(curves: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(7 * len(curves), 5), squeeze=False)
    for ax, (dataset, runs) in zip(axes[0], curves.items(), strict=True):
        for name, (acc, sent) in runs.items():
            ax.plot(sent, acc, label=name, lw=2.5 if name == "raw-f32" else 1.2)
        ax.set_xscale("log")
        ax.set_xlabel("bytes sent per node (log)")
        ax.set_ylabel("mean honest test accuracy")
        ax.set_title(f"{dataset}: 32 nodes, 8-regular, Dirichlet 0.5")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=".")
    ap.add_argument("--no-attacks", action="store_true")
    args = ap.parse_args(argv)
    t0 = time.time()
    # data set -> (raw-f32's rounds, compressed rounds, fractions of plain top-k with and without feedback)
    plan = {"digits": (20, 40, ())} if args.quick else \
        {"digits": (30, 120, FRACTIONS), "fashion_mnist": (20, 100, (0.01,))}
    figures, curves, attack_rows = {}, {}, []
    for dataset, (rounds, long, plain) in plan.items():
        rows, figs, curves[dataset] = clean(dataset, args.quick, rounds, long, plain)
        figures.update(figs)
        print_table(["variant", "rounds", "B/node/round", "B/node to target", "ratio", "ratio/round", "final acc"],
                    rows, title=f"{dataset}: target = raw-f32's final accuracy "
                                f"{100 * figures[f'{dataset}/target_accuracy']:.1f}% (after {rounds} rounds)")
        if not args.no_attacks and not args.quick:
            name = recommended(dataset, figures)
            arows, afigs = attacked(dataset, rounds, long, name, variants(False)[name])
            figures.update(afigs)
            attack_rows += [[dataset, *r] for r in arows]
    if attack_rows:
        print_table(["data", "attack", "rule", "compressed", "raw-f32", "compressed acc", "points"], attack_rows,
                    title="12.5% Byzantine (4 of 32, at most 2 per honest node, f = 2), final accuracy")
    png = os.path.join(args.out, "compression.png")
    plot(curves, png)
    figures["png"] = png
    figures["seconds"] = time.time() - t0
    figures["load"] = os.getloadavg()[0]
    emit_json(figures)
    return figures


if __name__ == "__main__":
    main()
