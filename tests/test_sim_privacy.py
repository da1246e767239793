"""[privacy] in the simulator: both engines noise and account, the batched engine's noise does
not depend on chunking, the budget freezes the fleet, sweeps report epsilon (issue 15)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace

import numpy as np
import pytest
from click.testing import CliRunner

from gossipfl.cli import main
from privacy.accountant import Accountant, Release
from sim import batched
from sim.batched import BatchedEngine
from sim.engine import ProtocolEngine
from sim.errors import ScenarioError
from sim.report import summary_row
from sim.scenario import Scenario
from topology import from_spec

DP = Scenario(name="dp", rounds=4, topology="regular:16,4", dataset="digits", local_steps=5, rules=["mean"], f=0,
              privacy="update", noise_multiplier=1.0, clip=0.5, deadline=1.0)


def _accountant(sigma: float, rounds: int) -> Accountant:
    acct = Accountant("rdp", 1e-5)
    for _ in range(rounds):
        acct.spend(Release(sigma, 1.0, 1))
    return acct


def _epsilon(sigma: float, rounds: int) -> float:
    return _accountant(sigma, rounds).epsilon()


def test_both_engines_account_the_same_epsilon_under_both_relations(tmp_path):
    graph = from_spec(DP.topology, seed=0)
    fast = BatchedEngine(DP, "mean", graph, tmp_path / "b").run()
    proto = asyncio.run(ProtocolEngine(DP, "mean", graph, tmp_path / "p").run())
    replace_one = _accountant(1.0, 4).epsilon_replace()
    for res in (fast, proto):
        assert res.epsilon == pytest.approx(_epsilon(1.0, 4))
        assert res.epsilon_replace == pytest.approx(replace_one) and replace_one > res.epsilon
        row = summary_row(res)
        assert (row["epsilon"], row["epsilon_replace"]) == (res.epsilon, res.epsilon_replace)


def test_batched_noise_is_reproducible_and_independent_of_chunking(monkeypatch):
    graph = from_spec(DP.topology, seed=0)
    whole = BatchedEngine(DP, "mean", graph, ".").run()
    monkeypatch.setattr(batched, "CHUNK_NODES", 3)
    pieces = BatchedEngine(DP, "mean", graph, ".").run()
    for a, b in zip(whole.rounds, pieces.rounds, strict=True):
        assert a.accuracy == b.accuracy
        assert a.consensus == pytest.approx(b.consensus, rel=1e-5, nan_ok=True)  # float32 sums, chunked
    clean = BatchedEngine(replace(DP, privacy="off"), "mean", graph, ".").run()
    assert clean.epsilon is None
    assert clean.rounds[-1].consensus != pytest.approx(whole.rounds[-1].consensus, rel=1e-3)  # the noise is there


def test_the_batched_budget_freezes_the_fleet_once_spent():
    budget = (_epsilon(1.0, 2) + _epsilon(1.0, 3)) / 2  # two releases fit, a third does not
    sc = replace(DP, rounds=5, epsilon=budget)
    res = BatchedEngine(sc, "mean", from_spec(sc.topology, seed=0), ".").run()
    assert res.epsilon == pytest.approx(_epsilon(1.0, 2)) and res.epsilon <= budget
    frozen = [rm.consensus for rm in res.rounds[2:]]
    assert frozen == pytest.approx([frozen[0]] * len(frozen), rel=1e-12)  # nobody trains or sends any more
    assert all(rm.bytes_sent == 0 for rm in res.rounds[2:])


def test_record_mode_is_refused_by_the_batched_engine_with_what_to_do():
    sc = replace(DP, privacy="record")
    with pytest.raises(ScenarioError, match="protocol engine"):
        BatchedEngine(sc, "mean", from_spec(sc.topology, seed=0), ".").run()


def test_a_sweep_over_sigma_reports_epsilon_next_to_accuracy(tmp_path):
    scenario = tmp_path / "s.toml"
    scenario.write_text('name = "dp"\nrounds = 3\nengine = "batched"\n[topology]\ngraph = "regular:16,4"\n'
                        '[aggregation]\nrules = ["mean"]\nf = 0\n[privacy]\nmode = "update"\nclip = 0.5\n')
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["sim", "run", str(scenario), "--out", str(out), "--sweep", "sigma=0.5,2"])
    assert res.exit_code == 0, res.output
    assert "epsilon" in res.output
    rows = json.loads((out / "summary.json").read_text())
    rows = rows["runs"] if isinstance(rows, dict) else rows
    eps = {r["noise_multiplier"]: r["epsilon"] for r in rows}
    assert eps[0.5] == pytest.approx(_epsilon(0.5, 3)) and eps[2.0] == pytest.approx(_epsilon(2.0, 3))
    assert np.isfinite(list(eps.values())).all()
