"""Scenario files (TOML): everything a simulation needs, validated with errors naming fields."""

from __future__ import annotations

import copy
import itertools
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aggregation import AggregationError, parse_rule

from .attacks import ATTACKS
from .errors import ScenarioError

DATASETS = ("digits", "fashion_mnist", "synthetic")


@dataclass
class Scenario:
    name: str = "scenario"
    seed: int = 0
    rounds: int = 20
    topology: str = "ws:16,6,0.2"
    dataset: str = "digits"
    partition: str = "iid"
    alpha: float = 0.5
    labels_per_shard: int = 2
    data_options: dict[str, Any] = field(default_factory=dict)
    model: str = "mlp"
    model_options: dict[str, Any] = field(default_factory=lambda: {"hidden": [32]})
    local_steps: int = 5
    batch_size: int = 32
    lr: float = 0.1
    momentum: float = 0.0
    rules: list[str] = field(default_factory=lambda: ["median"])
    f: int = 1
    weights: str = "uniform"
    rule_params: dict[str, Any] = field(default_factory=dict)
    attack: str = "none"
    byzantine: float = 0
    placement: str = "random"
    byzantine_nodes: list[int] = field(default_factory=list)
    cap: int = 0
    attack_params: dict[str, Any] = field(default_factory=dict)
    dropout: float = 0.0
    rejoin: float = 0.5
    loss: float = 0.0
    latency: float = 0.0
    stragglers: int = 0
    partition_rounds: list[int] = field(default_factory=list)
    deadline: float = 0.2
    codec: str = "raw-f32"
    max_message_mb: float = 4.0
    source: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


_FIELDS = {  # table.key -> (attribute, type, check)
    "name": ("name", str), "seed": ("seed", int), "rounds": ("rounds", int),
    "topology.graph": ("topology", str),
    "data.dataset": ("dataset", str), "data.partition": ("partition", str), "data.alpha": ("alpha", float),
    "data.labels_per_shard": ("labels_per_shard", int), "data.options": ("data_options", dict),
    "model.name": ("model", str), "model.options": ("model_options", dict),
    "train.local_steps": ("local_steps", int), "train.batch_size": ("batch_size", int),
    "train.lr": ("lr", float), "train.momentum": ("momentum", float),
    "aggregation.rule": ("rules", str), "aggregation.rules": ("rules", list), "aggregation.f": ("f", int),
    "aggregation.weights": ("weights", str), "aggregation.params": ("rule_params", dict),
    "attack.kind": ("attack", str), "attack.byzantine": ("byzantine", float), "attack.placement": ("placement", str),
    "attack.nodes": ("byzantine_nodes", list), "attack.cap": ("cap", int), "attack.params": ("attack_params", dict),
    "faults.dropout": ("dropout", float), "faults.rejoin": ("rejoin", float), "faults.loss": ("loss", float),
    "faults.latency": ("latency", float), "faults.stragglers": ("stragglers", int),
    "faults.partition": ("partition_rounds", list), "faults.deadline": ("deadline", float),
    "round.codec": ("codec", str), "round.max_message_mb": ("max_message_mb", float),
}
SWEEP_ALIASES = {"aggregator": "aggregation.rules", "rule": "aggregation.rules", "attack": "attack.kind",
                 "byzantine": "attack.byzantine", "topology": "topology.graph", "partition": "data.partition",
                 "placement": "attack.placement", "f": "aggregation.f", "alpha": "data.alpha"}


def _flatten(doc: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in doc.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and key not in ("data.options", "model.options", "aggregation.params", "attack.params"):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def build(doc: dict, source: str = "") -> Scenario:
    sc = Scenario(source=source)
    for key, v in _flatten(doc).items():
        if key not in _FIELDS:
            raise ScenarioError(f"unknown scenario field {key!r}; known: {', '.join(sorted(_FIELDS))}")
        attr, typ = _FIELDS[key]
        if typ is float and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        if not isinstance(v, typ) or isinstance(v, bool):
            raise ScenarioError(f"{key} must be {typ.__name__}, got {v!r}")
        if key == "aggregation.rule":
            v = [v]
        setattr(sc, attr, v)
    validate(sc)
    return sc


def validate(sc: Scenario) -> None:
    def bad(field_: str, msg: str):
        raise ScenarioError(f"{field_} {msg}")

    if sc.rounds < 1:
        bad("rounds", f"must be >= 1, got {sc.rounds}")
    if sc.dataset not in DATASETS:
        bad("data.dataset", f"must be one of {', '.join(DATASETS)}, got {sc.dataset!r}")
    if sc.partition not in ("iid", "dirichlet", "labels"):
        bad("data.partition", f"must be iid, dirichlet or labels, got {sc.partition!r}")
    if not sc.rules:
        bad("aggregation.rules", "must name at least one rule")
    for r in sc.rules:
        try:
            parse_rule(r)
        except AggregationError as exc:
            bad("aggregation.rules", f": {exc}")
    if sc.attack not in ATTACKS:
        bad("attack.kind", f"must be one of {', '.join(ATTACKS)}, got {sc.attack!r}")
    if sc.placement not in ("random", "degree", "chosen"):
        bad("attack.placement", f"must be random, degree or chosen, got {sc.placement!r}")
    if sc.byzantine < 0:
        bad("attack.byzantine", f"must be >= 0, got {sc.byzantine}")
    if sc.weights not in ("uniform", "metropolis_hastings"):
        bad("aggregation.weights", f"must be uniform or metropolis_hastings, got {sc.weights!r}")
    for name in ("dropout", "loss"):
        if not 0 <= getattr(sc, name) < 1:
            bad(f"faults.{name}", f"must be in [0, 1), got {getattr(sc, name)}")
    if sc.partition_rounds and (len(sc.partition_rounds) != 2 or sc.partition_rounds[0] > sc.partition_rounds[1]):
        bad("faults.partition", f"must be [FIRST_ROUND, LAST_ROUND], got {sc.partition_rounds!r}")
    if sc.deadline <= 0:
        bad("faults.deadline", f"must be > 0, got {sc.deadline}")
    if sc.local_steps < 1 or sc.batch_size < 1 or sc.lr <= 0:
        bad("train", "needs local_steps >= 1, batch_size >= 1 and lr > 0")


def load(path: str) -> Scenario:
    p = Path(path)
    try:
        doc = tomllib.loads(p.read_text("utf-8"))
    except FileNotFoundError:
        raise ScenarioError(f"scenario {p} not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"{p}: not valid TOML: {exc}") from None
    try:
        return build(doc, str(p))
    except ScenarioError as exc:
        raise ScenarioError(f"{p}: {exc}") from None


def parse_sweep(items: list[str]) -> dict[str, list[str]]:
    """['aggregator=mean,median', 'attack=none,alie'] -> {'aggregation.rules': [...], ...}."""
    grid = {}
    for item in items:
        key, eq, values = item.partition("=")
        if not eq or not values:
            raise ScenarioError(f"--sweep takes KEY=V1,V2,...; got {item!r}")
        key = SWEEP_ALIASES.get(key, key)
        if key not in _FIELDS:
            raise ScenarioError(f"--sweep: unknown key {item.partition('=')[0]!r}; use one of "
                                f"{', '.join(sorted(SWEEP_ALIASES))} or a dotted field")
        grid[key] = [v.strip() for v in values.split(",") if v.strip()]
    return grid


def expand(base: Scenario, grid: dict[str, list[str]]) -> list[Scenario]:
    """One scenario per point of the grid (rules swept inside one run share the same setup)."""
    keys = [k for k in grid if k != "aggregation.rules"]
    out = []
    for combo in itertools.product(*(grid[k] for k in keys)) if keys else [()]:
        sc = copy.deepcopy(base)
        parts = []
        for k, raw in zip(keys, combo, strict=True):
            attr, typ = _FIELDS[k]
            try:
                v = typ(raw) if typ in (int, float) else raw
            except ValueError:
                raise ScenarioError(f"--sweep {k}: {raw!r} is not a {typ.__name__}") from None
            setattr(sc, attr, v)
            parts.append(f"{k.split('.')[-1]}={raw}")
        if "aggregation.rules" in grid:
            sc.rules = list(grid["aggregation.rules"])
        sc.name = base.name + ("-" + "-".join(parts) if parts else "")
        validate(sc)
        out.append(sc)
    return out
