"""The engines agree, node by node, on a 48-node non-IID scenario with attackers, and the
protocol engine (virtual time) gives identical numbers on a machine loaded by CPU hogs."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from sim.batched import BatchedEngine
from sim.engine import ProtocolEngine
from sim.run import graph_of
from sim.scenario import Scenario
from sim.virtual_time import run_virtual

# digits, Dirichlet 0.5 (each node ~30 samples, skewed labels), a small world of 48, 6 ALIE
# attackers with at most 2 next to any honest node, median tolerating 2
SC = Scenario(name="agree48", seed=1, rounds=10, topology="ws:48,8,0.25", dataset="digits", partition="dirichlet",
              alpha=0.5, local_steps=10, lr=0.2, rules=["median"], f=2, attack="alie", byzantine=6, cap=2)
# measured (seeds 0-1, none/alie/sign_flip, median/trimmed mean): mean within 1.1 points, worst
# node within 3.7, per node |difference| median <= 2.4 and max <= 9.6 points (batches differ)
MEAN_POINTS, WORST_POINTS, NODE_MEDIAN_POINTS, NODE_MAX_POINTS = 2.0, 5.0, 4.0, 15.0


@pytest.fixture(scope="module")
def protocol_run(tmp_path_factory):
    return run_virtual(ProtocolEngine(SC, "median", graph_of(SC), tmp_path_factory.mktemp("quiet")).run())


def test_engines_agree_node_by_node(protocol_run, tmp_path):
    fast = BatchedEngine(SC, "median", graph_of(SC), tmp_path).run()
    assert protocol_run.byzantine == fast.byzantine and len(protocol_run.byzantine) == 6
    p, b = protocol_run.rounds[-1].accuracy, fast.rounds[-1].accuracy
    assert p.keys() == b.keys() and len(p) == 42
    pv, bv = np.array(list(p.values())), np.array([b[v] for v in p])
    assert pv.mean() > 0.6  # both learn
    diff = 100 * np.abs(pv - bv)
    assert 100 * abs(pv.mean() - bv.mean()) <= MEAN_POINTS, (pv.mean(), bv.mean())
    assert 100 * abs(pv.min() - bv.min()) <= WORST_POINTS, (pv.min(), bv.min())
    assert np.median(diff) <= NODE_MEDIAN_POINTS and diff.max() <= NODE_MAX_POINTS, sorted(diff)


def test_a_loaded_machine_changes_nothing(protocol_run, tmp_path):
    """A CPU hog beside the protocol engine: the same per-node accuracies,
    the same rejections, to the last bit (deadlines are simulated seconds)."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(1)]
    try:
        loaded = run_virtual(ProtocolEngine(SC, "median", graph_of(SC), tmp_path).run())
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    for quiet, busy in zip(protocol_run.rounds, loaded.rounds, strict=True):
        assert quiet.accuracy == busy.accuracy and quiet.rejected == busy.rejected
        assert quiet.consensus == busy.consensus
