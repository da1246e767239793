"""Honest measures: distributions with the worst node and the bad tail, each node on its own
held-out data only where it has enough of it (and the count said), and each honest node against
the same learner trained alone."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from sim import datasets
from sim.batched import BatchedEngine
from sim.measures import MIN_OWN_SAMPLES, distribution, train_alone, versus_alone
from sim.run import graph_of, run_all
from sim.scenario import Scenario, load
from tests.test_sim_learner import EXAMPLE


def test_distribution_knows_which_way_is_worse():
    up = distribution([0.9, 0.5, 0.8, 0.7], higher_is_better=True)
    down = distribution([0.9, 0.5, 0.8, 0.7], higher_is_better=False)
    assert up["worst"] == 0.5 and up["best"] == 0.9 and up["tail"] == pytest.approx(np.percentile([.9, .5, .8, .7], 10))
    assert down["worst"] == 0.9 and down["best"] == 0.5 and down["tail"] == pytest.approx(np.percentile([.9, .5, .8, .7], 90))
    assert up["median"] == pytest.approx(0.75) and up["nodes"] == 4
    empty = distribution([float("nan")])
    assert empty["nodes"] == 0 and math.isnan(empty["worst"])


def test_versus_alone_is_per_node_and_signed():
    vs = versus_alone({"a": 0.9, "b": 0.5}, {"a": 0.8, "b": 0.6}, True)
    assert vs["gain"]["worst"] == pytest.approx(-0.1) and vs["at_least_as_good"] == 0.5
    lower = versus_alone({"a": 0.1, "b": 0.5}, {"a": 0.2, "b": 0.4}, False)  # a loss: smaller is better
    assert lower["gain"]["best"] == pytest.approx(0.1) and lower["at_least_as_good"] == 0.5
    assert versus_alone({"a": 1.0}, None, True) is None


def test_small_nodes_are_not_scored_on_their_own_data_and_the_summary_says_so(tmp_path):
    """Synthetic data has no shared test set: only nodes with >= 30 held-out samples are scored."""
    sc = Scenario(name="syn", rounds=2, topology="regular:60,4", dataset="synthetic", rules=["mean"],
                  local_steps=1, engine="batched", baseline=False)
    out = run_all([sc], tmp_path, quiet=True)
    train, held = datasets.node_data("synthetic", {}, partition_="iid", alpha=0.5, labels_per_shard=2, seed=0,
                                     nodes=np.arange(60), total=60)
    big = int((held.count >= MIN_OWN_SAMPLES).sum())
    assert 0 < big < 60  # the data set has both kinds (else the test says nothing)
    row = out.rows[0]
    assert row["measured_nodes"] == big and row["own_heldout"]["nodes"] == big
    assert row["own_heldout"]["too_small"] == 60 - big and "fewer than 30 held-out samples" in row["own_heldout"]["note"]
    assert len(out.results[0].rounds[-1].accuracy) == big
    assert row["vs_alone"]["note"].startswith("no baseline")


def test_each_node_against_itself_trained_alone(tmp_path):
    """IID digits, 16 nodes of ~90 samples: in the fleet (mean, no attack) every node beats
    itself alone; under sign flip with plain averaging nodes do worse than alone."""
    sc = Scenario(name="alone", rounds=8, topology="regular:16,4", dataset="digits", rules=["mean"], local_steps=5)
    out = run_all([sc, dataclasses.replace(sc, attack="sign_flip", byzantine=3, cap=1)], tmp_path, quiet=True,
                  engine="batched")
    clean, attacked = out.rows
    assert clean["vs_alone"]["at_least_as_good"] == 1.0 and clean["vs_alone"]["gain"]["worst"] > 0
    assert attacked["vs_alone"]["at_least_as_good"] < 0.5
    # the baseline is the batched engine with nothing aggregated, the same for every rule and attack
    alone = train_alone(sc, graph_of(sc))
    direct = BatchedEngine(sc, "median", graph_of(sc), tmp_path, alone=True).run().rounds[-1].accuracy
    assert alone == direct
    assert clean["vs_alone"]["alone"]["median"] == pytest.approx(np.median(list(alone.values())))


def test_the_protocol_engine_scores_nodes_on_their_own_data(tmp_path):
    sc = dataclasses.replace(load(str(EXAMPLE)), topology="ring:6", rounds=2, rules=["mean"])
    out = run_all([sc], tmp_path, quiet=True, engine="protocol")
    row, last = out.rows[0], out.results[0].rounds[-1]
    assert row["engine"] == "protocol" and row["metric"] == "loss"
    assert len(last.own) == 6 and last.own_small == 0  # 300 samples each: 30 held out
    assert row["own_heldout"]["nodes"] == 6 and "note" not in row["own_heldout"]
    assert row["own_heldout"]["worst"] == max(last.own.values())  # a loss: the worst is the largest
    assert "alone" in row["vs_alone"]


def test_node_data_packed_in_blocks_is_the_same_data(monkeypatch):
    """Loading packs PACK_NODES nodes at a time (memory at a million nodes); any block size
    gives the same samples, offsets and counts."""
    def load():
        return datasets.node_data("synthetic", {"samples": 12}, partition_="iid", alpha=0.5, labels_per_shard=2,
                                  seed=3, nodes=np.arange(5, 40), total=40)

    whole = load()
    for block in (1, 7, 35):
        monkeypatch.setattr(datasets, "PACK_NODES", block)
        for a, b in zip(whole, load(), strict=True):
            assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
            assert (a.offset == b.offset).all() and (a.count == b.count).all()
