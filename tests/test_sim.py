"""The simulator: attack definitions, scenario validation, placement, a reduced demo, protocol
attacks rejected and counted, results files that parse, logs that verify."""

from __future__ import annotations

import csv
import json
import math
import random
from dataclasses import replace

import pytest
import torch
from click.testing import CliRunner

from gossipfl.cli import main
from peer.audit.verify import verify_log
from sim.attacks import ProtocolAttacker, alie_z, label_flip_map, model_attack
from sim.datasets import fashion_available, fashion_mnist, synthetic
from sim.demo import demo_scenarios
from sim.errors import ScenarioError
from sim.placement import place_byzantine
from sim.run import run_all
from sim.scenario import Scenario, build, expand, parse_sweep
from topology import from_spec

H = torch.tensor([[1.0, 2.0], [3.0, 2.0], [2.0, 5.0]])
GEN = torch.Generator().manual_seed(0)


def test_model_attacks_follow_their_definitions():
    mu, std = H.mean(0), H.std(0, unbiased=False)
    t, own = H[0], torch.tensor([10.0, 10.0])
    kw = dict(n=5, b=1, gen=GEN)
    assert torch.allclose(model_attack("sign_flip", H, t, own, **kw), -mu)
    assert torch.allclose(model_attack("ipm", H, t, own, **kw), -0.1 * mu)
    assert torch.allclose(model_attack("scaling", H, t, own, **kw), t + 10 * (own - t))
    assert torch.allclose(model_attack("alie", H, t, own, **kw), mu - alie_z(5, 1) * std)
    assert torch.allclose(model_attack("dissensus", H, t, own, honest_without_target=H[1:], **kw),
                          t - 1.5 * (H[1:].mean(0) - t))
    g = model_attack("gaussian", H, t, own, params={"sigma": 0.0}, **kw)
    assert torch.allclose(g, mu)


def test_alie_z_formula():
    # n = 50, b = 12 (Baruch et al.): s = 26 - 12 = 14, z = Phi^-1(36/50) ~ 0.583
    assert alie_z(50, 12) == pytest.approx(0.5828, abs=1e-3)


def test_label_flip_map():
    assert label_flip_map(10)[torch.tensor([0, 3, 9])].tolist() == [9, 6, 0]


@pytest.mark.parametrize("kind, reason", [("forged", "bad_signature"), ("wrong_round", "future_round"),
                                          ("wrong_network", "wrong_network"), ("oversized", "too_large"),
                                          ("non_finite", "non_finite")])
def test_protocol_attacks_produce_messages_the_verifier_rejects(kind, reason):
    from gossip.envelope import seal_update
    from gossip.identity import Identity
    from gossip.verify import Verifier

    ident = Identity.generate()
    v = Verifier("net", {ident.peer_id}, b"\x01" * 32, 10, max_size=4096)
    good = seal_update(ident, torch.ones(10), net="net", round=3, schema=b"\x01" * 32).data
    (bad,) = ProtocolAttacker(kind, ident, 4096)("x", good)
    assert v.verify(bad, 3).reason.value == reason


def test_replay_attack_sends_twice():
    from gossip.envelope import seal_update
    from gossip.identity import Identity
    from gossip.verify import Verifier

    ident = Identity.generate()
    v = Verifier("net", {ident.peer_id}, b"\x01" * 32, 10)
    good = seal_update(ident, torch.ones(10), net="net", round=3, schema=b"\x01" * 32).data
    first, second = ProtocolAttacker("replay", ident, 4096)("x", good)
    accepted = v.verify(first, 3)
    assert accepted.__class__.__name__ == "Accepted"
    seen = {(accepted.sender, 3)}  # what the round state records once it takes the first copy
    assert v.verify(second, 3, seen).reason.value == "replay"


@pytest.mark.parametrize("doc, message", [
    ({"rounds": 0}, "rounds"), ({"data": {"dataset": "mnist"}}, "data.dataset"),
    ({"aggregation": {"rules": ["median", "nope"]}}, "aggregation.rules"), ({"attack": {"kind": "evil"}}, "attack.kind"),
    ({"faults": {"loss": 1.5}}, "faults.loss"), ({"bogus": 1}, "unknown scenario field 'bogus'"),
    ({"train": {"lr": "x"}}, "train.lr must be float"), ({"faults": {"partition": [5, 2]}}, "faults.partition"),
])
def test_bad_scenarios_name_the_field(doc, message):
    with pytest.raises(ScenarioError, match=message.replace("[", "\\[")):
        build(doc)


def test_sweeps_expand_to_a_grid():
    base = build({"name": "s", "aggregation": {"rules": ["mean"]}})
    runs = expand(base, parse_sweep(["aggregator=mean,median", "attack=none,sign_flip,alie"]))
    assert len(runs) == 3 and all(r.rules == ["mean", "median"] for r in runs)
    assert [r.attack for r in runs] == ["none", "sign_flip", "alie"]
    with pytest.raises(ScenarioError, match="unknown key"):
        parse_sweep(["colour=red"])


def test_capped_placement_respects_the_cap():
    g = from_spec("regular:32,8", seed=0)

    def worst(bad):  # the most Byzantine neighbours any honest node has
        return max(sum(1 for u in g.neighbors(h) if u in bad) for h in g.nodes if h not in bad)

    uncapped = [worst(place_byzantine(g, 6, random.Random(s))) for s in range(10)]
    assert min(uncapped) > 2  # random placement of ~19% overloads some honest node, every time
    for s in range(10):
        bad = place_byzantine(g, 6, random.Random(s), cap=2)
        assert len(bad) == 6 and len(set(bad)) == 6 and worst(bad) <= 2
    assert worst(place_byzantine(g, 3, random.Random(0), placement="degree", cap=2)) <= 2
    assert place_byzantine(g, 2, random.Random(0), placement="chosen", chosen=[3, 5]) == [3, 5]
    with pytest.raises(ScenarioError):
        place_byzantine(g, 32, random.Random(0))
    with pytest.raises(ScenarioError, match="cannot place"):
        place_byzantine(g, 16, random.Random(0), cap=1)


def test_synthetic_data_is_per_node_and_reproducible():
    x1, y1 = synthetic(shard=3, shards=100, seed=1, samples=200)
    x2, y2 = synthetic(shard=3, shards=100, seed=1, samples=200)
    x3, _ = synthetic(shard=4, shards=100, seed=1, samples=200)
    assert x1.shape == (200, 60) and torch.equal(torch.from_numpy(x1), torch.from_numpy(x2))
    assert not torch.equal(torch.from_numpy(x1), torch.from_numpy(x3))
    assert 0 <= y1.min() and y1.max() < 10


@pytest.mark.skipif(not fashion_available(), reason="Debian package dataset-fashion-mnist is not installed")
def test_fashion_mnist_loads_the_full_standard_set():
    from sim.datasets import _fashion
    xtr, ytr, xte, yte = _fashion()
    assert xtr.shape == (60000, 784) and xte.shape == (10000, 784) and set(ytr.tolist()) == set(range(10))
    x, y = fashion_mnist(shard=0, shards=10, seed=0)
    assert len(x) == 6000


@pytest.mark.timeout(600)
def test_reduced_demo_robust_rules_beat_mean_and_everything_is_written(tmp_path):
    clean, attacked = demo_scenarios(rounds=12, nodes=12)
    attacked = replace(attacked, rules=["mean", "median", "nnm+trimmed_mean"])
    out = run_all([clean, attacked], tmp_path, quiet=True)
    rows = {(r["rule"], r["attack"]): r for r in out.rows}
    mean_acc = rows[("mean", "sign_flip")]["mean_accuracy"]
    assert rows[("mean", "none")]["mean_accuracy"] > 0.8
    for rule in ("median", "nnm+trimmed_mean"):
        assert rows[(rule, "sign_flip")]["mean_accuracy"] > mean_acc + 0.3, (rule, rows)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 12 * (12 + 3 * 9) and json.loads(lines[0])["accuracy"] >= 0
    with open(tmp_path / "metrics.csv") as fh:
        assert len(list(csv.DictReader(fh))) == len(lines)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert len(summary) == 4 and all(math.isfinite(r["mean_accuracy"]) for r in summary)
    for png in ("accuracy.png", "consensus.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"
    run_dirs = sorted(p for p in tmp_path.iterdir() if p.is_dir())
    assert len(run_dirs) == 4 and (run_dirs[1] / "topology.png").exists()
    assert json.loads((run_dirs[1] / "scenario.json").read_text())["attack"] == "sign_flip"
    dbs = list(run_dirs[1].glob("peers/*/data/provenance.db"))
    assert len(dbs) == 12 and all(verify_log(db).ok for db in dbs)


@pytest.mark.timeout(600)
def test_protocol_attacks_are_all_rejected_and_counted(tmp_path):
    base = Scenario(name="proto", rounds=2, topology="regular:8,4", rules=["median"], f=1, byzantine=1,
                    local_steps=2, max_message_mb=0.5, deadline=0.3)
    runs = expand(base, parse_sweep(["attack=forged,replay,wrong_round,wrong_network,oversized,non_finite"]))
    out = run_all(runs, tmp_path, quiet=True)
    expected = {"forged": "bad_signature", "replay": "replay", "wrong_round": "future_round",
                "wrong_network": "wrong_network", "oversized": "too_large", "non_finite": "non_finite"}
    for row in out.rows:
        reason = expected[row["attack"]]
        assert row["rejected"].get(reason, 0) == 4 * 2, row  # each of the 4 honest neighbours, each round
        assert set(row["rejected"]) == {reason}, row


def test_sim_run_command_and_errors(tmp_path):
    sc = tmp_path / "s.toml"
    sc.write_text('name = "tiny"\nrounds = 2\n[topology]\ngraph = "ring:4"\n[train]\nlocal_steps = 2\n'
                  '[aggregation]\nrules = ["mean"]\nf = 0\n')
    r = CliRunner().invoke(main, ["sim", "run", str(sc), "--out", str(tmp_path / "r"), "--quiet"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "r" / "summary.json").exists()
    bad = tmp_path / "bad.toml"
    bad.write_text("rounds = -1\n")
    r = CliRunner().invoke(main, ["sim", "run", str(bad)])
    assert r.exit_code == 2 and "rounds must be >= 1" in r.output


def _engine_run(tmp_path, **faults):
    import asyncio

    from sim.engine import ProtocolEngine
    base = Scenario(name="faults", rounds=3, topology="ring:6", rules=["mean"], f=0, local_steps=1,
                    **{"deadline": 0.2, **faults})
    engine = ProtocolEngine(base, "mean", from_spec("ring:6"), tmp_path)
    result = asyncio.run(engine.run())
    accepted = {v: [rec.accepted for rec in engine.peers[v].history] for v in engine.peers}
    return engine, result, accepted


def test_faults_lose_delay_cut_and_drop_peers(tmp_path):
    # no faults: a round closes as soon as both neighbours delivered, so a generous deadline costs nothing
    # and a busy CI machine cannot make an update late (0.2 s once was, in a clean-clone run)
    engine, _, accepted = _engine_run(tmp_path / "clean", deadline=5.0)
    assert all(a == [2, 2, 2] for a in accepted.values())
    engine, _, accepted = _engine_run(tmp_path / "loss", loss=0.5)
    assert engine.hub.stats.dropped_loss > 0 and min(min(a) for a in accepted.values()) < 2
    # the ring is cut into nodes 0-2 and 3-5 for rounds 0-1, then heals
    engine, _, accepted = _engine_run(tmp_path / "partition", partition_rounds=[0, 1])
    assert accepted[0][:2] == [1, 1] and accepted[2][:2] == [1, 1] and accepted[1][:2] == [2, 2]
    assert all(a[2] == 2 for a in accepted.values())
    # node 5 straggles: its updates arrive after its neighbours' deadline
    engine, _, accepted = _engine_run(tmp_path / "straggler", stragglers=1)
    assert accepted[4] == [1, 1, 1] and accepted[0] == [1, 1, 1] and accepted[2] == [2, 2, 2]
    _, result, _ = _engine_run(tmp_path / "churn", dropout=0.5, rejoin=0.5)
    assert min(rm.online for rm in result.rounds) < 6
