"""peer.toml: every field validated on load, errors name the field and what is allowed."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aggregation import AggregationError, parse_rule
from gossip.codecs import CODECS
from gossip.errors import PeerIdError
from gossip.identity import check_peer_id

from .errors import ConfigError
from .training import TrainConfig

TRANSPORTS = ("memory", "libp2p", "mqtt")


@dataclass
class Neighbour:
    id: str
    addr: str | None = None  # libp2p multiaddr (with or without /p2p/ID); unused for memory and mqtt
    name: str | None = None
    degree: int | None = None  # known from the plan: used for Metropolis-Hastings weights


@dataclass
class TransportConfig:
    kind: str = "memory"
    listen: list[str] = field(default_factory=lambda: ["/ip4/127.0.0.1/tcp/0"])
    mdns: bool = False
    # mqtt
    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: str | None = None
    tls: bool = False
    ca_file: str | None = None
    topic_prefix: str = "gossipfl"
    status: bool = True


@dataclass
class DataConfig:
    source: str = "digits"  # digits | npz | csv | package.module:loader
    shard: int = 0
    shards: int = 1
    partition: str = "iid"
    alpha: float = 0.5
    labels_per_shard: int = 2
    path: str | None = None
    label_column: str = "label"
    x_key: str = "x"
    y_key: str = "y"
    holdout: float = 0.2
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)  # keyword arguments for a loader


@dataclass
class ModelConfig:
    name: str = "mlp"
    classes: int = 10
    options: dict[str, Any] = field(default_factory=dict)
    seed: int = 0


@dataclass
class AggregationConfig:
    rule: str = "median"
    f: int = 1
    weights: str = "uniform"  # uniform | metropolis_hastings
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class RoundConfig:
    deadline: float = 10.0
    quorum: int = 0  # 0: wait for every neighbour (or the deadline)
    rounds: int = 0  # 0: run until stopped
    max_lead: int = 2
    codec: str = "raw-f32"
    max_message_mb: float = 64.0
    inbox_per_neighbour: int = 4
    train_in_thread: bool = True
    interval: float = 0.0  # minimum seconds from one round's start to the next (pacing)


@dataclass
class PeerConfig:
    key: Path
    network: str
    trust: Path
    neighbours: list[Neighbour]
    data_dir: Path
    transport: TransportConfig = field(default_factory=TransportConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    aggregation: AggregationConfig = field(default_factory=AggregationConfig)
    round: RoundConfig = field(default_factory=RoundConfig)
    name: str = ""
    source: Path | None = None


class _Table:
    """Typed access to one TOML table that remembers its path for error messages."""

    def __init__(self, data: dict, path: str):
        self.data, self.path, self.used = data, path, set()

    def get(self, key: str, typ, default=..., allowed=None, check=None, what: str = ""):
        self.used.add(key)
        name = f"{self.path}.{key}" if self.path else key
        if key not in self.data:
            if default is ...:
                raise ConfigError(f"{name} is required ({what or typ.__name__})")
            return default
        v = self.data[key]
        if typ is float and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        if not isinstance(v, typ) or (isinstance(v, bool) and typ is not bool):
            raise ConfigError(f"{name} must be {what or typ.__name__}, got {v!r}")
        if allowed is not None and v not in allowed:
            raise ConfigError(f"{name} must be one of {', '.join(map(str, allowed))}, got {v!r}")
        if check is not None:
            problem = check(v)
            if problem:
                raise ConfigError(f"{name} {problem}, got {v!r}")
        return v

    def table(self, key: str) -> _Table:
        self.used.add(key)
        v = self.data.get(key, {})
        name = f"{self.path}.{key}" if self.path else key
        if not isinstance(v, dict):
            raise ConfigError(f"[{name}] must be a table")
        return _Table(v, name)

    def done(self) -> None:
        extra = sorted(set(self.data) - self.used)
        if extra:
            where = f"[{self.path}]" if self.path else "the top level"
            raise ConfigError(f"unknown field(s) {', '.join(extra)} in {where}")


def _positive(v):
    return None if v > 0 else "must be > 0"


def _non_negative(v):
    return None if v >= 0 else "must be >= 0"


def parse_config(doc: dict, base: Path) -> PeerConfig:
    top = _Table(doc, "")
    name = top.get("name", str, "")
    ident = top.table("identity")
    key = base / ident.get("key", str, what="the path of the peer's key file")
    ident.done()

    net = top.table("network")
    network = net.get("id", str, what="a non-empty network id", check=lambda v: None if v else "must not be empty")
    trust = base / net.get("trust", str, what="the path of the trust list")
    neighbours = []
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
        nb = Neighbour(nid, t.get("addr", str, None), t.get("name", str, None),
                       t.get("degree", int, None, check=_non_negative))
        t.done()
        if any(n.id == nid for n in neighbours):
            raise ConfigError(f"{where}.id: {nid} is listed twice")
        neighbours.append(nb)
    net.done()

    tr = top.table("transport")
    transport = TransportConfig(
        kind=tr.get("kind", str, "memory", allowed=TRANSPORTS),
        listen=tr.get("listen", list, ["/ip4/127.0.0.1/tcp/0"]),
        mdns=tr.get("mdns", bool, False),
        host=tr.get("host", str, "127.0.0.1"),
        port=tr.get("port", int, 1883, check=lambda v: None if 0 < v < 65536 else "must be a TCP port"),
        username=tr.get("username", str, None), password=tr.get("password", str, None),
        tls=tr.get("tls", bool, False), ca_file=tr.get("ca_file", str, None),
        topic_prefix=tr.get("topic_prefix", str, "gossipfl"), status=tr.get("status", bool, True))
    if not all(isinstance(a, str) and a.startswith("/") for a in transport.listen):
        raise ConfigError(f"transport.listen must be multiaddr strings like /ip4/0.0.0.0/tcp/4001, got {transport.listen!r}")
    tr.done()

    m = top.table("model")
    model = ModelConfig(m.get("name", str, "mlp"), m.get("classes", int, 10, check=_positive),
                        m.get("options", dict, {}), m.get("seed", int, 0))
    m.done()

    d = top.table("data")
    data = DataConfig(
        source=d.get("source", str, "digits"), shard=d.get("shard", int, 0, check=_non_negative),
        shards=d.get("shards", int, 1, check=_positive),
        partition=d.get("partition", str, "iid", allowed=("iid", "dirichlet", "labels")),
        alpha=d.get("alpha", float, 0.5, check=_positive),
        labels_per_shard=d.get("labels_per_shard", int, 2, check=_positive),
        path=d.get("path", str, None), label_column=d.get("label_column", str, "label"),
        x_key=d.get("x_key", str, "x"), y_key=d.get("y_key", str, "y"),
        holdout=d.get("holdout", float, 0.2, check=lambda v: None if 0 <= v < 1 else "must be in [0, 1)"),
        seed=d.get("seed", int, 0), options=d.get("options", dict, {}))
    if data.shard >= data.shards:
        raise ConfigError(f"data.shard must be below data.shards = {data.shards}, got {data.shard}")
    if data.source in ("npz", "csv"):
        if not data.path:
            raise ConfigError(f"data.path is required when data.source = {data.source!r}")
        data.path = str(base / data.path)
    elif data.source != "digits" and ":" not in data.source:
        raise ConfigError(f"data.source must be digits, npz, csv or package.module:loader, got {data.source!r}")
    d.done()

    t = top.table("train")
    train = TrainConfig(
        local_steps=t.get("local_steps", int, 10, check=_positive), epochs=t.get("epochs", float, 0.0, check=_non_negative),
        batch_size=t.get("batch_size", int, 32, check=_positive), lr=t.get("lr", float, 0.05, check=_positive),
        momentum=t.get("momentum", float, 0.0, check=lambda v: None if 0 <= v < 1 else "must be in [0, 1)"),
        weight_decay=t.get("weight_decay", float, 0.0, check=_non_negative))
    t.done()

    a = top.table("aggregation")
    agg = AggregationConfig(a.get("rule", str, "median"), a.get("f", int, 1, check=_non_negative),
                            a.get("weights", str, "uniform", allowed=("uniform", "metropolis_hastings")),
                            a.get("params", dict, {}))
    try:
        parse_rule(agg.rule)
    except AggregationError as exc:
        raise ConfigError(f"aggregation.rule: {exc}") from None
    a.done()

    r = top.table("round")
    rnd = RoundConfig(
        deadline=r.get("deadline", float, 10.0, check=_positive), quorum=r.get("quorum", int, 0, check=_non_negative),
        rounds=r.get("rounds", int, 0, check=_non_negative), max_lead=r.get("max_lead", int, 2, check=_non_negative),
        codec=r.get("codec", str, "raw-f32", allowed=CODECS),
        max_message_mb=r.get("max_message_mb", float, 64.0, check=_positive),
        inbox_per_neighbour=r.get("inbox_per_neighbour", int, 4, check=_positive),
        train_in_thread=r.get("train_in_thread", bool, True),
        interval=r.get("interval", float, 0.0, check=_non_negative))
    r.done()

    s = top.table("storage")
    data_dir = base / s.get("dir", str, "peer-data")
    s.done()
    top.done()
    return PeerConfig(key=key, network=network, trust=trust, neighbours=neighbours, data_dir=data_dir,
                      transport=transport, model=model, data=data, train=train, aggregation=agg, round=rnd,
                      name=name)


def load_config(path: str | os.PathLike) -> PeerConfig:
    path = Path(path)
    try:
        text = path.read_text("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config {path} not found (write one with `gossipfl peer init`)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    try:
        cfg = parse_config(doc, path.resolve().parent)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    cfg.source = path
    return cfg


EXAMPLE = '''\
# gossipfl peer configuration. Paths are relative to this file.
name = "gateway-1"

[identity]
key = "peer.key"                 # Ed25519 key, mode 0600 (gossipfl keygen --out peer.key)

[network]
id = "my-network"                # peers only accept updates for their own network id
trust = "trust.toml"             # PeerIds allowed in the network
# neighbours: PeerIds, or tables with the address to dial and the neighbour's degree
neighbours = [
    # { id = "12D3KooW...", addr = "/ip4/10.0.0.2/tcp/4001", degree = 4 },
]

[transport]
kind = "libp2p"                  # libp2p | mqtt | memory (memory: only inside one process)
listen = ["/ip4/0.0.0.0/tcp/4001"]
mdns = false                     # also discover neighbours on the LAN
# for kind = "mqtt":
# host = "broker.example"
# port = 1883
# username = "..."
# password = "..."
# tls = false
# topic_prefix = "gossipfl"

[model]
name = "mlp"                     # mlp | cnn | package.module:factory
classes = 10
options = { hidden = [32] }

[data]
source = "digits"                # digits | npz | csv | package.module:loader
shard = 0                        # this peer's shard of the demo data ...
shards = 8                       # ... out of this many
partition = "iid"                # iid | dirichlet (alpha) | labels (labels_per_shard)
holdout = 0.2                    # fraction kept for local evaluation

[train]
local_steps = 20
batch_size = 32
lr = 0.05
momentum = 0.0

[aggregation]
rule = "median"                  # see `gossipfl rules`; pre-steps compose: "nnm+krum"
f = 1                            # Byzantine neighbours to tolerate
weights = "uniform"              # uniform | metropolis_hastings

[round]
deadline = 10.0                  # seconds to wait for neighbours each round
quorum = 0                       # proceed once this many arrived (0: all)
rounds = 0                       # stop after this many rounds (0: run until stopped)
interval = 0.0                   # at least this many seconds between round starts (pacing)
codec = "raw-f32"                # raw-f32 | f16 | int8

[storage]
dir = "peer-data"                # checkpoints and the provenance log
'''
