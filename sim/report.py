"""Results of simulation runs: JSONL/CSV metrics, a summary table, PNG plots. Both engines'
RunResults go through the same code."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from gossip.verify import REASONS  # noqa: E402

from . import sweep_plots  # noqa: E402
from .engine import RunResult  # noqa: E402
from .measures import MIN_OWN_SAMPLES, distribution, versus_alone  # noqa: E402

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
    if len(a) == 0:
        return dict.fromkeys(("mean", "min", "p10", "median", "p90"), float("nan"))
    return {"mean": float(a.mean()), "min": float(a.min()), "p10": float(np.percentile(a, 10)),
            "median": float(np.median(a)), "p90": float(np.percentile(a, 90))}


def mode_of(sc) -> str:
    """The run's personalization as one word: shared, local_head, ditto, with +similarity."""
    return sc.personalization + ("+similarity" if sc.similarity else "")


def honest_measures(res: RunResult, alone: dict | None, alone_own: dict | None = None) -> dict:
    """The distribution over honest nodes (worst and the bad tail next to the median), on each
    node's own held-out data where it has enough (with the model the node uses: ditto's
    personal one), and against each node trained alone, on the shared figure and on its own
    held-out data (`alone_own`)."""
    last, hib = res.rounds[-1], res.higher_is_better
    dist = distribution(last.accuracy.values(), hib)
    own = {**distribution(last.own.values(), hib), "too_small": last.own_small, "min_samples": MIN_OWN_SAMPLES}
    if not own["nodes"]:
        own["note"] = (f"no honest node has {MIN_OWN_SAMPLES} or more held-out samples: none is scored on its own data")
    elif last.own_small:
        own["note"] = (f"{last.own_small} of {last.own_small + own['nodes']} honest nodes have fewer than "
                       f"{MIN_OWN_SAMPLES} held-out samples and are not scored on their own data")
    vs = versus_alone(last.accuracy, alone, hib)
    if vs is None:
        vs = {"note": "no baseline: baseline = false, or a learner only the protocol engine runs"
              if not res.scenario.baseline or alone is None else "no node measured both ways"}
    vs_own = versus_alone(last.own, alone_own, hib)
    out = {"worst_accuracy": dist["worst"], "tail_accuracy": dist["tail"], "measured_nodes": dist["nodes"],
           "headline_is_own": last.accuracy == last.own,  # no shared test set: the figures above are own held-out
           "own_heldout": own, "vs_alone": vs,
           "vs_alone_own": vs_own if vs_own is not None else {"note": "no node scored on its own data both ways"}}
    if last.own_fleet:  # ditto: the fleet model on the same held-out data, beside the personal one
        out["own_heldout_fleet"] = distribution(last.own_fleet.values(), hib)
    return out


def summary_row(res: RunResult, alone: dict | None = None, alone_own: dict | None = None) -> dict:
    last = res.rounds[-1]
    acc = _spread(last.accuracy.values())
    total_rejected = {}
    for rm in res.rounds:
        for k, v in rm.rejected.items():
            total_rejected[k] = total_rejected.get(k, 0) + v
    node_rounds = sum(rm.online for rm in res.rounds)
    bad = byzantine_of(res)
    batched = res.engine == "batched"
    evaluated = [rm.round for rm in res.rounds if rm.accuracy] or [len(res.rounds) - 1]
    return {"run": res.scenario.name, "rule": res.rule, "attack": res.scenario.attack, "engine": res.engine,
            "personalization": mode_of(res.scenario),
            # the *_accuracy figures hold this metric (the learner's headline figure; "loss": lower is better)
            "metric": res.metric, "higher_is_better": res.higher_is_better,
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
            "epsilon_replace": res.epsilon_replace,  # the same releases under replacement
            **honest_measures(res, alone, alone_own)}


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


def plot(results: list[RunResult], out: Path, rows: list[dict] | None = None, alone: dict | None = None) -> list[Path]:
    """accuracy.png (one panel per rule), consensus.png, gateways.png (each run's per-node
    distribution on own held-out data beside alone's; `alone`: alone_key -> node -> figure)
    and, with the summary rows, regimes.png and regimes.json (which rule wins in which regime)."""
    paths = [sweep_plots.accuracy_panels(results, out / "accuracy.png"), sweep_plots.accuracy_panels(results, out / "consensus.png", consensus=True)]
    if any(r.rounds and r.rounds[-1].own for r in results):
        paths.append(sweep_plots.gateways(results, alone or {}, out / "gateways.png"))
    if rows is not None and results:
        ranking = sweep_plots.regimes(rows, results)
        (out / "regimes.json").write_text(json.dumps(ranking, indent=1))
        paths.append(sweep_plots.regimes_plot(ranking, results[0].metric, results[0].higher_is_better,
                                              out / "regimes.png"))
    return paths


def table(rows: list[dict], title: str):
    from rich.table import Table

    many = any(r.get("honest", 0) >= MANY_NODES for r in rows)
    metric = rows[0].get("metric", "accuracy") if rows else "accuracy"
    higher = rows[0].get("higher_is_better", True) if rows else True
    t = Table(title=f"{title}\nper honest node: {metric}{'' if higher else ' (lower is better)'}; worst node, "
              f"{'10th' if higher else '90th'} percentile, median" + ("; alone: the median node trained alone, "
              ">= alone: nodes at least as good as alone" if any("alone" in r.get("vs_alone", {}) for r in rows)
              else ""))
    settings = any(r.get("setting") for r in rows)
    if settings:
        t.add_column("setting")
    modes = any(r.get("personalization", "shared") != "shared" for r in rows)
    if modes:
        t.add_column("personalization", no_wrap=True)
    t.add_column("rule", no_wrap=True)
    t.add_column("attack", no_wrap=True)
    tail = "p10" if higher else "p90"
    alone = any("alone" in r.get("vs_alone", {}) for r in rows)
    # own held-out columns where the headline is a shared test set (else they repeat it)
    own = any(r.get("own_heldout", {}).get("nodes") and not r.get("headline_is_own") for r in rows)
    for col in ("byz", "mean", "worst") + ((tail, "median") if many else ()) + \
            (("alone", ">= alone") if alone else ()) + \
            (("own worst", f"own {tail}", "own median", "own alone", "beat alone") if own else ()) + ("consensus",):
        t.add_column(col, justify="right", no_wrap=True)
    private = any(r.get("epsilon") is not None for r in rows)
    if private:
        t.add_column("epsilon add/rm", justify="right", no_wrap=True)
        t.add_column("epsilon repl", justify="right", no_wrap=True)
    t.add_column("rejected")
    t.add_column("engine", no_wrap=True)
    t.add_column("s/node-rnd", justify="right", no_wrap=True)
    t.add_column("B/node-rnd", justify="right", no_wrap=True)
    nan = float("nan")
    for r in rows:
        rej = ", ".join(f"{k} {v}" for k, v in sorted(r["rejected"].items())) or "-"
        if r.get("engine") == "batched":
            rej = "n/a"  # no wire: nothing is verified
        keys = ["mean_accuracy", "worst_accuracy"] + (["tail_accuracy", "median_accuracy"] if many else [])
        values = [r[k] for k in keys]
        vs = r.get("vs_alone", {})
        if alone:
            values.append(vs["alone"]["median"] if "alone" in vs else float("nan"))
        pct = [("-" if v != v else f"{100 * v:.1f}%" if metric == "accuracy" else f"{v:.3g}") for v in values]
        if alone:
            pct.append(f"{100 * vs['at_least_as_good']:.0f}%" if "alone" in vs else "-")
        if own:
            oh, vo = r.get("own_heldout", {}), r.get("vs_alone_own", {})
            figures = [oh.get("worst", nan), oh.get("tail", nan), oh.get("median", nan),
                       vo["alone"]["median"] if "alone" in vo else nan]
            pct += [("-" if v != v else f"{100 * v:.1f}%" if metric == "accuracy" else f"{v:.3g}") for v in figures]
            pct.append(f"{100 * vo['beat']:.0f}%" if "beat" in vo else "-")
        eps = [] if not private else ["-" if r.get(k) is None else f"{r[k]:.3g}" for k in ("epsilon", "epsilon_replace")]
        t.add_row(*([r.get("setting", "")] if settings else []),
                  *([r.get("personalization", "shared")] if modes else []), r["rule"], r["attack"], str(r["byzantine"]), *pct,
                  f"{r['consensus_distance']:.3g}", *eps, rej, r.get("engine", "protocol"),
                  f"{r['seconds_per_node_round']:.4g}", f"{r['bytes_per_node_round']:,.0f}")
    return t


def regimes_table(ranking: list[dict], metric: str = "accuracy"):
    """Per regime, the rules from best to worst (seeds averaged): which rule wins where."""
    from rich.table import Table

    fmt = (lambda v: "-" if v != v else f"{100 * v:.1f}%") if metric == "accuracy" else \
        (lambda v: "-" if v != v else f"{v:.3g}")
    t = Table(title=f"which rule wins in which regime (final mean {metric}, seeds averaged; regimes.png)")
    for col in ("regime", "best rule", "mean", "worst node", "then"):
        t.add_column(col)
    for regime in dict.fromkeys(r["regime"] for r in ranking):
        ranked = [r for r in ranking if r["regime"] == regime]
        best = ranked[0]
        rest = ", ".join(f"{r['rule']} {fmt(r['mean'])}" for r in ranked[1:])
        t.add_row(regime, best["rule"], fmt(best["mean"]), fmt(best["worst"]), rest or "-")
    return t
