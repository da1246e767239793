"""What a peer.toml holds, as dataclasses with their defaults: the one place each default
lives (peer.config.parse parses into them; `peer init`'s example and plans are written from them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from privacy.settings import PrivacySettings

from ..learning.personal import Personalization

BUILTIN_SOURCES = ("digits", "npz", "csv")
DEFAULT_DATA_DIR = "peer-data"
LOADER_ARGUMENTS = ("shard", "shards", "seed")  # what the peer passes every package.module:loader


@dataclass
class Neighbour:
    id: str
    addr: str | None = None  # libp2p multiaddr (with or without /p2p/ID); unused for memory and mqtt
    name: str | None = None
    degree: int | None = None  # known from the plan: used for Metropolis-Hastings weights
    group: list[str] | None = None  # secure_mean: the neighbour's own neighbours (its group G), from the plan


@dataclass
class TransportConfig:
    """[transport]: `kind` picks the declaration (peer.transports) whose subclass of this holds
    the kind's own fields (libp2p: listen, mdns; mqtt: host, port, ...); memory has none."""

    kind: str = "memory"
    max_upload_kbps: float = 0.0  # every kind: the outbox paces what it sends to this (kbit/s; 0: no limit)


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


SECURE_BOUND = 4.0  # secure_mean's clip per value: model parameters rarely leave [-4, 4] (aggregation.secure)
SECURE_THRESHOLDS = ("majority", "two_thirds")  # secure_mean's t: peer.runtime.secagg_exchange.threshold_for


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
    rounds: int = 0  # the round to stop at: the peer stops when its round reaches it (0: run until stopped)
    max_lead: int = 2
    codec: str = "raw-f32"
    max_message_mb: float | None = None  # None: derived from the model's update size and the codec
    inbox_per_neighbour: int = 4
    train_in_thread: bool = True
    interval: float = 0.0  # minimum seconds from one round's start to the next (pacing)

    def reached(self, round: int) -> bool:
        """Whether a peer at `round` is done: `rounds` counts from round 0, not from a restart
        (a peer resumed or caught up at round 7 of rounds = 10 runs 3 more)."""
        return self.rounds > 0 and round >= self.rounds


@dataclass
class TrainConfig:
    local_steps: int = 10
    epochs: float = 0.0  # > 0: train this many passes instead of local_steps
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.0
    weight_decay: float = 0.0
    learner: str = "classification"  # a built-in learner or package.module:factory
    options: dict[str, Any] = field(default_factory=dict)  # keyword arguments for the learner factory


@dataclass
class MetricsConfig:
    listen: str | None = None  # "HOST:PORT" to serve Prometheus metrics on (peer.runtime.metrics); None: off
    # publish the learner's training and evaluation numbers (computed on private data) in the
    # metrics and the MQTT status; off: only round, health, counts and epsilon leave the gateway
    share_learning_metrics: bool = False


def split_host_port(value: str) -> tuple[str, int]:
    """"127.0.0.1:9464" or "[::1]:9464" -> (host, port); ValueError says what is wrong."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("must be HOST:PORT with a TCP port, like 127.0.0.1:9464")
    bracketed = host.startswith("[") and host.endswith("]")
    host = host[1:-1] if bracketed else host
    if not host or not host.isprintable() or any(c in host for c in " /[]") or (":" in host and not bracketed):
        raise ValueError("must be HOST:PORT with a host name or address (IPv6 in brackets: [::1]:9464)")
    return host, int(port)


def _host_port(v):
    try:
        split_host_port(v)
    except ValueError as exc:
        return str(exc)
    return None


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
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    privacy: PrivacySettings = field(default_factory=PrivacySettings)
    personalization: Personalization = field(default_factory=Personalization)
    name: str = ""
    source: Path | None = None
