"""The attack registry: one entry per attack, each saying what it sends and acting in the engines
its family allows; the scenario checker and both engines read it."""

from __future__ import annotations

import pytest
import torch

from sim.attacks import ATTACKS, REGISTRY, Stats, get
from sim.errors import ScenarioError
from sim.scenario import Scenario, validate


def test_every_attack_has_one_way_to_act():
    for a in REGISTRY.values():
        assert a.summary
        acts = [x is not None for x in (a.rows, a.label_map, a.rewrite)]
        assert sum(acts) == (0 if a.family == "none" else 1), a.name
        assert {"model": a.rows, "data": a.label_map, "protocol": a.rewrite}.get(a.family, None) is not None \
            or a.family == "none"
        if a.family != "none":
            assert a.batched and a.protocol, a.name
    assert ATTACKS == tuple(REGISTRY)


def test_model_attacks_act_on_stats_rows():
    s = Stats(mean=torch.ones(2, 3), std=torch.full((2, 3), 0.5), target=torch.zeros(2, 3), own=torch.ones(2, 3),
              mean_without_target=torch.full((2, 3), 2.0), n=torch.tensor([5, 5]), b=torch.tensor([1, 1]),
              noise=lambda: torch.zeros(2, 3))
    out = {a.name: a.rows(s, a.defaults) for a in REGISTRY.values() if a.rows is not None}
    assert torch.equal(out["sign_flip"], -torch.ones(2, 3))
    assert torch.equal(out["dissensus"], torch.full((2, 3), -3.0))
    assert torch.equal(out["scaling"], torch.full((2, 3), 10.0))
    assert all(v.shape == (2, 3) for v in out.values())


def test_unknown_and_misused_attacks_are_refused():
    with pytest.raises(ScenarioError, match="unknown attack"):
        get("nope")
    with pytest.raises(ScenarioError, match="not a model attack"):
        get("forged", "model")
    with pytest.raises(ScenarioError, match="attack.kind"):
        validate(Scenario(attack="nope"))
