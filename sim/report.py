"""Results of simulation runs: JSONL/CSV metrics, a summary table, PNG plots. Both engines'
RunResults go through the same code."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from gossip.verify import REASONS  # noqa: E402

from .engine import RunResult  # noqa: E402

PER_NODE_ROWS = 1000  # metrics files hold one row per node and round up to this many honest nodes
MANY_NODES = 20  # from this many honest nodes the plots show the spread, not only the mean


def byzantine_of(res: RunResult) -> list:
    """The Byzantine nodes a run reports: none when nothing attacked."""
    return [] if res.scenario.attack == "none" else list(res.byzantine)


def label(res: RunResult) -> str:
    bad = byzantine_of(res)
    extra = f", {len(bad)} byzantine" if bad else ""
    return f"{res.rule} / {res.scenario.attack}{extra}"


def _spread(values) -> dict:
    a = np.asarray(list(values), dtype=float)
    return {"mean": float(a.mean()), "min": float(a.min()), "p10": float(np.percentile(a, 10)),
            "median": float(np.median(a)), "p90": float(np.percentile(a, 90))}


def summary_row(res: RunResult) -> dict:
    last = res.rounds[-1]
    acc = _spread(last.accuracy.values())
    total_rejected = {}
    for rm in res.rounds:
        for k, v in rm.rejected.items():
            total_rejected[k] = total_rejected.get(k, 0) + v
    node_rounds = sum(rm.online for rm in res.rounds)
    bad = byzantine_of(res)
    batched = res.engine == "batched"
    evaluated = [rm.round for rm in res.rounds if rm.accuracy]
    return {"run": res.scenario.name, "rule": res.rule, "attack": res.scenario.attack, "engine": res.engine,
            "nodes": len(last.accuracy) + len(bad), "honest": len(last.accuracy),
            "byzantine": len(bad), "byzantine_nodes": [str(b) for b in bad],
            "rounds": len(res.rounds), "evaluated_rounds": len(evaluated),
            "evaluation": ("test accuracy every round" if len(evaluated) == len(res.rounds) else
                           f"test accuracy on {len(evaluated)} of {len(res.rounds)} rounds (every "
                           f"{evaluated[0] + 1}, and the last; scenario eval_every): accuracy figures and plots use "
                           "those rounds; every node trained and aggregated every round"),
            "mean_accuracy": acc["mean"], "min_accuracy": acc["min"],
            "p10_accuracy": acc["p10"], "median_accuracy": acc["median"],
            "consensus_distance": last.consensus, "rejected": total_rejected,
            "seconds": res.seconds, "seconds_per_node_round": res.seconds / max(node_rounds, 1),
            "mbytes_sent": sum(rm.bytes_sent for rm in res.rounds) / 1e6,
            "bytes_per_node_round": sum(rm.bytes_sent for rm in res.rounds) / max(len(res.rounds), 1)
            / max(len(last.accuracy) + len(bad), 1),
            "provenance": ("none: the batched engine has no wire and writes no provenance logs (protocol "
                           "attacks and logs need engine = \"protocol\")") if batched
            else "every peer's signed log: peers/*/data/provenance.db",
            "bytes": ("messages sent x their real size (round.compression)" if res.scenario.compression else
                      "estimated: messages sent x largest update size") if batched else "measured",
            "privacy": res.scenario.privacy, "noise_multiplier": res.scenario.noise_multiplier
            if res.epsilon is not None else None,
            "epsilon": res.epsilon,  # the largest epsilon an honest node spent, add/remove (None: privacy off)
            "epsilon_replace": res.epsilon_replace}  # the same releases under replacement


def write_metrics(results: list[RunResult], out: Path) -> None:
    """One row per honest node and round; for runs with more honest nodes than PER_NODE_ROWS,
    one row per round with the distribution over nodes (node = "*")."""
    rows = []
    for res in results:
        bad = len(byzantine_of(res))
        for rm in res.rounds:
            common = {"run": res.scenario.name, "rule": res.rule, "attack": res.scenario.attack, "engine": res.engine,
                      "byzantine": bad, "round": rm.round}
            tail = {"consensus_distance": rm.consensus, "bytes_sent_round": rm.bytes_sent, "online": rm.online,
                    **{f"rejected_{r}": rm.rejected.get(r, 0) for r in REASONS}}
            if len(rm.accuracy) <= PER_NODE_ROWS:
                for node, acc in rm.accuracy.items():
                    rows.append({**common, "node": str(node), "accuracy": acc, "loss": rm.loss[node],
                                 "accuracy_min": "", "accuracy_p10": "", "accuracy_median": "", **tail})
            else:
                s = _spread(rm.accuracy.values())
                rows.append({**common, "node": "*", "accuracy": s["mean"], "loss": float(np.mean(list(rm.loss.values()))),
                             "accuracy_min": s["min"], "accuracy_p10": s["p10"], "accuracy_median": s["median"], **tail})
    with open(out / "metrics.jsonl", "w") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")
    with open(out / "metrics.csv", "w", newline="") as fh:
        if rows:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]), lineterminator="\n")
            w.writeheader()
            w.writerows(rows)


def plot(results: list[RunResult], out: Path) -> list[Path]:
    paths = [_accuracy_plot(results, out / "accuracy.png"), _consensus_plot(results, out / "consensus.png")]
    return paths


def _accuracy_plot(results: list[RunResult], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(9, 5.5))
    clean = [r for r in results if r.scenario.attack == "none"]
    attacked = [r for r in results if r.scenario.attack != "none"]
    reference = bool(clean and attacked)  # a dashed line is a reference only next to attacked runs
    spread = False
    for res in results:
        shown = [rm for rm in res.rounds if rm.accuracy]  # the evaluated rounds (sim.batched.eval_every)
        xs = np.array([rm.round + 1 for rm in shown])
        per_round = [np.fromiter(rm.accuracy.values(), dtype=float) for rm in shown]
        ys = np.array([a.mean() for a in per_round])
        style = "--" if reference and res.scenario.attack == "none" else "-"
        (line,) = ax.plot(xs, ys, style, label=label(res))
        if len(per_round[-1]) >= MANY_NODES:
            spread = True
            p10 = np.array([np.percentile(a, 10) for a in per_round])
            med = np.array([np.median(a) for a in per_round])
            ax.fill_between(xs, p10, med, color=line.get_color(), alpha=0.15, linewidth=0)
            ax.plot(xs, np.array([a.min() for a in per_round]), ":", color=line.get_color(), linewidth=0.8)
    ax.set_xlabel("round")
    ax.set_ylabel("honest test accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    notes = ["lines: mean over honest nodes"]
    if spread:
        notes.append("band: 10th percentile to median; dotted: minimum")
    if reference:
        notes.append("dashed: attack-free reference")
    ax.set_title("accuracy per round\n" + "; ".join(notes), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _consensus_plot(results: list[RunResult], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for res in results:
        ax.semilogy([rm.round + 1 for rm in res.rounds], [max(rm.consensus, 1e-12) for rm in res.rounds],
                    label=label(res))
    ax.set_xlabel("round")
    ax.set_ylabel("consensus distance")
    ax.set_title("consensus distance per round\nmean squared distance of the honest models to their average",
                 fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def table(rows: list[dict], title: str):
    from rich.table import Table

    many = any(r.get("honest", 0) >= MANY_NODES for r in rows)
    t = Table(title=title)
    t.add_column("rule", no_wrap=True)
    t.add_column("attack", no_wrap=True)
    for col in ("byz", "mean acc", "min acc") + (("p10 acc", "median acc") if many else ()) + ("consensus",):
        t.add_column(col, justify="right", no_wrap=True)
    private = any(r.get("epsilon") is not None for r in rows)
    if private:
        t.add_column("epsilon add/rm", justify="right", no_wrap=True)
        t.add_column("epsilon repl", justify="right", no_wrap=True)
    t.add_column("rejected")
    t.add_column("engine", no_wrap=True)
    t.add_column("s/node-rnd", justify="right", no_wrap=True)
    t.add_column("B/node-rnd", justify="right", no_wrap=True)
    for r in rows:
        rej = ", ".join(f"{k} {v}" for k, v in sorted(r["rejected"].items())) or "-"
        if r.get("engine") == "batched":
            rej = "n/a"  # no wire: nothing is verified
        pct = [f"{100 * r['mean_accuracy']:.1f}%", f"{100 * r['min_accuracy']:.1f}%"]
        if many:
            pct += [f"{100 * r['p10_accuracy']:.1f}%", f"{100 * r['median_accuracy']:.1f}%"]
        eps = [] if not private else ["-" if r.get(k) is None else f"{r[k]:.3g}" for k in ("epsilon", "epsilon_replace")]
        t.add_row(r["rule"], r["attack"], str(r["byzantine"]), *pct, f"{r['consensus_distance']:.3g}", *eps, rej,
                  r.get("engine", "protocol"), f"{r['seconds_per_node_round']:.4g}", f"{r['bytes_per_node_round']:,.0f}")
    return t
