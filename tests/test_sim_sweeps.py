"""Readable sweeps: every swept setting (seeds, partitions) in the labels, so no two runs of a
panel share one; one panel per rule; a regimes ranking (seeds averaged, best first) in
regimes.json, regimes.png and the command's output."""

from __future__ import annotations

import json

import numpy as np
from click.testing import CliRunner

from gossipfl.cli import main
from sim import sweep_plots
from sim.run import run_all
from sim.scenario import Scenario, expand, parse_sweep

BASE = Scenario(name="sw", rounds=2, topology="regular:16,4", dataset="digits", local_steps=1, engine="batched",
                baseline=False)


def test_sweep_labels_tell_every_run_apart_and_regimes_rank_the_rules(tmp_path):
    scs = expand(BASE, parse_sweep(["aggregator=mean,median", "attack=none,sign_flip", "seed=0,1,2",
                                    "partition=iid,dirichlet", "byzantine=2"]))
    out = run_all(scs, tmp_path, quiet=True)
    keys = sweep_plots.swept(out.results)
    assert set(keys) == {"seed", "partition", "attack"}
    for rule in ("mean", "median"):
        labels = [sweep_plots.setting(r, keys) for r in out.results if r.rule == rule]
        assert len(labels) == 12 and len(set(labels)) == 12  # three seeds: three different entries
    assert "seed=2, partition=dirichlet, attack=sign_flip (2 byz)" in labels
    assert {r["setting"] for r in out.rows} >= {"seed=0, partition=iid", "seed=2, partition=dirichlet"}

    ranking = json.loads((tmp_path / "regimes.json").read_text())
    assert {r["regime"] for r in ranking} == {f"partition={p}, attack={a}" for p in ("iid", "dirichlet")
                                              for a in ("none", "sign_flip (2 byz)")}
    for regime in {r["regime"] for r in ranking}:
        ranked = [r for r in ranking if r["regime"] == regime]
        assert [r["rank"] for r in ranked] == [1, 2] and ranked[0]["mean"] >= ranked[1]["mean"]
        assert all(r["seeds"] == 3 for r in ranked)
    one = next(r for r in ranking if r["regime"] == "partition=iid, attack=none" and r["rule"] == "median")
    want = np.mean([row["mean_accuracy"] for row, res in zip(out.rows, out.results, strict=True)
                    if res.rule == "median" and res.scenario.partition == "iid" and res.scenario.attack == "none"])
    assert abs(one["mean"] - want) < 1e-12
    for png in ("accuracy.png", "consensus.png", "regimes.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"


def test_one_panel_per_rule(tmp_path, monkeypatch):
    made = {}
    real = sweep_plots.plt.subplots

    def spy(rows, cols, **kw):
        made["grid"] = (rows, cols)
        return real(rows, cols, **kw)

    scs = expand(BASE, parse_sweep(["aggregator=mean,median,trimmed_mean,krum", "seed=0,1"]))
    out = run_all(scs, tmp_path, quiet=True)
    monkeypatch.setattr(sweep_plots.plt, "subplots", spy)
    sweep_plots.accuracy_panels(out.results, tmp_path / "a.png")
    assert made["grid"] == (2, 3)  # four rules: two rows of at most three panels


def test_the_command_prints_which_rule_wins_where(tmp_path):
    toml = tmp_path / "s.toml"
    toml.write_text('name = "cli"\nrounds = 2\nengine = "batched"\nbaseline = false\n[topology]\ngraph = '
                    '"regular:16,4"\n[train]\nlocal_steps = 1\n')
    r = CliRunner().invoke(main, ["sim", "run", str(toml), "--out", str(tmp_path / "o"), "--sweep",
                                  "aggregator=mean,median", "attack=none,sign_flip", "byzantine=2"])
    assert r.exit_code == 0, r.output
    assert "which rule wins in which regime" in r.output and "best rule" in r.output
