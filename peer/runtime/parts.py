"""What a peer is made of, loaded and checked from a peer.toml before any round starts:
key, trust list, neighbours, data, model and transport."""

from __future__ import annotations

from dataclasses import dataclass, field

from gossip.envelope import max_message_size
from gossip.identity import Identity, load_key
from gossip.transport import MemoryHub, Transport
from gossip.trust import TrustList, load_trust_list
from privacy.secure_wire import MAX_MESSAGE

from ..config.parse import PeerConfig
from ..errors import ConfigError, DataError
from ..learning.data import LocalData, digits_shard, from_loader, load_csv, load_npz, split_holdout
from ..learning.learner import probe_model
from ..learning.model import FlatModel, build_model, load_object
from .secure_round import SecureAggregation, check_trust_keys


@dataclass
class PeerParts:
    """Everything a peer is made of; `Peer.from_config` builds it from a peer.toml."""

    identity: Identity
    trust: TrustList
    neighbours: list[str]
    transport: Transport
    model: FlatModel
    data: LocalData
    cfg: PeerConfig
    neighbour_degrees: dict[str, int] = field(default_factory=dict)
    max_message: int = 0  # bytes: the largest valid update of this model and codec
    allowed: set[str] = field(default_factory=set)  # who may connect: neighbours and the network admin
    secure: SecureAggregation | None = None  # secure_mean: keys, groups, masking and reveals


def allowed_peers(neighbours, admin: str | None) -> set[str]:
    """Who may connect to a peer's transport: its neighbours and the network's admin key."""
    return set(neighbours) | ({admin} if admin else set())


def message_limit(cfg: PeerConfig, n_params: int, secure: SecureAggregation | None = None) -> int:
    """The largest message a peer reads: exactly what a valid update of its model can take
    (schema and codec fix the payload size), never a generous default an attacker can fill.
    secure_mean: a masked contribution to this peer, or a reveal request or reveal."""
    need = max_message_size(cfg.round.codec, n_params)
    if secure is not None:
        need = max(need, max_message_size("u32", secure.words(len(cfg.neighbours))), MAX_MESSAGE)
    cap_mb = cfg.round.max_message_mb
    if cap_mb is None:
        return need
    cap = int(cap_mb * 1024 * 1024)
    if cap < need:
        raise ConfigError(f"round.max_message_mb = {cap_mb} is below the size of one update of this model "
                          f"({need / 1048576:.3f} MB with codec {cfg.round.codec}); remove it to use the exact size")
    return cap


def config_folder(cfg: PeerConfig):
    """Where the config's own modules (models, learners, loaders) are imported from first."""
    return cfg.source.resolve().parent if cfg.source is not None else None


def load_local_data(cfg: PeerConfig) -> LocalData:
    d = cfg.data
    if d.source == "digits":
        return digits_shard(d.shard, d.shards, d.partition, alpha=d.alpha, labels_per_shard=d.labels_per_shard,
                            seed=d.seed, holdout=d.holdout)
    if d.source == "npz":
        x, y = load_npz(d.path, d.x_key, d.y_key)
    elif d.source == "csv":
        x, y = load_csv(d.path, d.label_column)
    else:
        loader = load_object(d.source, "data.source", config_folder(cfg))
        try:
            result = loader(shard=d.shard, shards=d.shards, seed=d.seed, **d.options)
        except DataError:
            raise
        except Exception as exc:  # user code: report, do not crash with a traceback
            raise DataError(f"data.source {d.source} failed: {type(exc).__name__}: {exc}") from None
        x, y = from_loader(result, f"data.source {d.source}")
    return split_holdout(x, y, d.holdout, d.seed + 1000 + d.shard, cfg.model.classes)


def build_parts(cfg: PeerConfig, transport: Transport | None = None, identity: Identity | None = None,
                hub: MemoryHub | None = None) -> PeerParts:
    """Load key, trust list, data and model, checking everything before any round starts
    (`hub`: the in-process network of a memory transport)."""
    identity = identity or load_key(cfg.key)
    trust = load_trust_list(cfg.trust)
    if trust.network != cfg.network:
        raise ConfigError(f"trust list {cfg.trust} is for network {trust.network!r}, this peer is in {cfg.network!r}")
    neighbours = [n.id for n in cfg.neighbours]
    untrusted = [n for n in neighbours if n not in trust]
    if untrusted:
        raise ConfigError(f"network.neighbours: {untrusted[0]} is not on the trust list {cfg.trust}")
    if identity.peer_id in neighbours:
        raise ConfigError("network.neighbours lists this peer itself")
    check_trust_keys(trust, cfg.trust)
    data = load_local_data(cfg)
    module = build_model(cfg.model.name, data.features, cfg.model.classes, cfg.model.options, cfg.model.seed,
                         base=config_folder(cfg))
    probe_model(module, data, cfg.model.classes, cfg.train.learner, cfg.model.name)
    model = FlatModel(module)
    secure = None
    if cfg.aggregation.rule == "secure_mean":
        secure = SecureAggregation(identity, cfg.network, cfg.neighbours, trust, model.size, cfg.aggregation.params)
    limit = message_limit(cfg, model.size, secure)
    admin = getattr(trust, "admin", None)
    allowed = allowed_peers(neighbours, admin)  # live: membership changes it
    if transport is None:
        from .transports import make_transport
        transport = make_transport(cfg, identity, hub, max_size=limit, allowed=allowed, members=trust)
    degrees = {n.id: n.degree for n in cfg.neighbours if n.degree is not None}
    return PeerParts(identity, trust, neighbours, transport, model, data, cfg, degrees, limit, allowed, secure)
