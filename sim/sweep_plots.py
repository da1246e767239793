"""Plots and a ranking that stay readable at 100 runs: one panel per rule with the legend
outside the panels and every swept setting in the labels (seeds and partitions included),
and a regimes chart: for each regime (a combination of the swept settings other than the rule
and the seed) the final figure of every rule, the best marked, seeds averaged.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .engine import RunResult  # noqa: E402

SKIP = {"name", "source", "rules"}  # what never tells two runs apart for a reader
MANY_NODES = 20
PANEL_COLUMNS = 3


def swept(results: list[RunResult]) -> list[str]:
    """The scenario fields whose values differ between the runs (besides the rule), in field order."""
    if not results:
        return []
    dicts = [r.scenario.to_dict() for r in results]
    return [k for k in dicts[0] if k not in SKIP and len({repr(d.get(k)) for d in dicts}) > 1]


def setting(res: RunResult, keys: list[str], skip: tuple[str, ...] = ()) -> str:
    """'attack=alie, seed=1': the run's values of the swept fields (the attack always shown)."""
    d = res.scenario.to_dict()
    shown = [k for k in (["attack"] if "attack" not in keys else []) + keys if k not in skip]
    parts = []
    for k in shown:
        v = d[k]
        if k == "attack" and res.byzantine and v != "none":
            v = f"{v} ({len(res.byzantine)} byz)"
        parts.append(f"{k}={v}")
    return ", ".join(parts)


def accuracy_panels(results: list[RunResult], path: Path, consensus: bool = False) -> Path:
    """One panel per rule; a colour per setting, the same in every panel; the legend beside them.
    `consensus`: the consensus distance per round (log scale) instead of the metric."""
    keys = swept(results)
    rules = list(dict.fromkeys(r.rule for r in results))
    labels = list(dict.fromkeys(setting(r, keys) for r in results))
    colours = plt.get_cmap("tab10" if len(labels) <= 10 else "tab20")
    colour = {lab: colours(i % colours.N) for i, lab in enumerate(labels)}
    cols = min(PANEL_COLUMNS, len(rules))
    rows = math.ceil(len(rules) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols + 3.6, 3.3 * rows + 0.9), squeeze=False,
                             sharex=True, sharey=True)
    metric = results[0].metric if results else "accuracy"
    spread = False
    for ax, rule in zip(axes.flat, rules, strict=False):
        for res in (r for r in results if r.rule == rule):
            lab = setting(res, keys)
            if consensus:
                measured = [rm for rm in res.rounds if rm.consensus == rm.consensus]  # NaN: not measured
                ax.semilogy([rm.round + 1 for rm in measured], [max(rm.consensus, 1e-12) for rm in measured],
                            "--" if res.scenario.attack == "none" else "-", color=colour[lab], linewidth=1.4)
                continue
            shown = [rm for rm in res.rounds if rm.accuracy]
            if not shown:
                continue
            xs = np.array([rm.round + 1 for rm in shown])
            per_round = [np.fromiter(rm.accuracy.values(), dtype=float) for rm in shown]
            dashed = res.scenario.attack == "none"
            ax.plot(xs, [a.mean() for a in per_round], "--" if dashed else "-", color=colour[lab], linewidth=1.4)
            if len(per_round[-1]) >= MANY_NODES:
                spread = True
                worst = [a.min() if res.higher_is_better else a.max() for a in per_round]
                ax.plot(xs, worst, ":", color=colour[lab], linewidth=0.9)
        ax.set_title(rule, fontsize=11)
        ax.grid(alpha=0.3)
        if metric == "accuracy" and not consensus:
            ax.set_ylim(0, 1)
    for ax in axes.flat[len(rules):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("round")
    for ax in axes[:, 0]:
        ax.set_ylabel("consensus distance" if consensus else f"honest {metric}")
    handles = [plt.Line2D([], [], color=colour[lab], linestyle="--" if "attack=none" in lab else "-") for lab in labels]
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1 - 3.4 / fig.get_figwidth(), 0.5), fontsize=8,
               frameon=False, title="setting (dashed: no attack)", title_fontsize=8)
    notes = f"lines: mean over honest nodes{'; dotted: the worst node' if spread else ''}"
    direction = "" if not results or results[0].higher_is_better else " (lower is better)"
    if consensus:
        fig.suptitle("consensus distance per round, one panel per rule\nmean squared distance of the honest models "
                     "to their average", fontsize=10)
    else:
        fig.suptitle(f"{metric}{direction} per round, one panel per rule\n{notes}", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1 - 3.6 / fig.get_figwidth(), 0.95))
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def regimes(rows: list[dict], results: list[RunResult]) -> list[dict]:
    """Per regime (the swept settings but the rule and the seed), each rule's final mean and
    worst-node figure averaged over seeds, best first: which rule wins where."""
    keys = [k for k in swept(results) if k != "seed"]
    groups: dict = defaultdict(list)
    for row, res in zip(rows, results, strict=True):
        groups[(setting(res, keys, skip=("seed",)), res.rule)].append(row)
    out = []
    higher = not results or results[0].higher_is_better
    for regime in dict.fromkeys(k[0] for k in groups):
        ranked = []
        for (reg, rule), rs in groups.items():
            if reg == regime:
                ranked.append({"regime": regime, "rule": rule, "seeds": len(rs),
                               "mean": float(np.nanmean([r["mean_accuracy"] for r in rs])),
                               "worst": float(np.nanmean([r["worst_accuracy"] for r in rs]))})
        ranked.sort(key=lambda x: -x["mean"] if higher else x["mean"])
        for i, x in enumerate(ranked):
            out.append({**x, "rank": i + 1})
    return out


def regimes_plot(ranking: list[dict], metric: str, higher: bool, path: Path) -> Path:
    """Rules (rows) x regimes (columns), each cell the final mean figure; the best rule of each
    regime outlined."""
    regs = list(dict.fromkeys(r["regime"] for r in ranking))
    rules = list(dict.fromkeys(r["rule"] for r in ranking))
    grid = np.full((len(rules), len(regs)), np.nan)
    for r in ranking:
        grid[rules.index(r["rule"]), regs.index(r["regime"])] = r["mean"]
    fig, ax = plt.subplots(figsize=(2.0 + 1.7 * len(regs), 1.6 + 0.5 * len(rules)))
    im = ax.imshow(grid, cmap="viridis" if higher else "viridis_r", aspect="auto")
    for i in range(len(rules)):
        for j in range(len(regs)):
            v = grid[i, j]
            if v == v:
                ax.text(j, i, f"{100 * v:.0f}%" if metric == "accuracy" else f"{v:.3g}", ha="center", va="center",
                        fontsize=8, color="white" if (v < np.nanmean(grid)) == higher else "black")
    for j in range(len(regs)):
        col = grid[:, j]
        if np.isfinite(col).any():
            i = int(np.nanargmax(col) if higher else np.nanargmin(col))
            ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
    ax.set_xticks(range(len(regs)), [r.replace(", ", "\n").replace(" (", "\n(") for r in regs], fontsize=7)
    ax.set_yticks(range(len(rules)), rules, fontsize=8)
    fig.colorbar(im, ax=ax, label=f"mean honest {metric}")
    ax.set_title(f"which rule wins in which regime (final round, seeds averaged)\nred: the best rule of each regime"
                 f"{'' if higher else ' (lowest)'}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def gateways(results: list[RunResult], alone: dict, path: Path) -> Path:
    """Each run's per-gateway figure on its own held-out data (a box with every node as a dot:
    worst, tail and median readable at a glance), the same nodes trained alone first (grey),
    once per distinct baseline (sim.measures.alone_key -> node -> figure)."""
    from .measures import alone_key

    boxes, names, colours = [], [], []
    shown = set()
    keys = [k for k in swept(results) if k not in ("personalization", "similarity")]
    for res in results:
        key = alone_key(res.scenario)
        if key in alone and key not in shown and alone[key]:
            shown.add(key)
            boxes.append(np.fromiter(alone[key].values(), dtype=float))
            extra = setting(res, [k for k in keys if k != "attack"], skip=("attack",))
            names.append("alone" + (f"\n{extra}" if extra else ""))
            colours.append("0.6")
        own = res.rounds[-1].own if res.rounds else {}
        if own:
            boxes.append(np.fromiter(own.values(), dtype=float))
            mode = res.scenario.personalization + ("+sim" if res.scenario.similarity else "")
            names.append(f"{mode}\n{res.rule}\n{setting(res, keys)}".replace(", ", "\n"))
            colours.append("tab:red" if res.scenario.attack != "none" else "tab:blue")
    fig, ax = plt.subplots(figsize=(2.0 + 1.1 * max(len(boxes), 1), 4.6))
    if boxes:
        ax.boxplot(boxes, whis=(10, 90), showfliers=False, widths=0.55)
        rng = np.random.default_rng(0)
        for i, (b, c) in enumerate(zip(boxes, colours, strict=True)):
            ax.scatter(i + 1 + rng.uniform(-0.18, 0.18, len(b)), b, s=7, color=c, alpha=0.7, zorder=3)
        ax.set_xticks(range(1, len(boxes) + 1), names, fontsize=6)
    metric = results[0].metric if results else "accuracy"
    higher = not results or results[0].higher_is_better
    ax.set_ylabel(f"{metric} on own held-out data" + ("" if higher else " (lower is better)"))
    if not higher and boxes and all((b > 0).all() for b in boxes if len(b)):
        ax.set_yscale("log")  # a loss: the spread over gateways spans orders of magnitude
    ax.grid(alpha=0.3, axis="y")
    ax.set_title("per gateway, last round: box = median and quartiles, whiskers 10th-90th percentile, a dot per "
                 "gateway\ngrey: alone (same learner, no neighbours); red: under attack", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
