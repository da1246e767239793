"""Ray: a sweep's points as Ray tasks, and one batched run sharded over actors on a two-node
local cluster (127.0.0.1) giving the single-process run's results. One cluster per module."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from sim.batched import BatchedEngine, Shard, setup
from sim.run import run_all
from sim.scenario import Scenario, expand, parse_sweep
from sim.sharded import partition_blocks, run_sharded
from topology import from_spec

# every Ray process of this module binds 127.0.0.1 (read when ray is imported)
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    c.add_node(num_cpus=1)
    ray.init(address=c.address, log_to_driver=False)
    try:
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


def _scenario(**kw) -> Scenario:
    return Scenario(name="ray", rounds=4, topology="regular:48,6", rules=["median"], f=1, local_steps=2, seed=3,
                    engine="batched", **kw)


def test_partition_blocks_cover_every_node_once():
    topo = setup(_scenario(), from_spec("regular:48,6", seed=3))
    blocks = partition_blocks(topo, 3)
    assert sorted(np.concatenate(blocks).tolist()) == list(range(48))
    assert max(map(len, blocks)) - min(map(len, blocks)) <= 1
    shard = Shard(_scenario(), "median", topo, blocks[0])
    assert set(shard.halo.tolist()).isdisjoint(blocks[0].tolist()) and len(shard.boundary) <= len(blocks[0])


@pytest.mark.timeout(300)
@pytest.mark.parametrize("kw", [dict(attack="alie", byzantine=5, cap=1), dict(dropout=0.2, loss=0.1, momentum=0.5)])
def test_sharded_run_equals_the_single_process_run(cluster, kw):
    sc = _scenario(**kw)
    graph = from_spec(sc.topology, seed=sc.seed)
    one = BatchedEngine(sc, "median", graph, ".").run()
    two, counts = run_sharded(sc, "median", graph, 2)
    assert len(counts) == 48 and one.byzantine == two.byzantine
    for a, b in zip(one.rounds, two.rounds, strict=True):
        assert a.accuracy == b.accuracy and a.loss == b.loss
        assert (a.online, a.bytes_sent) == (b.online, b.bytes_sent)
        assert a.consensus == pytest.approx(b.consensus, rel=1e-5)  # float32 per chunk: rounding only


@pytest.mark.timeout(300)
def test_sweep_points_run_as_ray_tasks_into_one_folder(cluster, tmp_path):
    runs = expand(_scenario(byzantine=4), parse_sweep(["attack=none,sign_flip"]))
    out = run_all(runs, tmp_path, quiet=True, ray="auto")
    here = run_all(runs, tmp_path / "here", quiet=True)
    assert [r["mean_accuracy"] for r in out.rows] == [r["mean_accuracy"] for r in here.rows]
    assert len(json.loads((tmp_path / "summary.json").read_text())) == 2
    assert (tmp_path / "accuracy.png").exists() and len(list(tmp_path.glob("0*-ray-*"))) == 2
