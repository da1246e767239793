"""Scenario files (TOML): everything a simulation needs, validated with errors naming fields."""

from __future__ import annotations

import copy
import itertools
import math
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aggregation import REGISTRY, AggregationError, parse_rule
from gossip.codecs import FLOAT_CODECS
from gossip.files import FileReadError, read_limited_text
from peer.config.parse import check_aggregation_params
from peer.errors import ConfigError
from peer.learning.model import BUILTIN, check_builtin_options
from privacy.settings import PrivacySettings, check_privacy
from topology import TopologyError, max_byzantine, resolve

from . import user
from .attacks import ATTACKS, PROTOCOL_ATTACKS
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
    holdout: float = 0.1  # [data] holdout: the fraction of each node's samples kept as its own held-out set
    model: str = "mlp"
    model_options: dict[str, Any] = field(default_factory=lambda: {"hidden": [32]})
    classes: int = 10
    learner: str = "classification"  # or package.module:factory, as in peer.toml
    learner_options: dict[str, Any] = field(default_factory=dict)
    test_data: str = ""  # package.module:function returning (x, y): a held-out set shared by every node
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
    compression: dict[str, Any] = field(default_factory=dict)  # [round.compression]: sim.compression
    max_message_mb: float = 4.0
    engine: str = "auto"
    eval_every: int = 0  # batched engine: rounds between test-set evaluations (0: every round up to 200 nodes, else ~10)
    privacy: str = "off"  # off | update | record (privacy.mode)
    noise_multiplier: float = 1.0
    clip: float = 1.0
    delta: float = 1e-5
    epsilon: float = math.inf  # the budget per node
    accountant: str = "rdp"
    baseline: bool = True  # also train every node alone and report each honest node against it
    personalization: str = "shared"  # [personalization] mode: shared | local_head | ditto (peer.learning.personal)
    personal: list[str] = field(default_factory=lambda: ["head.*"])  # local_head: parameter name patterns
    ditto_lambda: float = 0.1  # [personalization] lambda
    similarity: bool = False  # similarity-aware mixing (aggregation.similarity) instead of the rule
    shift_offset: float = 0.0  # [data.shift] feature shift per node (sim.shift)
    shift_scale: float = 0.0
    shift_rotation: float = 0.0
    shift_concept: int = 0  # concept shift: groups of nodes with their own label map
    source: str = ""

    def to_dict(self) -> dict:
        """As JSON writes it (no infinity: an unlimited privacy budget is null)."""
        d = asdict(self)
        d["epsilon"] = None if math.isinf(self.epsilon) else self.epsilon
        return d


_FIELDS = {  # table.key -> (attribute, type, check)
    "name": ("name", str), "seed": ("seed", int), "rounds": ("rounds", int), "engine": ("engine", str),
    "eval_every": ("eval_every", int), "baseline": ("baseline", bool),
    "topology.graph": ("topology", str),
    "data.dataset": ("dataset", str), "data.partition": ("partition", str), "data.alpha": ("alpha", float),
    "data.labels_per_shard": ("labels_per_shard", int), "data.options": ("data_options", dict),
    "data.holdout": ("holdout", float),
    "model.name": ("model", str), "model.options": ("model_options", dict), "model.classes": ("classes", int),
    "train.learner": ("learner", str), "train.options": ("learner_options", dict), "data.test": ("test_data", str),
    "train.local_steps": ("local_steps", int), "train.batch_size": ("batch_size", int),
    "train.lr": ("lr", float), "train.momentum": ("momentum", float),
    "aggregation.rule": ("rules", str), "aggregation.rules": ("rules", list), "aggregation.f": ("f", int),
    "aggregation.weights": ("weights", str), "aggregation.params": ("rule_params", dict),
    "attack.kind": ("attack", str), "attack.byzantine": ("byzantine", float), "attack.placement": ("placement", str),
    "attack.nodes": ("byzantine_nodes", list), "attack.cap": ("cap", int), "attack.params": ("attack_params", dict),
    "faults.dropout": ("dropout", float), "faults.rejoin": ("rejoin", float), "faults.loss": ("loss", float),
    "faults.latency": ("latency", float), "faults.stragglers": ("stragglers", int),
    "faults.partition": ("partition_rounds", list), "faults.deadline": ("deadline", float),
    "round.codec": ("codec", str), "round.compression": ("compression", dict), "round.max_message_mb": ("max_message_mb", float),
    "privacy.mode": ("privacy", str), "privacy.noise_multiplier": ("noise_multiplier", float),
    "privacy.clip": ("clip", float), "privacy.delta": ("delta", float), "privacy.epsilon": ("epsilon", float),
    "privacy.accountant": ("accountant", str),
    "personalization.mode": ("personalization", str), "personalization.personal": ("personal", list),
    "personalization.lambda": ("ditto_lambda", float), "personalization.similarity": ("similarity", bool),
    "data.shift.offset": ("shift_offset", float), "data.shift.scale": ("shift_scale", float),
    "data.shift.rotation": ("shift_rotation", float), "data.shift.concept": ("shift_concept", int),
}
SWEEP_ALIASES = {"aggregator": "aggregation.rules", "rule": "aggregation.rules", "attack": "attack.kind",
                 "byzantine": "attack.byzantine", "topology": "topology.graph", "partition": "data.partition",
                 "placement": "attack.placement", "f": "aggregation.f", "alpha": "data.alpha",
                 "dataset": "data.dataset", "dropout": "faults.dropout", "loss": "faults.loss", "seed": "seed",
                 "rounds": "rounds", "engine": "engine", "lr": "train.lr", "local_steps": "train.local_steps",
                 "learner": "train.learner",
                 "privacy": "privacy.mode", "sigma": "privacy.noise_multiplier",
                 "noise_multiplier": "privacy.noise_multiplier", "clip": "privacy.clip", "eval_every": "eval_every",
                 "personalization": "personalization.mode", "mode": "personalization.mode",
                 "lambda": "personalization.lambda", "similarity": "personalization.similarity",
                 "offset": "data.shift.offset", "scale": "data.shift.scale", "rotation": "data.shift.rotation",
                 "concept": "data.shift.concept"}
ENGINES = ("auto", "protocol", "batched")
AUTO_PROTOCOL_NODES = 100  # engine = "auto": the protocol engine up to this many nodes, the batched one beyond


def _flatten(doc: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in doc.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and key not in ("data.options", "model.options", "aggregation.params", "attack.params",
                                                      "train.options", "round.compression"):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


MAX_SCENARIO_FILE = 1024 * 1024
MAX_ROUNDS = 1_000_000
MAX_SECONDS = 600.0  # simulated deadlines and latencies are real waits: at most 10 minutes
MAX_SEED = 2**32 - 1


def build(doc: dict, source: str = "") -> Scenario:
    sc = Scenario(source=source)
    for key, v in _flatten(doc).items():
        if key not in _FIELDS:
            raise ScenarioError(f"unknown scenario field {key!r:.80}; known: {', '.join(sorted(_FIELDS))}")
        attr, typ = _FIELDS[key]
        if typ is float and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        if not isinstance(v, typ) or (isinstance(v, bool) and typ is not bool):
            raise ScenarioError(f"{key} must be {typ.__name__}, got {v!r:.80}")
        if key == "aggregation.rule":
            v = [v]
        setattr(sc, attr, v)
    validate(sc)
    return sc


# attribute -> (field name, low, high): every number of a scenario has a range
_RANGES = {
    "seed": ("seed", 0, MAX_SEED), "rounds": ("rounds", 1, MAX_ROUNDS), "eval_every": ("eval_every", 0, MAX_ROUNDS),
    "alpha": ("data.alpha", 1e-6, 1e6), "holdout": ("data.holdout", 0.0, 0.99), "labels_per_shard": ("data.labels_per_shard", 1, 1 << 20),
    "local_steps": ("train.local_steps", 1, 1 << 31), "classes": ("model.classes", 2, 1_000_000), "batch_size": ("train.batch_size", 1, 1 << 20),
    "lr": ("train.lr", 1e-12, 1e6), "momentum": ("train.momentum", 0.0, 0.999999),
    "f": ("aggregation.f", 0, 1 << 20), "byzantine": ("attack.byzantine", 0.0, float(1 << 20)),
    "cap": ("attack.cap", 0, 1 << 20), "dropout": ("faults.dropout", 0.0, 0.999999),
    "rejoin": ("faults.rejoin", 0.0, 1.0), "loss": ("faults.loss", 0.0, 0.999999),
    "latency": ("faults.latency", 0.0, MAX_SECONDS), "stragglers": ("faults.stragglers", 0, 1 << 20),
    "deadline": ("faults.deadline", 1e-3, MAX_SECONDS), "max_message_mb": ("round.max_message_mb", 1e-3, 4096.0),
    "shift_offset": ("data.shift.offset", 0.0, 1e3), "shift_scale": ("data.shift.scale", 0.0, 10.0),
    "shift_rotation": ("data.shift.rotation", 0.0, math.pi), "shift_concept": ("data.shift.concept", 0, 1 << 20),
}


def _num(v) -> str:
    return f"{v:,}" if isinstance(v, int) else f"{v:g}"


def _check_ranges(sc: Scenario) -> None:
    for attr, (name, low, high) in _RANGES.items():
        v = getattr(sc, attr)
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise ScenarioError(f"{name} must be a number, got {v!r:.80}")
        if isinstance(v, float) and not math.isfinite(v):
            raise ScenarioError(f"{name} must be a finite number, got {v}")
        if v < low:
            raise ScenarioError(f"{name} must be >= {_num(low)}, got {v}")
        if v > high:
            raise ScenarioError(f"{name} must be at most {_num(high)}, got {v}")
    pr = sc.partition_rounds
    if pr and (len(pr) != 2 or not all(isinstance(r, int) and not isinstance(r, bool) and r >= 0 for r in pr)
               or pr[0] > pr[1]):
        raise ScenarioError(f"faults.partition must be [FIRST_ROUND, LAST_ROUND] (whole numbers >= 0), got {pr!r:.80}")


def _check_options(sc: Scenario) -> None:
    if sc.model in BUILTIN:
        try:
            check_builtin_options(sc.model, sc.model_options)
        except ConfigError as exc:
            raise ScenarioError(str(exc)) from None
    elif ":" not in sc.model:
        raise ScenarioError(f"model.name must be {', '.join(BUILTIN)} or package.module:factory, got {sc.model!r:.80}")
    user.check(sc)
    if sc.dataset == "digits" and sc.data_options:
        raise ScenarioError(f"data.options: {', '.join(sorted(sc.data_options))} unused: the digits data set "
                            "takes no options")
    for r in sc.rules:
        try:
            check_aggregation_params(r, sc.rule_params)
        except ConfigError as exc:
            raise ScenarioError(str(exc)) from None
    if sc.codec not in FLOAT_CODECS:
        raise ScenarioError(f"round.codec must be one of {', '.join(FLOAT_CODECS)}, got {sc.codec!r:.80}")
    # imported here: sim.compression imports the batched engine, which imports this module
    from .compression import check as check_compression

    check_compression(sc)


def _check_personalization(sc: Scenario) -> None:
    from . import personalize

    pers = personalize.of(sc)
    if pers.mode != "shared" or pers.similarity:
        if sc.compression:
            raise ScenarioError("[personalization] is not modelled with round.compression; leave one of them out")
        if sc.privacy != "off":
            raise ScenarioError("[personalization] is not modelled with [privacy] in the simulator; leave one out")
    for rule in sc.rules:  # what a peer refuses (peer.config.parse.check_personalization), said for the scenario
        pre, name = parse_rule(rule)
        if pers.similarity and (pre or name == "secure_mean"):
            raise ScenarioError(f"personalization.similarity = true replaces the rule by the similarity mix: "
                                f"aggregation rule {rule!r} cannot go with it; use a plain rule such as \"median\"")
        if pers.mode == "local_head" and name == "secure_mean":
            raise ScenarioError("personalization.mode = \"local_head\" does not go with aggregation rule "
                                "\"secure_mean\" (its masks cover the whole model)")
    if sc.shift_concept > sc.classes:
        raise ScenarioError(f"data.shift.concept must be at most model.classes ({sc.classes}): each group "
                            f"relabels classes by its own shift, got {sc.shift_concept}")


def _check_graph(sc: Scenario) -> None:
    """What the topology allows: f, stragglers and attackers within its size and degrees."""
    try:
        graph = resolve(sc.topology, seed=sc.seed)
    except TopologyError as exc:
        raise ScenarioError(f"topology.graph: {exc}") from None
    n = graph.number_of_nodes()
    top_degree = max(d for _, d in graph.degree())
    if sc.dataset == "digits":
        from .datasets import digits_node_limit

        limit = digits_node_limit()
        if n > limit:
            raise ScenarioError(f"data.dataset = \"digits\" has {limit:,} training samples, fewer than the {n:,} "
                                f"nodes of {sc.topology}; for more nodes use a data set that scales: "
                                "\"synthetic\" (any number of nodes) or \"fashion_mnist\" (60,000 samples)")
    if sc.stragglers > n:
        raise ScenarioError(f"faults.stragglers must be at most the {n} nodes of {sc.topology}, got {sc.stragglers}")
    if sc.byzantine >= 1 and sc.byzantine > n:
        raise ScenarioError(f"attack.byzantine must be at most the {n} nodes of {sc.topology}, got {sc.byzantine:g}")
    if sc.f > top_degree:
        raise ScenarioError(f"aggregation.f must be at most {top_degree} (the largest degree of {sc.topology}: "
                            f"no node has more neighbours to distrust), got {sc.f}")
    for rule in sc.rules:
        if sc.f and REGISTRY[parse_rule(rule)[1]].robust:
            limit = max_byzantine(rule, top_degree)
            if sc.f > limit:
                raise ScenarioError(f"aggregation.f = {sc.f} is more than {rule} tolerates on {sc.topology}: at most "
                                    f"{max(limit, 0)} at the best-connected node (degree {top_degree}); "
                                    "lower f or use a denser graph")


def validate(sc: Scenario) -> None:
    def bad(field_: str, msg: str):
        raise ScenarioError(f"{field_} {msg}")

    _check_ranges(sc)
    if sc.dataset not in DATASETS and ":" not in sc.dataset:
        bad("data.dataset", f"must be one of {', '.join(DATASETS)} or package.module:loader, got {sc.dataset!r:.80}")
    if sc.partition not in ("iid", "dirichlet", "labels"):
        bad("data.partition", f"must be iid, dirichlet or labels, got {sc.partition!r:.80}")
    if not sc.rules:
        bad("aggregation.rules", "must name at least one rule")
    for r in sc.rules:
        try:
            parse_rule(r)
        except AggregationError as exc:
            bad("aggregation.rules", f": {exc}")
    if sc.attack not in ATTACKS:
        bad("attack.kind", f"must be one of {', '.join(ATTACKS)}, got {sc.attack!r:.80}")
    if sc.placement not in ("random", "degree", "chosen"):
        bad("attack.placement", f"must be random, degree or chosen, got {sc.placement!r:.80}")
    if sc.engine not in ENGINES:
        bad("engine", f"must be one of {', '.join(ENGINES)}, got {sc.engine!r:.80}")
    if sc.engine == "batched" and sc.attack not in PROTOCOL_ATTACKS:
        why = user.batched_refusal(sc)
        if why:
            bad("engine", f"= \"batched\": {why}")
    if sc.engine == "batched" and sc.attack in PROTOCOL_ATTACKS:
        bad("engine", f"= \"batched\" does not model protocol attacks (attack.kind = {sc.attack!r}: bytes on the "
                      "wire); use engine = \"protocol\"")
    if sc.weights not in ("uniform", "metropolis_hastings"):
        bad("aggregation.weights", f"must be uniform or metropolis_hastings, got {sc.weights!r:.80}")
    _check_options(sc)
    _check_personalization(sc)
    problem = check_privacy(privacy_settings(sc))
    if problem:
        raise ScenarioError(problem)
    _check_graph(sc)


def privacy_settings(sc: Scenario) -> PrivacySettings:
    """The scenario's [privacy] as every node's peer.toml would hold it."""
    return PrivacySettings(sc.privacy, sc.noise_multiplier, sc.clip, sc.delta, sc.epsilon, sc.accountant)


def load(path: str) -> Scenario:
    p = Path(path)
    try:
        doc = tomllib.loads(read_limited_text(p, MAX_SCENARIO_FILE, "scenario"))
    except FileReadError as exc:
        raise ScenarioError(str(exc)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{p}: not valid TOML: {exc}") from None
    except RecursionError:
        raise ScenarioError(f"{p}: not valid TOML: nested too deeply") from None
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
        key = SWEEP_ALIASES.get(key.strip(), key.strip())
        if key == "aggregation.rule":
            key = "aggregation.rules"
        if key not in _FIELDS or _FIELDS[key][1] in (list, dict) and key != "aggregation.rules":
            raise ScenarioError(f"--sweep: unknown key {item.partition('=')[0]!r}; use one of "
                                f"{', '.join(sorted(SWEEP_ALIASES))} or a field of the scenario file such as "
                                "attack.kind (lists and tables cannot be swept)")
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
                v = typ(raw) if typ in (int, float) else _boolean(k, raw) if typ is bool else raw
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


def _boolean(key: str, raw: str) -> bool:
    if raw.lower() not in ("true", "false"):
        raise ScenarioError(f"--sweep {key}: {raw!r} is not true or false")
    return raw.lower() == "true"


def engine_for(sc: Scenario, nodes: int, override: str | None = None) -> str:
    """The engine a run uses: the command line's, else the scenario's; "auto" picks the
    protocol engine for small graphs and protocol attacks, the batched one otherwise."""
    choice = override or sc.engine
    if choice not in ENGINES:
        raise ScenarioError(f"--engine must be one of {', '.join(ENGINES)}, got {choice!r:.80}")
    if choice == "batched" and sc.attack in PROTOCOL_ATTACKS:
        raise ScenarioError(f"engine batched does not model protocol attacks (attack.kind = {sc.attack!r}); "
                            "use the protocol engine")
    if choice == "batched":
        why = user.batched_refusal(sc)
        if why:
            raise ScenarioError(f"engine batched: {why}")
    if choice != "auto":
        if choice == "protocol" and sc.compression:
            raise ScenarioError("round.compression runs in the batched engine; use engine = \"batched\"")
        return choice
    if sc.compression:
        return "batched"
    if nodes <= AUTO_PROTOCOL_NODES or sc.attack in PROTOCOL_ATTACKS or user.batched_refusal(sc):
        return "protocol"
    return "batched"


EXAMPLE = '''\
# A gossipfl simulation scenario. Run it:   gossipfl sim run scenario.toml
# Sweep it:                                 gossipfl sim run scenario.toml --sweep aggregator=mean,median attack=none,alie
# Every field is optional; the value shown is the default unless the comment says otherwise.

name = "example"          # results go to results/NAME unless --out is given
seed = 0                  # one seed fixes graph, data split, placement, training and faults
rounds = 20               # gossip rounds (train, send, aggregate)
engine = "auto"           # "protocol" (real peers, signed messages, provenance logs), "batched" (one tensor for
                          # all nodes: thousands of nodes, no wire, no logs) or "auto" (protocol up to 100 nodes)
eval_every = 0            # batched engine: evaluate test accuracy every N rounds and the last (0: every round up
                          # to 200 nodes, about 10 times over the run beyond; every node always trains and aggregates)

[topology]
graph = "ws:16,6,0.2"     # ring, torus, grid, complete, star, regular, er, ws, ba, exp specs or a graph file

[data]
dataset = "digits"        # digits (1,527 training samples: at most that many nodes), fashion_mnist, synthetic
partition = "iid"         # iid, dirichlet (label skew alpha) or labels (labels_per_shard classes per node)
alpha = 0.5               # Dirichlet concentration: small = very non-IID
labels_per_shard = 2      # classes per node with partition = "labels"
holdout = 0.1             # fraction of each node's samples kept as its own held-out set (scored with 30 or more)
# options = { samples = 200 }   # data set options: synthetic takes samples, dim, alpha, beta;
                                # fashion_mnist takes limit, test_limit
# dataset = "mymodule:loader"  # your own loader (beside this file), as data.source in peer.toml
# test = "mymodule:held_out"    # a held-out set (x, y) every node is scored on

[model]
name = "mlp"              # mlp or cnn (built in), or package.module:factory
options = { hidden = [32] }

[train]
# learner = "mymodule:mse"  # your learner; a peer.learning.functional.Functional runs in both engines
local_steps = 5           # SGD steps per round
batch_size = 32
lr = 0.1
momentum = 0.0

[aggregation]
rules = ["median"]        # one run per rule: mean, median, trimmed_mean, krum, geomed, self_centered_clip,
                          # pre-steps joined with +: "nnm+trimmed_mean"
f = 1                     # Byzantine neighbours each rule must tolerate
weights = "uniform"       # or metropolis_hastings (rules with a weighted form: mean, geomed, ...)
# params = { tau = 1.0 }  # rule parameters

[attack]
kind = "none"             # none; model attacks sign_flip, gaussian, scaling, alie, ipm, dissensus; label_flip;
                          # protocol attacks forged, replay, wrong_round, wrong_network, oversized, non_finite
byzantine = 0             # attackers: a fraction (0.1) or a count (3)
placement = "random"      # random, degree (best-connected first) or chosen (attack.nodes)
cap = 0                   # > 0: no honest node gets more than this many Byzantine neighbours
# nodes = [0, 5]          # with placement = "chosen"
# params = { scale = 1.0 }   # attack parameters (sign_flip scale, gaussian sigma, alie z, ipm eps, ...)

[faults]
dropout = 0.0             # per round, an honest node goes offline with this probability
rejoin = 0.5              # per round, an offline node comes back with this probability
loss = 0.0                # each message is lost with this probability
latency = 0.0             # mean message delay in seconds (exponential); later than the deadline = missed
stragglers = 0            # the last N nodes are slow: their updates miss the deadline
partition = []            # [FIRST, LAST]: rounds during which the two halves of the nodes cannot talk
deadline = 0.2            # seconds a node waits for its neighbours each round (real time in the protocol engine)

[round]
codec = "raw-f32"         # update encoding on the wire
max_message_mb = 4.0
# compressed gossip (batched engine; README, Compressed gossip): uncomment the table
# [round.compression]
# compressor = "topk"     # topk, randk or none
# fraction = 0.01         # or count = N: entries kept per message
# values = "f32"          # f32, f16 or int8
# error_feedback = true
# gamma = 0.2             # CHOCO's step size

[privacy]
mode = "off"              # off; update (clip each node's model change to `clip`, add Gaussian noise of std
                          # noise_multiplier * clip); record (DP-SGD in local training)
noise_multiplier = 1.0    # sigma (sweep it: --sweep sigma=0.5,1,2; the summary reports epsilon per run)
clip = 1.0
delta = 1e-5
# epsilon = 8.0           # a budget per node: a node stops sending once another round would exceed it
accountant = "rdp"        # rdp or pld (dp-accounting)

[personalization]         # gateways that see different worlds (README, Personalization)
mode = "shared"           # shared (one fleet model), local_head (the parameters named in `personal` never
                          # leave a node) or ditto (a personal model beside the fleet's, pulled towards it)
personal = ["head.*"]     # local_head: fnmatch patterns over parameter names (built-in mlp: "3.*" is the last layer)
lambda = 0.1              # ditto: the pull towards the fleet model
similarity = false        # mix neighbours by similarity to the own model (clipped by f: a Byzantine neighbour
                          # stays bounded) instead of the rule

# [data.shift]            # heterogeneous gateways beyond label skew (sim.shift), per node from (seed, node)
# offset = 0.5            # feature shift: std of each node's per-feature offset
# scale = 0.3             # std of the log of each node's per-feature gain
# rotation = 0.5          # largest angle (radians) of each node's rotation in random feature planes
# concept = 2             # concept shift: groups of nodes, group k relabels class y as (y + k) mod classes
'''
