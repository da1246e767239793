"""Learners: the built-in classifier keeps its metrics and state; a user's learner (any loss,
torch.optim's Adam, float targets) trains through the real peer and checkpoints its optimizer;
factories beside the config import; the IoT example beats local-only training."""

from __future__ import annotations

import shutil
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from peer.config.parse import load_config
from peer.errors import ConfigError
from peer.learning.classification import ClassificationLearner, TrainConfig
from peer.learning.data import LocalData, from_loader
from peer.learning.learner import CheckedLearner, LearnerError, Metrics, make_learner
from peer.learning.model import FlatModel, build_model
from peer.ops.plan import write_plan
from peer.state import checkpoint as ckpt
from sim.virtual_time import run_virtual
from topology import from_spec

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "iot_anomaly"

REGRESSION = textwrap.dedent('''
    """A user's regression task: float targets, MSE, Adam."""
    import numpy as np
    import torch
    from torch import nn

    from peer.learning.learner import load_optimizer_state, optimizer_state


    def line(shard, shards, seed, samples=400):
        rng = np.random.default_rng(seed + shard)
        x = rng.normal(size=(samples, 5)).astype(np.float32)
        return x, x @ np.array([1.5, -2.0, 0.5, 3.0, -1.0], dtype=np.float32) + 0.25


    def linear(in_features):
        return nn.Sequential(nn.Linear(in_features, 8), nn.Linear(8, 1))


    class Regression:
        def __init__(self, model, flat, data, cfg, seed, betas=(0.9, 0.999)):
            self.model, self.data, self.cfg = model, data, cfg
            self.opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=tuple(betas))
            self.gen = torch.Generator().manual_seed(seed)

        def train(self, round):
            x, y = self.data.x_train, self.data.y_train
            for _ in range(self.cfg.local_steps):
                i = torch.randint(0, len(x), (self.cfg.batch_size,), generator=self.gen)
                self.opt.zero_grad()
                loss = nn.functional.mse_loss(self.model(x[i]).squeeze(1), y[i])
                loss.backward()
                self.opt.step()
            return {"loss": float(loss.detach())}

        def evaluate(self, x=None, y=None):
            if x is None:
                x, y = self.data.x_eval, self.data.y_eval
            with torch.no_grad():
                err = self.model(x).squeeze(1) - y
            return {"loss": float((err ** 2).mean()), "mae": float(err.abs().mean())}

        def state(self):
            return optimizer_state(self.opt)

        def load_state(self, state):
            load_optimizer_state(self.opt, state)
''')


def _data(n=64, features=4, classes=3, seed=0) -> LocalData:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 1).long()
    return LocalData(x[:48], y[:48], x[48:], y[48:], classes)


def test_the_builtin_learner_reports_loss_accuracy_and_carries_its_momentum():
    data = _data()
    fm = FlatModel(build_model("mlp", 4, 3, {"hidden": [8]}))
    cfg = TrainConfig(local_steps=30, lr=0.1, momentum=0.9)
    learner = make_learner(fm.module, fm.flat, data, cfg, seed=1)
    assert type(learner) is ClassificationLearner
    first = learner.evaluate()
    m = learner.train(0)
    assert set(m) == {"loss", "accuracy", "samples"} and m.loss == m["loss"] and m.samples == 30 * 32
    assert learner.evaluate().loss < first.loss
    state = learner.state()
    assert set(state) == {"momentum"} and state["momentum"].shape == fm.flat.shape
    other = make_learner(fm.module, fm.flat, data, cfg, seed=1)
    other.load_state({k: v.clone() for k, v in state.items()})
    assert torch.equal(other.momentum_state(), state["momentum"])
    with pytest.raises(ConfigError, match="train.options.alpha"):
        make_learner(fm.module, fm.flat, data, TrainConfig(options={"alpha": 1}), seed=1)


def test_a_learner_must_answer_with_a_bounded_dict_of_numbers():
    class Odd:
        def __init__(self, answer, state=None):
            self.answer, self._state = answer, state

        def train(self, round):
            return self.answer

        def evaluate(self, x=None, y=None):
            return self.answer

        def state(self):
            return self._state

    assert CheckedLearner(Odd({"loss": torch.tensor(0.5), "samples": 3}), "odd", 10).train(0) == {"loss": 0.5,
                                                                                                 "samples": 3}
    for bad, needle in [([1.0], "dict of metrics"), ({"loss": "low"}, "must be a number"),
                        ({f"m{i}": 1.0 for i in range(100)}, "at most 64"), ({"": 1.0}, "metric names")]:
        with pytest.raises(LearnerError, match=needle):
            CheckedLearner(Odd(bad), "odd", 10).evaluate()
    with pytest.raises(LearnerError, match="bytes of state"):
        CheckedLearner(Odd({}, {"huge": torch.zeros(1 << 20)}), "odd", 10).state()
    assert isinstance(Metrics(loss=1.0), dict) and Metrics(loss=1.0).line() == "loss 1"


def test_loaders_may_give_no_labels_or_float_targets():
    x = np.ones((5, 2, 3), dtype=np.float32)
    fx, fy = from_loader(x, "loader")
    assert fx.shape == (5, 6) and fy.dtype == np.int64 and not fy.any()
    _, ry = from_loader((x, np.linspace(0, 1, 5)), "loader")
    assert ry.dtype == np.float32
    _, cy = from_loader((x, [0.0, 1.0, 2.0, 1.0, 0.0]), "loader")  # whole numbers stay classes
    assert cy.dtype == np.int64
    with pytest.raises(Exception, match="x, \\(x, y\\) or \\(x, None\\)"):
        from_loader((x, None, None), "loader")


def _plan_with_module(tmp_path, spec: str, module_text: str, overrides: dict, name: str = "mytask"):
    """A plan whose nodes name a module of the user's; each node folder gets its own copy
    (write_plan loads every config it writes, so the module is importable meanwhile)."""
    src = tmp_path / "src"
    src.mkdir()
    (src / f"{name}.py").write_text(module_text)
    sys.path.insert(0, str(src))
    try:
        nodes = write_plan(from_spec(spec, seed=1), tmp_path / "plan", transport="memory", overrides=overrides,
                           draw=False)
    finally:
        sys.path.remove(str(src))
    for n in nodes:
        shutil.copy(src / f"{name}.py", n.dir / f"{name}.py")
    return nodes


def test_a_factory_beside_the_config_imports_and_gets_the_input_size(tmp_path):
    body = textwrap.dedent('''
        from torch import nn
        def tiny(in_features, classes, width=4):
            return nn.Sequential(nn.Linear(in_features, width), nn.Linear(width, classes))
    ''')
    nodes = _plan_with_module(tmp_path, "ring:3", body, {"model": {"name": "besideconfig:tiny", "options": {"width": 6}}},
                              name="besideconfig")
    cfg = load_config(nodes[0].config)
    module = build_model(cfg.model.name, 64, cfg.model.classes, cfg.model.options, base=nodes[0].dir)
    assert [tuple(p.shape) for p in module.parameters()] == [(6, 64), (6,), (10, 6), (10,)]
    (nodes[1].dir / "besideconfig.py").unlink()
    sys.modules.pop("besideconfig", None)
    with pytest.raises(ConfigError, match=r"model.name: no module 'besideconfig' in .*put besideconfig.py beside the config"):
        load_config(nodes[1].config)


def test_checkpoints_carry_the_model_schema_and_the_learners_state(tmp_path):
    fm = FlatModel(build_model("mlp", 64, 10, {"hidden": [16]}))
    info = ckpt.ModelInfo.of(fm, 64)
    state = {"opt.0.exp_avg": torch.randn(16, 64), "opt.0.step": torch.tensor(3.0), "count": torch.tensor([7])}
    ckpt.save(tmp_path / "c", ckpt.Checkpoint(4, fm.schema, fm.get(), None, [], [], info, state))
    assert ckpt.read_model_info(tmp_path / "c") == info and info.schema == fm.schema and info.size == fm.size
    back = ckpt.load(tmp_path / "c", fm.schema, fm.size)
    assert back.model == info and set(back.learner_state()) == set(state)
    assert all(torch.equal(back.learner[k], v) for k, v in state.items())
    legacy = ckpt.Checkpoint(1, fm.schema, fm.get(), torch.ones(fm.size))
    ckpt.save(tmp_path / "old", legacy)
    assert ckpt.read_model_info(tmp_path / "old") is None
    assert torch.equal(ckpt.load(tmp_path / "old", fm.schema, fm.size).learner_state()["momentum"], torch.ones(fm.size))


def test_an_mse_adam_learner_trains_through_the_real_peer_and_resumes_its_optimizer(tmp_path):
    from gossip.transport import MemoryHub
    from peer.runtime.local import build_memory_network, memory_peer, run_peers

    over = {"model": {"name": "mytask:linear"}, "data": {"source": "mytask:line"},
            "train": {"learner": "mytask:Regression", "local_steps": 20, "batch_size": 32, "lr": 0.05,
                      "options": {"betas": [0.8, 0.99]}},
            "aggregation": {"rule": "mean", "f": 0}, "round": {"deadline": 5.0, "train_in_thread": False}}
    nodes = _plan_with_module(tmp_path, "ring:3", REGRESSION, over)
    hub, peers = build_memory_network(nodes)
    before = [p.learner.evaluate()["loss"] for p in peers]
    run_virtual(run_peers(peers, rounds=6))
    for p, b in zip(peers, before, strict=True):
        assert all(r.aggregated for r in p.history)
        assert p.history[-1].eval["loss"] < 0.05 * b, (b, p.history[-1].eval)
        assert "mae" in p.history[-1].eval and "accuracy" not in p.history[-1].eval
    saved = peers[0].learner.state()
    again = memory_peer(nodes[0].config, MemoryHub())
    again.resume()
    restored = again.learner.state()
    assert set(restored) == set(saved) and len(saved) >= 6  # exp_avg, exp_avg_sq and step per tensor
    assert all(torch.equal(restored[k], saved[k]) for k in saved)
    again.lock.release()


def _example_compare(out: Path, rounds: int) -> dict:
    import importlib.util

    spec = importlib.util.spec_from_file_location("iot_anomaly_run", EXAMPLE / "run.py")
    example_run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example_run)
    return example_run.compare(out, rounds)


def test_the_iot_example_detects_anomalies_better_together_than_alone(tmp_path):
    result = _example_compare(tmp_path / "fleet", rounds=8)
    alone, together = np.mean(result["local_only"]), np.mean(result["federated"])
    assert together > alone + 0.05 and together > 0.9, result
    for n in sorted((tmp_path / "fleet").glob("node-*")):
        from peer.audit.verify import verify_log

        assert verify_log(n / "data" / "provenance.db").ok
    shutil.rmtree(tmp_path / "fleet")
