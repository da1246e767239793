"""Does every gateway gain from the fleet? Personalization measured per gateway (issue 26).

32 gateways on a random 8-regular graph, the batched engine. A fleet pays when each site's
data is scarce, so every gateway trains on little data and is scored on a large held-out set
of its own (its labels, its shift): the scenario's data.holdout keeps 250 of a gateway's 300
samples held out (sim.measures.MIN_OWN_SAMPLES = 30 or more to be scored; the table's title
gives the counts). Three settings:

- labels2: Fashion-MNIST, two labels per gateway, 300 samples each: 50 to train, 250 held out;
- dirichlet: Fashion-MNIST, label skew Dirichlet(0.1) over 9,600 samples (5/6 held out) (sizes vary: the
  title gives the median counts and how many gateways have too few held-out samples to score);
- shift: examples/gateway_fleet (pumps at their own operating points and calibrations: feature
  and concept shift, regression), 300 readings each: 50 to train, 250 held out; the metric is
  the held-out MSE, lower is better.

For each: "alone" (the same learner, no neighbours: the baseline, run in the same sweep),
"shared" with mean and with the robust rule nnm+trimmed_mean, and each personalization mode
(local_head, ditto with lambda 0.1 and 1, similarity, and local_head + similarity)
and a noise floor: every gateway alone again, its batches drawn from another stream (ditto
with a vanishing lambda): how far chance alone moves a gateway's figure, under no attack and with 12.5%
of the gateways Byzantine (sign flip, ALIE; sim.attacks, at most 2 next to any honest one,
f = 2). Per mode: the worst gateway's, the 10th percentile's (90th for a loss) and the median
gateway's figure on its own held-out data, the fraction of gateways that beat alone, the
smallest per-gateway ratio to itself alone (>= 1: nobody worse off) and the worst gateway's
figure against alone's worst gateway.

Settings are chosen once per setting, never on the seed the table reports (seed 0): the learning
rate is the one of LR_GRID with the best median alone on seed 1 (`--tune` reruns that choice and
prints it; the constants LR hold its result), so the baseline gets its best learning rate, and
the mode the goals are checked on is the best on seed 1 too;
rounds (30), local steps (5) and the two ditto lambdas are fixed for every setting.

Goals (checked per setting on the personalized mode with the best attack-free median on seed 1,
printed after each table): worst
ratio at least the noise floor's (min(1, the noise row's worst/alone): no gateway falls further
below itself alone than another batch order moves it; the strict >= 1 is printed beside it);
median better than alone and than shared (mean and robust) by at least 1 point (accuracy) or
5% (MSE); under each attack, the median within 2 points (or 5%) of the attack-free run.

    python bench/personalization.py            # 30 rounds, three settings (a few minutes)
    python bench/personalization.py --quick    # 15 rounds, labels2 and shift only
    python bench/personalization.py --tune     # the learning rate per setting on seed 1, then exit
    python bench/personalization.py --pump-heads   # why local_head loses to alone on the pumps

Last line: one JSON object with every figure and the goals.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from bench._help import answer_help  # noqa: E402
from bench._table import emit_json, print_table  # noqa: E402

ROBUST = "nnm+trimmed_mean"
# label -> (rule, personalization mode, similarity)
MODES = {
    "shared mean": ("mean", "shared", False),
    f"shared {ROBUST}": (ROBUST, "shared", False),
    "local_head": (ROBUST, "local_head", False),
    "ditto": (ROBUST, "ditto", False),
    "ditto lambda=1": (ROBUST, "ditto", False),
    "similarity": ("median", "shared", True),
    "local_head+similarity": ("median", "local_head", True),
}
PERSONAL = ("local_head", "ditto", "ditto lambda=1", "similarity", "local_head+similarity")
ATTACKS = ("none", "sign_flip", "alie")
NOISE = "alone, other batches"
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "gateway_fleet" / "scenario.toml"
NODES, TRAIN, HELD = 32, 50, 250  # per gateway: scarce training data, a held-out set large enough to score it
PER_NODE, HOLDOUT = TRAIN + HELD, HELD / (TRAIN + HELD)
TUNE_SEED = 1  # settings are chosen on this seed, the table is seed 0
LR_GRID = {"labels2": (0.05, 0.1, 0.2), "dirichlet": (0.05, 0.1, 0.2), "shift": (0.01, 0.03, 0.1)}
LR = {"labels2": 0.05, "dirichlet": 0.1, "shift": 0.03}  # bench --tune on seed 1 (the best median alone)


def settings(rounds: int, quick: bool, seed: int = 0) -> dict:
    from sim.scenario import Scenario, load

    fashion = Scenario(name="labels2", seed=seed, rounds=rounds, topology=f"regular:{NODES},8",
                       dataset="fashion_mnist", data_options={"limit": NODES * PER_NODE, "test_limit": 500},
                       holdout=HOLDOUT, partition="labels", labels_per_shard=2, model_options={"hidden": [32]},
                       local_steps=5, lr=LR["labels2"], f=2, cap=2, engine="batched", personal=["3.*"],
                       ditto_lambda=0.1)
    out = {"labels2": fashion}
    if not quick:
        out["dirichlet"] = dataclasses.replace(fashion, name="dirichlet", partition="dirichlet", alpha=0.1,
                                               lr=LR["dirichlet"])
    shift = load(str(EXAMPLE))
    out["shift"] = dataclasses.replace(shift, seed=seed, rounds=rounds, topology=f"regular:{NODES},8", f=2, cap=2,
                                       engine="batched", holdout=HOLDOUT, data_options={"samples": PER_NODE},
                                       lr=LR["shift"])
    return out


def tune(rounds: int) -> dict:
    """The learning rate of LR_GRID with the best median alone on seed TUNE_SEED, per setting."""
    from sim.measures import alone_figures, distribution
    from sim.run import graph_of

    chosen = {}
    for name, sc in settings(rounds, False, TUNE_SEED).items():
        med = {}
        for lr in LR_GRID[name]:
            s = dataclasses.replace(sc, lr=lr)
            own = alone_figures(s, graph_of(s))["own"]
            hib = name != "shift"
            med[lr] = distribution(own.values(), hib)["median"]
            print(f"tune {name} (seed {TUNE_SEED}): lr {lr:g} median alone {med[lr]:.4f}", flush=True)
        chosen[name] = (max if name != "shift" else min)(med, key=med.get)
    return chosen


def counts(sc) -> str:
    """Per gateway: training and held-out samples (median over gateways when they differ), and
    how many have fewer than MIN_OWN_SAMPLES held out (not scored on their own data)."""
    import numpy as np

    from sim import datasets, user
    from sim import shift as shifts
    from sim.measures import MIN_OWN_SAMPLES

    train, held = datasets.node_data(sc.dataset, sc.data_options, partition_=sc.partition, alpha=sc.alpha,
                                     labels_per_shard=sc.labels_per_shard, seed=sc.seed, nodes=np.arange(NODES),
                                     total=NODES, loader=user.loader(sc) if ":" in sc.dataset else None,
                                     classes=sc.classes, shift=(shifts.of(sc), sc.seed), holdout=sc.holdout)
    same = train.count.min() == train.count.max() and held.count.min() == held.count.max()
    few = int((held.count < MIN_OWN_SAMPLES).sum())
    return (f"{int(np.median(train.count))} training and {int(np.median(held.count))} held-out samples per gateway"
            f"{'' if same else ' (median)'}; {few} of {NODES} with fewer than {MIN_OWN_SAMPLES} held out, not scored")


def run_mode(sc, rule: str, mode: str, similarity: bool, attack: str, lam: float = 0.1):
    from sim.batched import BatchedEngine
    from sim.run import graph_of

    s = dataclasses.replace(sc, rules=[rule], personalization=mode, similarity=similarity, attack=attack,
                            byzantine=0.125 if attack != "none" else 0, ditto_lambda=lam,
                            eval_every=sc.rounds)  # only the last round is scored: the table reads no other
    return BatchedEngine(s, rule, graph_of(s), "/tmp").run()


def run_label(sc, label: str, attack: str):
    rule, mode, similarity = MODES[label]
    return run_mode(sc, rule, mode, similarity, attack, 1.0 if "lambda=1" in label else 0.1)


def pick_mode(sc) -> str:
    """The personalized mode with the best median on the gateways' own held-out data, attack-free,
    on seed TUNE_SEED (never the seed the table reports)."""
    from sim.measures import distribution

    s = dataclasses.replace(sc, seed=TUNE_SEED)
    med = {}
    for label in PERSONAL:
        res = run_label(s, label, "none")
        med[label] = distribution(res.rounds[-1].own.values(), res.higher_is_better)["median"]
        hib = res.higher_is_better
    return max(med, key=lambda m: med[m] * (1 if hib else -1))


def pump_heads(rounds: int) -> dict:
    """Why local_head loses to alone on the pumps (seed TUNE_SEED): each gateway's median held-out
    MSE with its learned head and with a least-squares head fitted on its own training readings
    over the body it ends with (pumps.body_and_head: "body", "head"), alone and with local_head."""
    import numpy as np
    import torch

    from sim.batched import BatchedEngine
    from sim.measures import alone_scenario
    from sim.run import graph_of

    sc = settings(rounds, True, TUNE_SEED)["shift"]
    out = {}
    for label, s in (("alone", alone_scenario(sc)),
                     ("local_head", dataclasses.replace(sc, rules=["mean"], personalization="local_head",
                                                        eval_every=rounds))):
        eng = BatchedEngine(s, "mean", graph_of(s), "/tmp", alone=label == "alone")
        eng.run()
        sh = eng.shard
        learned, fitted = [], []
        for k in range(len(sh.own)):
            torch.nn.utils.vector_to_parameters(sh.params[k], sh.module.parameters())

            def features(p, k=k):
                x, y = (t[p.offset[k]:p.offset[k] + p.count[k]] for t in (p.x, p.y))
                with torch.no_grad():
                    h = sh.module.body(x)
                    out = sh.module.head(h)[:, 0]
                return torch.cat([h, torch.ones(len(h), 1)], 1).double(), y.double(), out.double()
            ht, yt, _ = features(sh.train_data)
            he, ye, oe = features(sh.eval_data)
            w = torch.linalg.solve(ht.T @ ht + 1e-3 * torch.eye(ht.shape[1], dtype=torch.float64), ht.T @ yt)
            learned.append(float(((oe - ye) ** 2).mean()))
            fitted.append(float(((he @ w - ye) ** 2).mean()))
        out[label] = {"learned_head": float(np.median(learned)), "least_squares_head": float(np.median(fitted))}
    print_table(["model", "learned head", "least-squares head"],
                [[k, v["learned_head"], v["least_squares_head"]] for k, v in out.items()],
                title=f"\npumps, seed {TUNE_SEED}, {rounds} rounds: median held-out MSE per gateway, the head it "
                      "learned against a least-squares head on its own training readings over its final body")
    return out


def better(a: float, b: float, higher: bool, accuracy: bool) -> bool:
    """a clearly better than b: 1 point of accuracy, or 5% of a loss."""
    return a >= b + 0.01 if accuracy else a <= 0.95 * b if not higher else a >= 1.05 * b


def close(a: float, b: float, accuracy: bool) -> bool:
    """Within 2 points (accuracy) or 5% (a loss) of each other."""
    return abs(a - b) <= 0.02 if accuracy else abs(a - b) <= 0.05 * abs(b)


def bench_setting(name: str, sc) -> dict:
    from sim.measures import alone_figures, distribution, versus_alone
    from sim.run import graph_of

    t0 = time.monotonic()
    alone = alone_figures(sc, graph_of(sc))
    assert alone is not None
    a_own = alone["own"]
    rows, figures = [], {}
    runs = {}  # (label, attack) -> RunResult
    # the noise floor: ditto with a vanishing lambda is each gateway alone with its batches drawn from
    # another stream; its ratio to alone says how far chance alone moves a gateway's figure
    runs[NOISE, "none"] = run_mode(sc, "mean", "ditto", False, "none", 1e-9)
    for label in MODES:
        for attack in ATTACKS:
            runs[label, attack] = run_label(sc, label, attack)
    first = runs["shared mean", "none"]
    runs = {k: v for k, v in runs.items() if k != (NOISE, "none")} | {(NOISE, "none"): runs[NOISE, "none"]}
    hib = first.higher_is_better
    a_worst = distribution(a_own.values(), hib)["worst"]
    for (label, attack), res in [(("alone", "none"), None), *runs.items()]:
        own = a_own if res is None else res.rounds[-1].own
        d = distribution(own.values(), hib)
        vs = None if res is None else versus_alone(own, a_own, hib)
        # the worst gateway against alone's worst gateway (oriented: > 1 better), beside the per-gateway ratio
        worst_vs = (d["worst"] / a_worst if hib else a_worst / d["worst"]) if res is not None else None
        figures[f"{label}/{attack}"] = {"worst": d["worst"], "tail": d["tail"], "median": d["median"],
                                        "nodes": d["nodes"], "beat_alone": vs["beat"] if vs else None,
                                        "worst_ratio": vs["worst_ratio"] if vs else None, "worst_vs_alone_worst": worst_vs}
        rule = "-" if res is None or label == NOISE else res.rule
        rows.append([label, rule, attack, d["nodes"], d["worst"], d["tail"], d["median"],
                     "-" if vs is None else f"{100 * vs['beat']:.0f}%", "-" if vs is None else vs["worst_ratio"],
                     "-" if worst_vs is None else worst_vs])
    accuracy = first.metric == "accuracy"
    tail = "p10" if hib else "p90"
    print_table(["mode", "rule", "attack", "scored", "worst", tail, "median", "beat alone", "worst/alone",
                 "worst/alone's worst"], rows,
                title=f"\n{name}: {first.metric} on each gateway's own held-out data ({counts(sc)})"
                      f"{'' if hib else ' (lower is better)'}; worst/alone: the smallest per-gateway ratio to itself "
                      "alone (>= 1: no gateway worse off); worst/alone's worst: the worst gateway against alone's "
                      "worst (> 1: the bad tail improved)")
    best = pick_mode(sc)  # on seed TUNE_SEED: the goals are not a maximum over the modes of this table
    b = figures[f"{best}/none"]
    floor = min(1.0, figures[f"{NOISE}/none"]["worst_ratio"])  # how far another batch order alone moves a gateway
    goals = {
        "best_mode": best,
        "worst_ratio": b["worst_ratio"], "noise_floor": floor, "worst_ratio_ok": b["worst_ratio"] >= floor,
        "worst_ratio_at_least_1": b["worst_ratio"] >= 1.0,
        "median_vs_alone": b["median"] - figures["alone/none"]["median"],
        "median_beats_alone": better(b["median"], figures["alone/none"]["median"], hib, accuracy),
        "median_vs_shared": b["median"] - figures["shared mean/none"]["median"],
        "median_beats_shared": better(b["median"], figures["shared mean/none"]["median"], hib, accuracy)
        and better(b["median"], figures[f"shared {ROBUST}/none"]["median"], hib, accuracy),
        "attack_gap": {a: figures[f"{best}/{a}"]["median"] - b["median"] for a in ATTACKS[1:]},
        "attack_ok": all(close(figures[f"{best}/{a}"]["median"], b["median"], accuracy) for a in ATTACKS[1:]),
    }
    print(f"goals ({name}, best personalized mode on seed {TUNE_SEED}: {best}): worst/alone {b['worst_ratio']:.3f} against the noise "
          f"floor {floor:.3f} ({'met' if goals['worst_ratio_ok'] else 'NOT met'}; >= 1: "
          f"{'yes' if goals['worst_ratio_at_least_1'] else 'no'}); median vs alone {goals['median_vs_alone']:+.4f} "
          f"({'met' if goals['median_beats_alone'] else 'NOT met'}); vs shared mean "
          f"{goals['median_vs_shared']:+.4f} ({'met' if goals['median_beats_shared'] else 'NOT met'}); "
          "under attack " + ", ".join(f"{a} {g:+.4f}" for a, g in goals["attack_gap"].items())
          + f" ({'met' if goals['attack_ok'] else 'NOT met'}); {time.monotonic() - t0:.0f} s")
    return {"metric": first.metric, "higher_is_better": hib, "figures": figures, "goals": goals,
            "seconds": time.monotonic() - t0}


def main() -> None:
    answer_help(__doc__, "[--quick] [--rounds N] [--tune] [--pump-heads]")
    ap = argparse.ArgumentParser(description="personalization per gateway (issue 26)")
    ap.add_argument("--quick", action="store_true", help="15 rounds, labels2 and shift only")
    ap.add_argument("--rounds", type=int, default=0, help="rounds per run (default 30, --quick 15)")
    ap.add_argument("--tune", action="store_true", help="choose the learning rate per setting on seed 1, then exit")
    ap.add_argument("--pump-heads", action="store_true",
                    help="the pumps' learned heads against least-squares heads (why local_head loses), then exit")
    args = ap.parse_args()
    import torch

    from sim.datasets import FASHION_HINT, fashion_available

    if not fashion_available():
        sys.exit(FASHION_HINT)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    rounds = args.rounds or (15 if args.quick else 30)
    if args.pump_heads:
        heads = pump_heads(rounds)
        emit_json({"bench": "personalization-pump-heads", "seed": TUNE_SEED, "rounds": rounds, "heads": heads,
                   "ratio_learned_vs_alone": heads["local_head"]["learned_head"] / heads["alone"]["learned_head"]})
        return
    if args.tune:
        print(f"LR = {tune(rounds)!r}  # the best median alone on seed {TUNE_SEED}, {rounds} rounds")
        return
    out = {name: bench_setting(name, sc) for name, sc in settings(rounds, args.quick).items()}
    summary = {name: {"best_mode": r["goals"]["best_mode"], "worst_ratio_vs_alone": r["goals"]["worst_ratio"],
                      "noise_floor": r["goals"]["noise_floor"],
                      "median_vs_alone": r["goals"]["median_vs_alone"],
                      "median_vs_shared": r["goals"]["median_vs_shared"],
                      "attack_gap": r["goals"]["attack_gap"],
                      "goals_met": all(r["goals"][k] for k in ("worst_ratio_ok", "median_beats_alone",
                                                              "median_beats_shared", "attack_ok"))}
               for name, r in out.items()}
    emit_json({"bench": "personalization", "rounds": rounds, "nodes": NODES, "samples_per_gateway": PER_NODE,
               "holdout": HOLDOUT, "lr": LR, "tune_seed": TUNE_SEED, "byzantine_fraction": 0.125,
               "robust_rule": ROBUST, "summary": summary, "settings": out})


if __name__ == "__main__":
    main()
