"""Results of simulation runs: JSONL/CSV metrics, a summary table, PNG plots."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from gossip.verify import REASONS  # noqa: E402

from .engine import RunResult  # noqa: E402


def label(res: RunResult) -> str:
    sc = res.scenario
    extra = f", {len(res.byzantine)} byzantine" if res.byzantine else ""
    return f"{res.rule} / {sc.attack}{extra}"


def summary_row(res: RunResult) -> dict:
    last = res.rounds[-1]
    accs = list(last.accuracy.values())
    total_rejected = {}
    for rm in res.rounds:
        for k, v in rm.rejected.items():
            total_rejected[k] = total_rejected.get(k, 0) + v
    node_rounds = sum(rm.online for rm in res.rounds)
    return {"run": res.scenario.name, "rule": res.rule, "attack": res.scenario.attack,
            "byzantine": len(res.byzantine), "byzantine_nodes": [str(b) for b in res.byzantine],
            "rounds": len(res.rounds), "mean_accuracy": sum(accs) / len(accs), "min_accuracy": min(accs),
            "consensus_distance": last.consensus, "rejected": total_rejected,
            "seconds": res.seconds, "seconds_per_node_round": res.seconds / max(node_rounds, 1),
            "mbytes_sent": sum(rm.bytes_sent for rm in res.rounds) / 1e6}


def write_metrics(results: list[RunResult], out: Path) -> None:
    rows = []
    for res in results:
        for rm in res.rounds:
            for node, acc in rm.accuracy.items():
                rows.append({"run": res.scenario.name, "rule": res.rule, "attack": res.scenario.attack,
                             "round": rm.round, "node": str(node), "accuracy": acc, "loss": rm.loss[node],
                             "consensus_distance": rm.consensus, "bytes_sent_round": rm.bytes_sent,
                             "online": rm.online, **{f"rejected_{r}": rm.rejected.get(r, 0) for r in REASONS}})
    with open(out / "metrics.jsonl", "w") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")
    with open(out / "metrics.csv", "w", newline="") as fh:
        if rows:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]), lineterminator="\n")
            w.writeheader()
            w.writerows(rows)


def plot(results: list[RunResult], out: Path) -> list[Path]:
    paths = []
    fig, ax = plt.subplots(figsize=(8, 5))
    for res in results:
        xs = [rm.round + 1 for rm in res.rounds]
        ys = [sum(rm.accuracy.values()) / len(rm.accuracy) for rm in res.rounds]
        style = "--" if res.scenario.attack == "none" else "-"
        ax.plot(xs, ys, style, label=label(res))
    ax.set_xlabel("round")
    ax.set_ylabel("mean honest test accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("accuracy per round (dashed: attack-free reference)")
    fig.tight_layout()
    fig.savefig(out / "accuracy.png", dpi=110)
    plt.close(fig)
    paths.append(out / "accuracy.png")

    fig, ax = plt.subplots(figsize=(8, 5))
    for res in results:
        ax.semilogy([rm.round + 1 for rm in res.rounds], [max(rm.consensus, 1e-12) for rm in res.rounds],
                    label=label(res))
    ax.set_xlabel("round")
    ax.set_ylabel("consensus distance (mean squared distance to the honest average)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "consensus.png", dpi=110)
    plt.close(fig)
    paths.append(out / "consensus.png")
    return paths


def table(rows: list[dict], title: str):
    from rich.table import Table

    t = Table(title=title)
    t.add_column("rule", no_wrap=True)
    t.add_column("attack", no_wrap=True)
    for col in ("byz", "mean acc", "min acc", "consensus"):
        t.add_column(col, justify="right", no_wrap=True)
    t.add_column("rejected")
    t.add_column("s/node-rnd", justify="right", no_wrap=True)
    for r in rows:
        rej = ", ".join(f"{k} {v}" for k, v in sorted(r["rejected"].items())) or "-"
        t.add_row(r["rule"], r["attack"], str(r["byzantine"]), f"{100 * r['mean_accuracy']:.1f}%",
                  f"{100 * r['min_accuracy']:.1f}%", f"{r['consensus_distance']:.3g}", rej,
                  f"{r['seconds_per_node_round']:.4f}")
    return t
