"""The user's own learner in both engines: a Functional (loss per sample + optimizer as pure
functions) is what a peer runs and what the batched engine vectorizes over nodes; the shipped
anomaly example and a regression learner run as scenarios on both engines and agree; a learner
that is not functional is refused by the batched engine with what to do."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from peer.config.parse import TrainConfig
from peer.learning.data import LocalData
from peer.learning.functional import CLASSIFICATION, REGRESSION, Functional
from peer.learning.model import FlatModel
from sim.batched import BatchedEngine
from sim.engine import ProtocolEngine
from sim.errors import ScenarioError
from sim.run import graph_of
from sim.scenario import engine_for, load
from sim.virtual_time import run_virtual

EXAMPLE = Path(__file__).parent.parent / "examples" / "iot_anomaly" / "scenario.toml"


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_the_functional_optimizer_is_torch_optim(opt):
    """Three steps of Functional.step on a flat row = torch.optim.SGD (momentum, weight decay) / Adam."""
    x, y = torch.randn(16, 4, generator=torch.Generator().manual_seed(1)), torch.arange(16) % 3
    ref = _model()
    cfg = TrainConfig(lr=0.05, momentum=0.9, weight_decay=0.01)
    optim = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9, weight_decay=0.01) if opt == "sgd" \
        else torch.optim.Adam(ref.parameters(), lr=0.05, weight_decay=0.01)
    fm = FlatModel(copy.deepcopy(ref))
    fn = dataclasses.replace(CLASSIFICATION, optimizer=opt)
    learner = fn(fm.module, fm.flat, LocalData(x, y, x, y, 3), dataclasses.replace(cfg, batch_size=16), 0)
    for _ in range(3):
        optim.zero_grad()
        torch.nn.functional.cross_entropy(ref(x), y).backward()
        optim.step()
        g = learner._grad(x, y)
        with torch.no_grad():
            fm.flat.copy_(fn.step(fm.flat[None], g[None], learner.state_, cfg)[0])
    want = torch.cat([p.detach().reshape(-1) for p in ref.parameters()])
    assert torch.allclose(fm.flat, want, atol=1e-5), (fm.flat - want).abs().max()


def test_a_functional_learner_is_a_peer_learner():
    x = torch.randn(64, 4, generator=torch.Generator().manual_seed(2))
    y = (x @ torch.tensor([1.0, -2.0, 0.5, 3.0])).float()
    torch.manual_seed(0)
    fm = FlatModel(torch.nn.Linear(4, 1))
    learner = REGRESSION(fm.module, fm.flat, LocalData(x, y, x, y, 1), TrainConfig(lr=0.05, local_steps=50), 3)
    before = learner.evaluate()["loss"]
    for r in range(4):
        m = learner.train(r)
    after = learner.evaluate()
    assert set(after) >= {"loss", "mae", "samples"} and m["samples"] == 50 * 32
    assert after["loss"] < 0.05 * before
    state = learner.state()
    assert set(state) == {"opt.buf"}


def test_unknown_optimizer_is_refused():
    from peer.errors import ConfigError

    with pytest.raises(ConfigError, match="optimizer"):
        Functional(lambda out, x, y: {"loss": out}, optimizer="lbfgs")


def _means(res) -> np.ndarray:
    return np.array([np.mean(list(r.accuracy.values())) for r in res.rounds])


def _both(sc, rule, tmp_path):
    graph = graph_of(sc)
    proto = run_virtual(ProtocolEngine(sc, rule, graph, tmp_path / "p").run())
    fast = BatchedEngine(sc, rule, graph, tmp_path / "b").run()
    return proto, fast


def test_the_anomaly_example_runs_on_both_engines_and_they_agree(tmp_path):
    sc = dataclasses.replace(load(str(EXAMPLE)), topology="ring:8", rounds=5)
    proto, fast = _both(sc, "mean", tmp_path)
    assert proto.metric == fast.metric == "loss" and not proto.higher_is_better
    p, b = _means(proto), _means(fast)
    assert p[-1] < 0.7 * p[0]  # the autoencoder learns (reconstruction error falls)
    assert np.all(np.abs(p - b) <= 0.05 * p), (p, b)  # within 5% every round


REG_MODULE = '''
import numpy as np
import torch
from peer.learning.functional import REGRESSION as mse

W = np.array([1.0, -2.0, 0.5, 3.0, 0.0, 1.5], dtype=np.float32)


def sensors(shard, shards, seed, samples=120):
    rng = np.random.default_rng([seed, shard])
    x = rng.normal(size=(samples, 6)).astype(np.float32) + 0.3 * (shard % 3)
    return x, (x @ W + 0.1 * rng.normal(size=samples)).astype(np.float32)


def held_out():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(400, 6)).astype(np.float32)
    return x, (x @ W).astype(np.float32)


def linear(in_features):
    return torch.nn.Sequential(torch.nn.Linear(in_features, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))


class NotFunctional:
    def __init__(self, model, flat, data, cfg, seed):
        pass

    def train(self, round):
        return {"loss": 0.0}

    def evaluate(self, x=None, y=None):
        return {"loss": 0.0}
'''
REG_SCENARIO = '''
name = "regression"
rounds = 6
[topology]
graph = "regular:12,4"
[data]
dataset = "reg:sensors"
test = "reg:held_out"
[model]
name = "reg:linear"
options = {}
[train]
learner = "reg:mse"
local_steps = 10
batch_size = 16
lr = 0.02
[aggregation]
rules = ["median"]
f = 1
[attack]
kind = "sign_flip"
byzantine = 2
cap = 1
[faults]
deadline = 30.0
'''


def test_a_regression_learner_runs_on_both_engines_and_they_agree(tmp_path):
    (tmp_path / "reg.py").write_text(REG_MODULE)
    (tmp_path / "s.toml").write_text(REG_SCENARIO)
    sc = load(str(tmp_path / "s.toml"))
    proto, fast = _both(sc, "median", tmp_path)
    assert len(proto.byzantine) == len(fast.byzantine) == 2
    p, b = _means(proto), _means(fast)
    assert p[-1] < 0.3 * p[0], p  # MSE on the shared held-out set falls despite the attackers
    assert abs(p[-1] - b[-1]) <= 0.15 * p[-1] + 0.05, (p, b)


def test_a_learner_that_is_not_functional_runs_only_in_the_protocol_engine(tmp_path):
    (tmp_path / "reg.py").write_text(REG_MODULE)
    (tmp_path / "s.toml").write_text(REG_SCENARIO.replace('"reg:mse"', '"reg:NotFunctional"'))
    sc = load(str(tmp_path / "s.toml"))
    assert engine_for(sc, 5000) == "protocol"  # auto: the protocol engine runs it, whatever the size
    with pytest.raises(ScenarioError, match="not a peer.learning.functional.Functional.*engine = \"protocol\""):
        engine_for(sc, 12, "batched")
    with pytest.raises(ScenarioError, match="Functional"):
        BatchedEngine(sc, "median", graph_of(sc), tmp_path).run()
