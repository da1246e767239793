"""peer.toml: every field validated on load, errors name the field and what is allowed."""

from __future__ import annotations

import math
import os
import tomllib
from dataclasses import MISSING, Field, fields
from pathlib import Path
from typing import Any

from aggregation import PRE_REGISTRY, REGISTRY, AggregationError, parse_rule
from gossip.codecs import FLOAT_CODECS
from gossip.envelope import MAX_NETWORK_ID_LEN
from gossip.errors import PeerIdError
from gossip.files import FileReadError, read_limited_text
from gossip.identity import check_peer_id
from privacy.settings import ACCOUNTANTS, MODES, PrivacySettings, check_privacy

from ..errors import ConfigError
from ..learning.learner import check_learner
from ..learning.model import (
    BUILTIN,
    check_builtin_options,
    check_call,
    check_model_factory,
    load_object,
)
from ..learning.personal import parse_personalization
from ..transports import KINDS, kind_of, names
from . import checks
from .checks import SEED, between, fraction, message_mb, non_negative, positive, seconds
from .settings import (  # noqa: F401  (the dataclasses are read through peer.config.parse too)
    BUILTIN_SOURCES,
    DEFAULT_DATA_DIR,
    LOADER_ARGUMENTS,
    SECURE_BOUND,
    SECURE_THRESHOLDS,
    AggregationConfig,
    DataConfig,
    MetricsConfig,
    ModelConfig,
    Neighbour,
    PeerConfig,
    RoundConfig,
    TrainConfig,
    TransportConfig,
    _host_port,
    split_host_port,
)

MAX_CONFIG_FILE = 1024 * 1024
MAX_LEAD = 100
MAX_INBOX = 64


class _Table:
    """Typed access to one TOML table that remembers its path for error messages."""

    def __init__(self, data: dict, path: str):
        self.data, self.path = data, path
        self.used: set[str] = set()

    def name(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def get(self, key: str, typ, default=..., allowed=None, check=None, what: str = ""):
        self.used.add(key)
        name = self.name(key)
        if key not in self.data:
            if default is ...:
                raise ConfigError(f"{name} is required ({what or typ.__name__})")
            return default
        v = self.data[key]
        if typ is float and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        if not isinstance(v, typ) or (isinstance(v, bool) and typ is not bool):
            raise ConfigError(f"{name} must be {what or typ.__name__}, got {v!r:.80}")
        if typ is float and not math.isfinite(v):
            raise ConfigError(f"{name} must be a finite number, got {v!r}")
        if allowed is not None and v not in allowed:
            raise ConfigError(f"{name} must be one of {', '.join(map(str, allowed))}, got {v!r:.80}")
        if check is not None:
            problem = check(v)
            if problem:
                raise ConfigError(f"{name} {problem}, got {v!r:.80}")
        return v

    def table(self, key: str) -> _Table:
        self.used.add(key)
        v = self.data.get(key, {})
        name = self.name(key)
        if not isinstance(v, dict):
            raise ConfigError(f"[{name}] must be a table")
        return _Table(v, name)

    def section(self, cls, spec: dict[str, tuple]) -> Any:
        """This table as dataclass `cls`: `spec` maps each field to (type, get() keywords);
        defaults come from `cls` itself, so each default lives in one place."""
        values = {}
        for f in fields(cls):
            if f.name in spec:
                typ, kw = spec[f.name]
                values[f.name] = self.get(f.name, typ, default_of(f), **kw)
        assert set(spec) <= set(values), set(spec) - set(values)
        self.done()
        return cls(**values)

    def done(self) -> None:
        extra = sorted(set(self.data) - self.used)
        if extra:
            where = f"[{self.path}]" if self.path else "the top level"
            raise ConfigError(f"unknown field(s) {', '.join(extra)} in {where}")


def default_of(f: Field):
    """A dataclass field's default (a fresh copy for a factory); `...` if it has none."""
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return ...


def _network_id(v):
    if not v or len(v.encode()) > MAX_NETWORK_ID_LEN or not v.isprintable():
        return f"must be 1 to {MAX_NETWORK_ID_LEN} bytes of printable characters (it is signed into every update)"
    return None


def _neighbours(net: _Table) -> list[Neighbour]:
    neighbours: list[Neighbour] = []
    raw = net.get("neighbours", list, [], what="a list of PeerIds or {id, addr, name, degree} tables")
    for i, item in enumerate(raw):
        where = f"network.neighbours[{i}]"
        if isinstance(item, str):
            item = {"id": item}
        if not isinstance(item, dict):
            raise ConfigError(f"{where} must be a PeerId string or a table")
        t = _Table(item, where)
        nid = t.get("id", str)
        try:
            check_peer_id(nid)
        except PeerIdError as exc:
            raise ConfigError(f"{where}.id: {exc}") from None
        nb = t.section(Neighbour, {"id": (str, {}), "addr": (str, {"check": checks.multiaddr}),
                                   "name": (str, {}), "degree": (int, {"check": between(1, 1 << 20)}),
                                   "group": (list, {"what": "a list of PeerIds (the neighbour's neighbours)"})})
        if nb.group is not None:
            nb.group = _group(nb.group, f"{where}.group")
        if any(n.id == nid for n in neighbours):
            raise ConfigError(f"{where}.id: {nid} is listed twice")
        neighbours.append(nb)
    return neighbours


def _group(items: list, where: str) -> list[str]:
    if len(items) > 1 << 16:
        raise ConfigError(f"{where} lists more than {1 << 16} peers")
    for j, pid in enumerate(items):
        try:
            check_peer_id(pid if isinstance(pid, str) else "")
        except PeerIdError as exc:
            raise ConfigError(f"{where}[{j}]: {exc}") from None
    if len(set(items)) != len(items):
        raise ConfigError(f"{where} lists a peer twice")
    return list(items)


def check_secure_mean(agg: AggregationConfig, neighbours: list[Neighbour]) -> None:
    """secure_mean hides each neighbour's update, so everything that needs one is refused
    with the reason; a peer needs two neighbours (a group of one hides nothing)."""
    pre, name = parse_rule(agg.rule)
    if name != "secure_mean":
        return
    if pre:
        raise ConfigError(f"aggregation.rule: {'+'.join(pre)} cannot come before secure_mean: a pre-step needs each "
                          "neighbour's update, which secure aggregation hides (use secure_mean alone, or a robust "
                          "rule without secure aggregation)")
    if agg.f > 0:
        raise ConfigError(f"aggregation.f must be 0 with secure_mean, got {agg.f}: secure aggregation trades "
                          "per-update robustness for privacy against curious neighbours and tolerates no Byzantine "
                          "neighbour (pick a robust rule such as trimmed_mean where neighbours may lie)")
    if agg.weights == "metropolis_hastings":
        raise ConfigError("aggregation.weights must be uniform with secure_mean: the masked sum has no weighted form")
    bound = agg.params.get("bound", SECURE_BOUND)
    if isinstance(bound, bool) or not isinstance(bound, int | float) or not 1e-30 <= bound <= 1e30:
        raise ConfigError(f"aggregation.params.bound must be a number in [1e-30, 1e30] (the clip per value), "
                          f"got {bound!r:.40}")
    threshold = agg.params.get("threshold", "majority")
    if threshold not in SECURE_THRESHOLDS:
        raise ConfigError(f"aggregation.params.threshold must be one of {', '.join(SECURE_THRESHOLDS)} (how many of "
                          f"a group must answer; README \"Privacy\"), got {threshold!r:.40}")
    if len(neighbours) < 2:
        raise ConfigError(f"secure_mean needs at least 2 neighbours (a sum of one update hides nothing), this peer "
                          f"has {len(neighbours)}")
    for i, nb in enumerate(neighbours):
        if nb.group is None:
            raise ConfigError(f"network.neighbours[{i}].group is required with secure_mean: the neighbour's own "
                              "neighbours, the group whose masks cancel (`topology plan` writes it)")


def _transport(t: _Table, network: str, base: Path) -> TransportConfig:
    """[transport] as its kind declares it (peer.transports). A field of another kind is
    checked by that kind's rules and left unused (a config whose kind was switched still
    loads; a bad value is still an error)."""
    kind = kind_of(t.get("kind", str, TransportConfig.kind, allowed=names()))
    for other in KINDS.values():
        for key, (typ, kw) in other.schema.items():
            if other is not kind and key not in kind.schema and key in t.data:
                t.get(key, typ, **kw)
    transport = t.section(kind.config, {"kind": (str, {}), "max_upload_kbps": (float, {"check": non_negative}),
                                        **kind.schema})
    kind.check(transport, network, base)
    return transport


def _model(m: _Table, base: Path) -> ModelConfig:
    model = m.section(ModelConfig, {"name": (str, {}), "classes": (int, {"check": between(2, 1_000_000)}),
                                    "options": (dict, {}), "seed": SEED})
    if model.name in BUILTIN:
        check_builtin_options(model.name, model.options)
    elif ":" not in model.name:
        raise ConfigError(f"model.name must be {', '.join(BUILTIN)} or package.module:factory, got {model.name!r}")
    else:
        check_model_factory(model.name, model.options, base)
    return model


def _data(d: _Table, base: Path) -> DataConfig:
    data = d.section(DataConfig, {
        "source": (str, {}), "shard": (int, {"check": non_negative}), "shards": (int, {"check": between(1, 1 << 20)}),
        "partition": (str, {"allowed": ("iid", "dirichlet", "labels")}), "alpha": (float, {"check": positive}),
        "labels_per_shard": (int, {"check": between(1, 1 << 20)}), "path": (str, {}),
        "label_column": (str, {}), "x_key": (str, {}), "y_key": (str, {}), "holdout": (float, {"check": fraction}),
        "seed": SEED, "options": (dict, {})})
    if data.shard >= data.shards:
        raise ConfigError(f"data.shard must be below data.shards = {data.shards}, got {data.shard}")
    if data.source in BUILTIN_SOURCES:
        if data.options:
            raise ConfigError(f"data.options: {', '.join(sorted(data.options))} unused: data.source = "
                              f"{data.source!r} takes no options (they are keyword arguments of a "
                              "package.module:loader source)")
        if data.source != "digits":
            if not data.path:
                raise ConfigError(f"data.path is required when data.source = {data.source!r}")
            data.path = str(base / data.path)
    elif ":" in data.source:
        loader = load_object(data.source, "data.source", base)
        check_call(loader, "data.options", data.options, fixed=LOADER_ARGUMENTS)
    else:
        raise ConfigError(f"data.source must be digits, npz, csv or package.module:loader, got {data.source!r}")
    return data


def check_aggregation_params(rule: str, params: dict) -> None:
    """Every key of aggregation.params is a parameter that `rule` or one of its pre-steps
    declares (an unknown one would make every aggregation fail)."""
    pre, name = parse_rule(rule)
    known = {p for r in [REGISTRY[name], *(PRE_REGISTRY[s] for s in pre)] for p in r.params}
    if "f" in params:
        raise ConfigError("aggregation.params.f: set aggregation.f instead")
    unknown = sorted(set(params) - known)
    if unknown:
        allowed = sorted(known - {"f"})
        raise ConfigError(f"aggregation.params.{unknown[0]}: {rule} takes no such parameter; "
                          f"allowed: {', '.join(allowed) or 'none'}")


def parse_privacy(t: _Table) -> PrivacySettings:
    """[privacy] (peer.toml and scenarios): `epsilon = inf` (TOML) or leaving it out means no budget."""
    budget = t.data.get("epsilon")
    if isinstance(budget, float) and budget == math.inf:
        t.data = {k: v for k, v in t.data.items() if k != "epsilon"}
    s = t.section(PrivacySettings, {
        "mode": (str, {"allowed": MODES}), "noise_multiplier": (float, {"check": non_negative}),
        "clip": (float, {"check": positive}), "delta": (float, {"check": lambda v: None if 0 < v < 1 else
                                                                "must be between 0 and 1 (exclusive)"}),
        "epsilon": (float, {"check": positive}), "accountant": (str, {"allowed": ACCOUNTANTS})})
    problem = check_privacy(s)
    if problem:
        raise ConfigError(problem)
    return s


def check_personalization(p, agg: AggregationConfig) -> None:
    """What personalization cannot be combined with in a peer."""
    pre, rule = parse_rule(agg.rule)
    if p.similarity and (pre or rule == "secure_mean"):
        raise ConfigError(f"personalization.similarity = true mixes each neighbour's update by its distance to the own "
                          f"model, so aggregation.rule = {agg.rule!r} cannot go with it ("
                          + ("secure aggregation hides each update" if rule == "secure_mean" else
                             "the similarity mix replaces the rule and its pre-steps")
                          + "); use a plain rule such as \"median\" (its f bounds the Byzantine neighbours)")
    if p.mode == "local_head" and rule == "secure_mean":
        raise ConfigError("personalization.mode = \"local_head\" is not supported with aggregation.rule = "
                          "\"secure_mean\" yet (its masks cover the whole model); use a robust rule, or mode = "
                          "\"ditto\" (the fleet model is then the whole model)")


def parse_config(doc: dict, base: Path) -> PeerConfig:
    top = _Table(doc, "")
    name = top.get("name", str, "", check=lambda v: None if len(v) <= 128 and v.isprintable() else
                   "must be at most 128 printable characters")
    ident = top.table("identity")
    key = base / ident.get("key", str, what="the path of the peer's key file")
    ident.done()

    net = top.table("network")
    network = net.get("id", str, what="a non-empty network id", check=_network_id)
    trust = base / net.get("trust", str, what="the path of the trust list")
    neighbours = _neighbours(net)
    net.done()

    transport = _transport(top.table("transport"), network, base)

    model = _model(top.table("model"), base)
    data = _data(top.table("data"), base)

    train = top.table("train").section(TrainConfig, {
        "local_steps": (int, {"check": between(1, 1 << 31)}), "epochs": (float, {"check": between(0, 1e6)}),
        "batch_size": (int, {"check": between(1, 1 << 20)}), "lr": (float, {"check": positive}),
        "momentum": (float, {"check": fraction}), "weight_decay": (float, {"check": non_negative}),
        "learner": (str, {"check": lambda v: None if v else "must not be empty"}), "options": (dict, {})})
    check_learner(train.learner, train.options, base)

    a = top.table("aggregation")
    agg = a.section(AggregationConfig, {
        "rule": (str, {}), "f": (int, {"check": between(0, 1 << 20)}),
        "weights": (str, {"allowed": ("uniform", "metropolis_hastings")}), "params": (dict, {})})
    try:
        check_aggregation_params(agg.rule, agg.params)
    except AggregationError as exc:
        raise ConfigError(f"aggregation.rule: {exc}") from None
    check_secure_mean(agg, neighbours)
    if neighbours and agg.f > len(neighbours):
        raise ConfigError(f"aggregation.f must be at most the number of neighbours ({len(neighbours)}), got {agg.f}")

    rnd = top.table("round").section(RoundConfig, {
        "deadline": (float, {"check": seconds(True)}), "quorum": (int, {"check": non_negative}),
        "rounds": (int, {"check": non_negative}), "max_lead": (int, {"check": between(0, MAX_LEAD)}),
        "codec": (str, {"allowed": FLOAT_CODECS}), "max_message_mb": (float, {"check": message_mb}),
        "inbox_per_neighbour": (int, {"check": between(1, MAX_INBOX)}), "train_in_thread": (bool, {}),
        "interval": (float, {"check": seconds(False)})})
    if neighbours and rnd.quorum > len(neighbours):
        raise ConfigError(f"round.quorum must be at most the number of neighbours ({len(neighbours)}), "
                          f"got {rnd.quorum}")

    metrics = top.table("metrics").section(MetricsConfig, {"listen": (str, {"check": _host_port}),
                                                           "share_learning_metrics": (bool, {})})
    privacy = parse_privacy(top.table("privacy"))
    pers = top.table("personalization")
    personalization = parse_personalization(pers.data, pers.path, similarity_supported=True)
    pers.used.update(pers.data)
    pers.done()
    check_personalization(personalization, agg)

    s = top.table("storage")
    data_dir = base / s.get("dir", str, DEFAULT_DATA_DIR, check=lambda v: None if v else "must not be empty")
    s.done()
    top.done()
    return PeerConfig(key=key, network=network, trust=trust, neighbours=neighbours, data_dir=data_dir,
                      transport=transport, model=model, data=data, train=train, aggregation=agg, round=rnd,
                      metrics=metrics, privacy=privacy, personalization=personalization, name=name)


def load_config(path: str | os.PathLike) -> PeerConfig:
    path = Path(path)
    try:
        text = read_limited_text(path, MAX_CONFIG_FILE, "config")
    except FileReadError as exc:
        hint = " (write one with `gossipfl peer init`)" if not path.exists() else ""
        raise ConfigError(f"{exc}{hint}") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid TOML: nested too deeply") from None
    try:
        cfg = parse_config(doc, path.resolve().parent)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    cfg.source = path
    return cfg
