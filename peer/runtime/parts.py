"""What a peer is made of, loaded and checked from a peer.toml before any round starts:
key, trust list, neighbours, data, model and transport."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

from gossip.envelope import max_message_size
from gossip.identity import Identity, load_key
from gossip.transport import MemoryHub, Transport
from gossip.trust import TrustList, load_trust_list
from gossip.verify import Verifier
from privacy import secagg_wire
from privacy.secagg import masked_words

from ..config.parse import Neighbour, PeerConfig
from ..errors import ConfigError, DataError
from ..learning.data import LocalData, digits_shard, from_loader, load_csv, load_npz, split_holdout
from ..learning.learner import probe_model
from ..learning.model import FlatModel, build_model, load_object
from ..learning.personal import Split, split_of
from .membership import Membership, allowed_peers, stored_membership
from .round import RoundPolicy
from .secure_mean import SecureMeanSetup

log = logging.getLogger("gossipfl.peer")


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
    secure: SecureMeanSetup | None = None  # secure_mean: the groups, clip bound and threshold
    noise: object = None  # privacy noise generator (None: seeded from os.urandom; the simulator seeds it)
    fleet: set[str] = field(default_factory=set)  # the fleet's PeerIds, live: membership keeps it (relays serve them)
    split: Split | None = None  # personalization.mode = "local_head": only the shared part meets the wire

    @property
    def wire_size(self) -> int:
        """Values in one update: the model's, or its shared part's (local_head)."""
        return self.split.shared_size if self.split is not None else self.model.size

    @property
    def wire_schema(self) -> bytes:
        """The schema hash updates carry: the model's, or its shared part's (local_head)."""
        return self.split.shared_schema if self.split is not None else self.model.schema


def message_limit(cfg: PeerConfig, n_params: int, secure: SecureMeanSetup | None = None) -> int:
    """The largest message a peer reads: exactly what a valid update of its model can take
    (schema and codec fix the payload size), never a generous default an attacker can fill.
    secure_mean: a masked input to this peer, or a message of double masking for its largest group."""
    need = max_message_size(cfg.round.codec, n_params)
    if secure is not None:
        need = max(need, max_message_size("u32", masked_words(n_params)),
                   secagg_wire.max_limit(secure.largest_group(len(cfg.neighbours))))
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


def with_membership(cfg: PeerConfig, own_id: str, trust: TrustList) -> PeerConfig:
    """The config with the neighbours the fleet's membership gives this peer: those of
    peer.toml, less the ones the admin revoked (a warning: a revoked neighbour is simply not a
    neighbour; its former neighbours must start from their plan folders), plus gateways
    admitted next to it. Every path that builds the allowed set and the transport's address
    book starts from this. A neighbour that is neither trusted nor revoked is an error."""
    view = stored_membership(own_id, cfg.network, trust, {n.id: n.addr for n in cfg.neighbours}, cfg.data_dir)
    for n in cfg.neighbours:
        if n.id in view.revoked:
            log.warning("network.neighbours: %s%s was revoked by the network admin: not a neighbour any more "
                        "(`fleet revoke` rewrote the plan's peer.toml files; copy this one again to stop this "
                        "warning)", n.id, f" ({n.name})" if n.name else "")
    untrusted = [nid for nid in view.neighbours if nid not in view.trusted]
    if untrusted:
        raise ConfigError(f"network.neighbours: {untrusted[0]} is not on the trust list {cfg.trust} (nor admitted "
                          "by a record this peer holds); if it was revoked, copy this peer.toml from the plan again "
                          "(`fleet revoke` rewrote it) or remove the neighbour")
    kept = [n for n in cfg.neighbours if n.id in view.neighbours]
    admitted = [Neighbour(nid, addr) for nid, addr in view.neighbours.items() if nid not in {n.id for n in kept}]
    if len(kept) == len(cfg.neighbours) and not admitted:
        return cfg
    return replace(cfg, neighbours=kept + admitted)


def load_local_data(cfg: PeerConfig) -> LocalData:
    d = cfg.data
    if d.source == "digits":
        return digits_shard(d.shard, d.shards, d.partition, alpha=d.alpha, labels_per_shard=d.labels_per_shard,
                            seed=d.seed, holdout=d.holdout)
    if d.source in ("npz", "csv") and d.path is None:
        raise ConfigError(f"data.source = {d.source!r} needs data.path (the file to read)")
    if d.source == "npz":
        x, y = load_npz(str(d.path), d.x_key, d.y_key)
    elif d.source == "csv":
        x, y = load_csv(str(d.path), d.label_column)
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
    cfg = with_membership(cfg, identity.peer_id, trust)
    neighbours = [n.id for n in cfg.neighbours]
    if identity.peer_id in neighbours:
        raise ConfigError("network.neighbours lists this peer itself")
    data = load_local_data(cfg)
    module = build_model(cfg.model.name, data.features, cfg.model.classes, cfg.model.options, cfg.model.seed,
                         base=config_folder(cfg))
    probe_model(module, data, cfg.model.classes, cfg.train.learner, cfg.model.name)
    model = FlatModel(module)
    split = split_of(cfg.personalization, model)
    secure = None
    if cfg.aggregation.rule == "secure_mean":
        secure = SecureMeanSetup.of(cfg.neighbours, cfg.aggregation.params)
    limit = message_limit(cfg, split.shared_size if split is not None else model.size, secure)
    admin = getattr(trust, "admin", None)
    allowed = allowed_peers(neighbours, admin)  # live: membership changes it
    fleet = set(trust.peers)  # live: membership changes it
    if transport is None:
        from ..transports import build_transport
        transport = build_transport(cfg, identity, hub, max_size=limit, allowed=allowed, members=fleet)
    degrees = {n.id: n.degree for n in cfg.neighbours if n.degree is not None}
    return PeerParts(identity, trust, neighbours, transport, model, data, cfg, degrees, limit, allowed, secure,
                     fleet=fleet, split=split)


def membership_of(parts: PeerParts) -> Membership:
    """The fleet as this peer starts into it: the trust list and its configured neighbours (the
    stored records are applied by `Membership.load`, once the data folder is locked)."""
    cfg = parts.cfg
    return Membership(parts.identity.peer_id, cfg.network, getattr(parts.trust, "admin", None),
                      parts.fleet or set(parts.trust.peers), {n.id: n.addr for n in cfg.neighbours},
                      Path(cfg.data_dir) / "membership.msgpack", retired=list(getattr(parts.trust, "retired", ())))


def verifier_of(parts: PeerParts, membership: Membership, masked_words: int | None) -> Verifier:
    """What this peer accepts: the network, the live trust and revocation sets, its model's schema
    and size, the message bound, and the round window (no past rounds, `max_lead` ahead)."""
    cfg = parts.cfg
    return Verifier(cfg.network, membership.trusted, parts.wire_schema, parts.wire_size,
                    neighbours=set(parts.neighbours),
                    max_size=parts.max_message, max_lag=0, max_lead=cfg.round.max_lead, revoked=membership.revoked,
                    masked_words=masked_words, witnessed={})


def policy_of(parts: PeerParts) -> RoundPolicy:
    """What the round state machine needs of the configuration."""
    cfg, agg = parts.cfg, parts.cfg.aggregation
    return RoundPolicy(neighbours=frozenset(parts.neighbours), peer_id=parts.identity.peer_id, rule=agg.rule,
                       f=agg.f, deadline=cfg.round.deadline, quorum=cfg.round.quorum,
                       per_neighbour_limit=cfg.round.inbox_per_neighbour, max_lead=cfg.round.max_lead)
