"""The batched engine: it agrees with the protocol engine, its attacks follow the per-target
definitions, chunking and grouping change nothing, faults thin the rows a node aggregates,
and the command line, results folder, plots and summary say what they show."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from aggregation._kernels import Rows
from gossipfl.cli import main
from sim import batched
from sim.attacks import MODEL_ATTACKS, model_attack, model_attack_rows
from sim.batched import BatchedEngine, Shard, setup
from sim.engine import ProtocolEngine
from sim.errors import ScenarioError
from sim.run import run_all
from sim.scenario import Scenario, build, engine_for, expand, parse_sweep
from sim.virtual_time import run_virtual
from topology import from_spec, resolve

AGREE = Scenario(name="agree", rounds=20, topology="regular:16,6", dataset="digits", partition="iid", local_steps=10,
                 rules=["median"], f=1, deadline=0.15)
CASES = {"clean": {}, "sign_flip": dict(attack="sign_flip", byzantine=2, cap=1),
         "alie": dict(attack="alie", byzantine=2, cap=1), "dropout": dict(dropout=0.2, rejoin=0.5)}


def _mean_acc(result) -> float:
    return float(np.mean(list(result.rounds[-1].accuracy.values())))


@pytest.mark.timeout(900)
@pytest.mark.parametrize("case", list(CASES))
def test_both_engines_agree_on_mean_honest_accuracy(case, tmp_path):
    """Same scenario, three seeds, both engines: mean honest accuracy within 2 points."""
    proto, fast = [], []
    for seed in (0, 1, 2):
        sc = replace(AGREE, seed=seed, **CASES[case])
        graph = resolve(sc.topology, seed=seed)
        proto.append(_mean_acc(run_virtual(ProtocolEngine(sc, "median", graph, tmp_path / f"p{seed}").run())))
        fast_run = BatchedEngine(sc, "median", graph, tmp_path / f"b{seed}").run()
        assert fast_run.engine == "batched" and len(fast_run.rounds) == sc.rounds
        fast.append(_mean_acc(fast_run))
    assert np.mean(proto) > 0.8, proto  # both actually learn
    assert abs(np.mean(proto) - np.mean(fast)) <= 0.02, (proto, fast)


@pytest.mark.parametrize("kind", MODEL_ATTACKS)
def test_vectorized_attacks_equal_the_per_target_definition(kind):
    """model_attack_rows on P pairs = model_attack called once per pair."""
    gen = torch.Generator().manual_seed(1)
    hoods = [torch.randn(k, 5, generator=gen) for k in (1, 2, 4)]
    own = torch.randn(3, 5, generator=gen)
    n, b = torch.tensor([4, 6, 9]), torch.tensor([1, 2, 3])
    params = {"sigma": 0.0} if kind == "gaussian" else None
    want = torch.stack([model_attack(kind, h, h[0], own[i], n=int(n[i]), b=int(b[i]), gen=gen, params=params,
                                     honest_without_target=h[1:] if len(h) > 1 else h)
                        for i, h in enumerate(hoods)])
    got = model_attack_rows(
        kind, mean=torch.stack([h.mean(0) for h in hoods]), std=torch.stack([h.std(0, unbiased=False) for h in hoods]),
        target=torch.stack([h[0] for h in hoods]), own=own,
        mean_without_target=torch.stack([(h[1:] if len(h) > 1 else h).mean(0) for h in hoods]), n=n, b=b,
        noise=lambda: torch.zeros(3, 5), params=params)
    assert torch.allclose(got, want, atol=1e-6)


def _small(**kw) -> Scenario:
    return Scenario(name="s", rounds=3, topology="regular:24,6", dataset="digits", local_steps=2, rules=["median"],
                    f=1, **kw)


@pytest.mark.parametrize("attack", [*MODEL_ATTACKS, "label_flip"])
def test_every_attack_runs_and_robust_rules_hold(attack):
    sc = _small(attack=attack, byzantine=3, cap=1)
    graph = from_spec(sc.topology, seed=0)
    res = BatchedEngine(sc, "median", graph, ".").run()
    assert len(res.byzantine) == 3 and len(res.rounds[-1].accuracy) == 21
    assert all(np.isfinite(list(rm.accuracy.values())).all() for rm in res.rounds)


def test_crafted_rows_are_what_the_attacker_sends_each_target():
    """Inside a round, each Byzantine row an honest target aggregates is model_attack of that
    target's honest neighbourhood (sign flip: minus its mean)."""
    sc = _small(attack="sign_flip", byzantine=3, cap=1)
    topo = setup(sc, from_spec(sc.topology, seed=0))
    shard = Shard(sc, "median", topo, np.arange(topo.n))
    shard.train(0)
    t = np.flatnonzero(~topo.byz)
    rows = np.array([[v, *topo.nbr[topo.ptr[v]:topo.ptr[v + 1]]] for v in t])
    named, before = Rows(shard.params, rows), shard.params.clone()
    shard._craft(0, named, t, rows)
    assert torch.equal(shard.params, before)  # the models are never written: crafted rows live aside
    stack = named.materialize()
    checked = 0
    for i, v in enumerate(t):
        hood = [v] + [u for u in rows[i, 1:] if not topo.byz[u]]
        for j, u in enumerate(rows[i]):
            if topo.byz[u]:
                assert torch.allclose(stack[i, j], -shard.params[hood].mean(0), atol=1e-6)
                checked += 1
    assert checked >= 3


def test_chunk_sizes_change_nothing(monkeypatch):
    sc = _small(attack="alie", byzantine=3, cap=1, dropout=0.2, loss=0.1, momentum=0.5)
    graph = from_spec(sc.topology, seed=0)
    whole = BatchedEngine(sc, "median", graph, ".").run()
    monkeypatch.setattr(batched, "CHUNK_NODES", 5)
    monkeypatch.setattr(batched, "VALUE_BUDGET", 7 * 4 * 2410)  # 7 targets per aggregate call
    pieces = BatchedEngine(sc, "median", graph, ".").run()
    for a, b in zip(whole.rounds, pieces.rounds, strict=True):
        assert a.accuracy == b.accuracy and a.online == b.online
        assert a.consensus == pytest.approx(b.consensus, rel=1e-5)  # float32 chunks: rounding only


def _delivered(sc: Scenario, r: int = 0) -> dict:
    topo = setup(sc, resolve(sc.topology))
    shard = Shard(sc, sc.rules[0], topo, np.arange(topo.n))
    shard.churn(r)
    ok = shard._delivered(r)
    return {v: int(ok[shard.e_row == v].sum()) for v in range(topo.n)}, shard


def test_faults_thin_the_rows_each_node_aggregates():
    ring = Scenario(name="f", rounds=2, topology="ring:6", rules=["mean"], f=0, local_steps=1)
    assert set(_delivered(ring)[0].values()) == {2}
    got, _ = _delivered(replace(ring, partition_rounds=[0, 1]))  # halves 0-2 and 3-5
    assert got[0] == 1 and got[2] == 1 and got[1] == 2
    assert set(_delivered(replace(ring, partition_rounds=[1, 1]))[0].values()) == {2}
    got, _ = _delivered(replace(ring, stragglers=1))  # node 5 misses its neighbours' deadline
    assert got[4] == 1 and got[0] == 1 and got[2] == 2
    lossy = replace(ring, topology="regular:200,8", loss=0.5)
    got, _ = _delivered(lossy)
    assert 0.4 < sum(got.values()) / 1600 < 0.6
    got, shard = _delivered(replace(lossy, loss=0.0, dropout=0.3))
    assert shard.down.any() and all(got[v] == 0 for v in np.flatnonzero(shard.down))
    slow = replace(lossy, loss=0.0, latency=0.2, deadline=0.2)  # P(delay <= mean) = 1 - 1/e
    got, _ = _delivered(slow)
    assert 0.55 < sum(got.values()) / 1600 < 0.72


def test_nodes_grouped_by_rows_keep_their_own_model_when_the_rule_cannot_use_them():
    """krum needs n > 2f + 2 rows: with heavy loss most nodes skip and keep the trained model."""
    sc = Scenario(name="k", rounds=1, topology="regular:30,4", rules=["krum"], f=1, local_steps=1, loss=0.6)
    topo = setup(sc, resolve(sc.topology))
    shard = Shard(sc, "krum", topo, np.arange(topo.n))
    shard.train(0)
    trained = shard.params.clone()
    ok = shard._delivered(0)
    got = np.bincount(shard.e_row[ok], minlength=topo.n)
    shard.aggregate(0)
    kept = torch.all(shard.params == trained, dim=1).numpy()
    assert kept[got + 1 < 5].all() and not kept[got + 1 >= 5].all()


def test_protocol_attacks_are_refused_with_a_clear_message():
    with pytest.raises(ScenarioError, match="protocol attack"):
        build({"engine": "batched", "attack": {"kind": "forged", "byzantine": 1}, "topology": {"graph": "ring:8"}})
    sc = build({"attack": {"kind": "replay", "byzantine": 1}, "topology": {"graph": "ring:8"}})
    with pytest.raises(ScenarioError, match="protocol attack"):
        engine_for(sc, 8, "batched")
    assert engine_for(sc, 5000) == "protocol"
    assert engine_for(replace(sc, attack="alie"), 5000) == "batched" and engine_for(sc, 16) == "protocol"


def test_digits_limit_names_the_data_sets_that_scale():
    with pytest.raises(ScenarioError, match="synthetic.*fashion_mnist"):
        build({"topology": {"graph": "regular:2000,4"}, "aggregation": {"f": 0}})


def test_results_folder_plots_and_summary(tmp_path):
    """A batched sweep writes the same folder; summaries say no logs; a clean run reports no
    Byzantine nodes; many nodes get the distribution columns."""
    base = Scenario(name="b", rounds=3, topology="regular:40,4", rules=["mean", "median"], f=1, local_steps=1,
                    byzantine=4, engine="batched", batch_size=64)
    runs = expand(base, parse_sweep(["attack=none,sign_flip"]))
    out = run_all(runs, tmp_path, quiet=True)
    rows = {(r["rule"], r["attack"]): r for r in out.rows}
    assert rows[("mean", "none")]["byzantine"] == 0 and rows[("mean", "sign_flip")]["byzantine"] == 4
    assert all(r["engine"] == "batched" and "no provenance logs" in r["provenance"] for r in out.rows)
    r = rows[("median", "sign_flip")]
    assert r["min_accuracy"] <= r["p10_accuracy"] <= r["median_accuracy"] and r["honest"] == 36
    assert any("fewer training samples than a batch" in w for w in out.warnings)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3 * (2 * 40 + 2 * 36)
    for png in ("accuracy.png", "consensus.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"
    assert not list(tmp_path.glob("*/peers"))
    assert json.loads((sorted(tmp_path.glob("*-median"))[0] / "scenario.json").read_text())["engine_used"] == "batched"


def test_per_round_distribution_rows_for_many_nodes(tmp_path, monkeypatch):
    from sim import report

    monkeypatch.setattr(report, "PER_NODE_ROWS", 10)
    sc = Scenario(name="m", rounds=2, topology="regular:30,4", rules=["mean"], f=0, local_steps=1, engine="batched")
    run_all([sc], tmp_path, quiet=True)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and rows[0]["node"] == "*" and rows[0]["accuracy_min"] <= rows[0]["accuracy_median"]


def test_sim_init_and_sweep_on_the_command_line(tmp_path):
    path = tmp_path / "scenario.toml"
    r = CliRunner().invoke(main, ["sim", "init", str(path)])
    assert r.exit_code == 0 and path.exists(), r.output
    assert "# " in path.read_text() and "engine" in path.read_text()
    r = CliRunner().invoke(main, ["sim", "init", str(path)])
    assert r.exit_code == 2 and "--force" in r.output
    path.write_text(path.read_text().replace("rounds = 20", "rounds = 2").replace("local_steps = 5", "local_steps = 1"))
    r = CliRunner().invoke(main, ["sim", "run", str(path), "--engine", "batched", "--quiet", "--out",
                                  str(tmp_path / "r"), "--sweep", "aggregator=mean,median", "attack.kind=none,alie",
                                  "byzantine=2"])
    assert r.exit_code == 0, r.output
    assert len(json.loads((tmp_path / "r" / "summary.json").read_text())) == 4
    r = CliRunner().invoke(main, ["sim", "run", str(path), "oops"])
    assert r.exit_code == 2 and "KEY=V1,V2" in r.output
    r = CliRunner().invoke(main, ["sim", "run", str(path), "--shards", "2"])
    assert r.exit_code == 2 and "--ray" in r.output


def test_robust_rule_beats_mean_under_sign_flip():
    """The bench/robustness.py setting, reduced: gossip averaging collapses, a robust rule learns."""
    sc = Scenario(name="r", rounds=60, topology="regular:32,8", local_steps=1, rules=["mean"], f=2,
                  attack="sign_flip", byzantine=4, cap=2, seed=0, engine="batched")
    graph = from_spec(sc.topology, seed=0)
    mean = _mean_acc(BatchedEngine(sc, "mean", graph, ".").run())
    robust = _mean_acc(BatchedEngine(sc, "self_centered_clip", graph, ".").run())
    assert mean < 0.3 and robust > 0.6, (mean, robust)


def test_mlp_kernel_is_the_gradient_of_the_module_and_independent_of_the_chunk():
    """The hand-written batched MLP gradient and logits equal autograd's through the module;
    a node's numbers are bit-for-bit the same whatever chunk it is computed in."""
    from torch.func import functional_call, grad, vmap

    from peer.learning.model import build_model
    from sim.batched_mlp import MLPKernel

    module = build_model("mlp", 64, 10, {"hidden": [32, 16]}, seed=0)
    kernel = MLPKernel.of(module)
    assert kernel is not None and MLPKernel.of(build_model("cnn", 64, 10, {}, seed=0)) is None
    names = [k for k, _ in module.named_parameters()]
    shapes = [p.shape for _, p in module.named_parameters()]
    sizes = [p.numel() for _, p in module.named_parameters()]

    def params_of(flat):
        return {n: q.view(s) for n, q, s in zip(names, torch.split(flat, sizes), shapes, strict=True)}

    def loss(flat, x, y):
        return torch.nn.functional.cross_entropy(functional_call(module, params_of(flat), (x,)), y)

    gen = torch.Generator().manual_seed(0)
    p = 0.3 * torch.randn(13, kernel.d, generator=gen)
    x, y = torch.randn(13, 8, 64, generator=gen), torch.randint(0, 10, (13, 8), generator=gen)
    assert torch.allclose(kernel.grad(p, x, y), vmap(grad(loss))(p, x, y), atol=1e-6)
    test = torch.randn(20, 64, generator=gen)
    want = vmap(lambda f: functional_call(module, params_of(f), (test,)))(p)
    assert torch.allclose(kernel.logits(p, test), want, atol=1e-5)
    whole = kernel.grad(p, x, y)
    assert torch.equal(torch.cat([kernel.grad(p[i:i + 3], x[i:i + 3], y[i:i + 3]) for i in range(0, 13, 3)]), whole)
    assert torch.equal(kernel.logits(p[5:6], test), kernel.logits(p, test)[5:6])


def test_worker_threads_change_nothing():
    sc = _small(attack="alie", byzantine=3, cap=1, dropout=0.2, loss=0.1)
    topo = setup(sc, from_spec(sc.topology, seed=0))
    shards = [Shard(sc, "nnm+trimmed_mean", topo, np.arange(topo.n), workers=w) for w in (1, 2)]
    for r in range(3):
        ms = []
        for s in shards:
            s.churn(r)
            s.train(r)
            s.aggregate(r)
            ms.append(s.measure())
        assert torch.equal(shards[0].params, shards[1].params)
        assert np.array_equal(ms[0]["accuracy"], ms[1]["accuracy"]) and np.array_equal(ms[0]["loss"], ms[1]["loss"])
    shards[1].close()


def test_large_runs_evaluate_on_a_schedule_and_say_so(tmp_path, monkeypatch):
    """Above EVAL_ALL_NODES the test set is evaluated about EVAL_POINTS times and in the last
    round; every round still trains and aggregates (consensus only where measured); the summary says so."""
    from sim.report import summary_row

    sc = Scenario(name="e", rounds=5, topology="regular:30,4", rules=["mean"], f=0, local_steps=1, engine="batched")
    assert batched.eval_every(sc, 30) == 1 and batched.eval_every(replace(sc, rounds=100), 1000) == 10
    assert [r for r in range(10) if batched.evaluated(r, 10, 4)] == [3, 7, 9]
    monkeypatch.setattr(batched, "EVAL_ALL_NODES", 10)
    monkeypatch.setattr(batched, "EVAL_POINTS", 2)
    res = BatchedEngine(sc, "mean", from_spec(sc.topology, seed=0), tmp_path).run()
    assert [rm.round for rm in res.rounds if rm.accuracy] == [1, 3, 4] and len(res.rounds) == 5
    assert [rm.round for rm in res.rounds if rm.consensus > 0] == [1, 3, 4]  # NaN elsewhere: not measured
    row = summary_row(res)
    assert row["evaluated_rounds"] == 3 and "3 of 5 rounds" in row["evaluation"]
