"""The demo: 16 peers on a small-world graph, non-IID digits, 3 ALIE attackers; plain gossip
averaging against median, Krum and NNM + trimmed mean, with an attack-free reference."""

from __future__ import annotations

from dataclasses import replace

from .scenario import Scenario


def demo_scenarios(rounds: int = 30, nodes: int = 16) -> list[Scenario]:
    base = Scenario(
        name="demo", seed=1, rounds=rounds, topology=f"ws:{nodes},8,0.2", dataset="digits", partition="dirichlet",
        alpha=1.0, model="mlp", model_options={"hidden": [32]}, local_steps=10, batch_size=32, lr=0.1,
        rules=["mean", "median", "krum", "nnm+trimmed_mean"], f=2, attack="sign_flip", byzantine=3,
        placement="random", cap=2, deadline=0.5)
    clean = replace(base, name="demo-clean", attack="none", byzantine=0, rules=["mean"])
    return [clean, base]
