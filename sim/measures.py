"""Honest measures of a run: distributions over the honest nodes (worst, the bad tail, median,
mean), each node on its own held-out data where it has enough of it, and each node against
the same learner trained alone on its own data (the question a gateway's owner asks: am I
better off in the fleet?)."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

MIN_OWN_SAMPLES = 30  # a node is scored on its own held-out data only with at least this many samples


def distribution(values, higher_is_better: bool = True) -> dict:
    """mean, worst node, the bad tail (10th percentile, or 90th when lower is better), median,
    best, and how many nodes; NaN figures when there are none."""
    a = np.asarray([v for v in values if v == v], dtype=float)  # NaN: not measured
    if len(a) == 0:
        nan = math.nan
        return {"nodes": 0, "mean": nan, "worst": nan, "tail": nan, "median": nan, "best": nan}
    worst, best = (a.min(), a.max()) if higher_is_better else (a.max(), a.min())
    return {"nodes": int(len(a)), "mean": float(a.mean()), "worst": float(worst),
            "tail": float(np.percentile(a, 10 if higher_is_better else 90)), "median": float(np.median(a)),
            "best": float(best)}


def alone_scenario(sc):
    """The same nodes, data (shift included), model, learner, rounds and seed, every node
    trained alone: no attackers, faults, privacy noise or personalization (a node alone sends
    nothing: its one model is its personal model)."""
    return replace(sc, attack="none", byzantine=0, dropout=0.0, loss=0.0, latency=0.0, stragglers=0,
                   partition_rounds=[], privacy="off", rules=["mean"], name=f"{sc.name}-alone",
                   personalization="shared", similarity=False)


def alone_key(sc) -> tuple:
    a = alone_scenario(sc)
    return (a.topology, a.dataset, a.partition, a.alpha, a.labels_per_shard, repr(sorted(a.data_options.items())), a.holdout,
            a.model, repr(sorted(a.model_options.items())), a.classes, a.learner,
            repr(sorted(a.learner_options.items())), a.test_data, a.local_steps, a.batch_size, a.lr, a.momentum,
            a.rounds, a.seed, a.source, a.shift_offset, a.shift_scale, a.shift_rotation, a.shift_concept)


def train_alone(sc, graph) -> dict | None:
    """Each node's metric (shared test set, else its own held-out data) after the scenario's
    rounds of training alone, run by the batched engine; None when the learner is not one the
    batched engine can run (sim.user.batched_refusal)."""
    both = alone_figures(sc, graph)
    return None if both is None else both["test"]


def alone_figures(sc, graph) -> dict | None:
    """{"test": as train_alone, "own": each node's metric on its own held-out data (nodes with
    MIN_OWN_SAMPLES or more)} after training alone; None as train_alone."""
    from . import user
    from .batched import BatchedEngine

    if user.batched_refusal(sc):
        return None
    a = alone_scenario(sc)
    last = BatchedEngine(a, "mean", graph, ".", alone=True).run().rounds[-1]
    return {"test": dict(last.accuracy), "own": dict(last.own)}


def versus_alone(fed: dict, alone: dict | None, higher_is_better: bool) -> dict | None:
    """Per honest node, the federated figure against its figure alone: the distribution of the
    gain (positive: better in the fleet) and the share of nodes at least as good as alone."""
    if alone is None:
        return None
    nodes = [v for v in fed if v in alone and fed[v] == fed[v] and alone[v] == alone[v]]
    if not nodes:
        return None
    sign = 1.0 if higher_is_better else -1.0
    gain = np.array([sign * (fed[v] - alone[v]) for v in nodes])
    return {"alone": distribution([alone[v] for v in nodes], higher_is_better),
            "gain": distribution(gain, True), "at_least_as_good": float((gain >= 0).mean()),
            "beat": float((gain > 0).mean()), "worst_ratio": worst_ratio(fed, alone, nodes, higher_is_better),
            "nodes": len(nodes)}


def worst_ratio(fed: dict, alone: dict, nodes: list, higher_is_better: bool) -> float:
    """The worst node's figure over its figure alone, oriented so that >= 1 means no node is
    worse off than alone: min over nodes of fed/alone (higher is better) or alone/fed (a loss)."""
    f = np.array([fed[v] for v in nodes], dtype=float)
    a = np.array([alone[v] for v in nodes], dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = f / a if higher_is_better else a / f
    r = r[np.isfinite(r)]
    return float(r.min()) if len(r) else math.nan
