"""Deployment plans: from a topology to a ready folder per node (key, peer.toml, systemd
unit) plus one shared trust list, the network's admin key (in its own folder, to be moved
off the machine), the drawing and the analysis with its robustness verdict. Lives in `peer`
because it writes keys (gossip) and the peer's config format; the graph math stays in
`topology`."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import networkx as nx

from gossip.identity import Identity, save_key
from gossip.trust import build_trust_list

from ..config.parse import AggregationConfig, DataConfig, ModelConfig, RoundConfig, load_config
from ..config.tomlwrite import dumps
from ..errors import ConfigError
from ..learning.classification import TrainConfig
from .mosquitto import BrokerPeer, new_password, write_admin_login, write_broker_files, write_secret
from .systemd import GatewayLayout, unit_text

BROKER_DIR = "broker"  # mqtt plans: mosquitto.conf, passwd and acl for the broker host
ADMIN_DIR = "admin"  # the network admin key: signs membership records, never copied to a gateway
ADMIN_KEY = "admin.key"
ADMIN_README = """\
This folder holds the admin key of network {network!r} (PeerId {peer_id}).

It signs membership records: `gossipfl fleet admit` and `gossipfl fleet revoke` need it,
the peers do not. Every peer trusts it (trust.toml: admin = ...), so whoever holds it
decides who is in the network. Move this folder off this machine (an offline disk, a
password manager) once the plan is copied to the gateways; never copy it to a gateway.
"""


class WeakPlanError(ConfigError):
    """Some node's neighbourhood is too small for the aggregation rule at its f."""


@dataclass
class PlannedNode:
    label: str
    peer_id: str
    dir: Path
    config: Path
    port: int | None
    unit: Path | None = None  # the node's systemd unit file (libp2p and mqtt plans)


def default_tables() -> dict:
    """The tables a plan writes for every node, from the config dataclasses, so that a planned
    node runs with exactly the defaults parse_config gives a config that leaves them out."""
    model, data, train = ModelConfig(), DataConfig(), TrainConfig()
    agg, rnd = AggregationConfig(), RoundConfig()
    return {
        "model": {"name": model.name, "classes": model.classes, "options": dict(model.options)},
        "data": {"source": data.source, "partition": data.partition},
        "train": {"local_steps": train.local_steps, "batch_size": train.batch_size, "lr": train.lr},
        "aggregation": {k: v for k, v in asdict(agg).items() if k != "params"},
        "round": {"deadline": rnd.deadline},
    }


def node_dir_name(label) -> str:
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in str(label))
    return f"node-{safe}"


def aggregation_of(overrides: dict | None) -> tuple[str, int]:
    """The rule and f every node of a plan gets (the defaults, then the overrides)."""
    table = {**default_tables()["aggregation"], **((overrides or {}).get("aggregation") or {})}
    return table["rule"], table["f"]


def check_robustness(graph: nx.Graph, overrides: dict | None = None):
    """topology.robustness.check_plan for the rule and f the plan writes; errors name the field."""
    from topology.errors import TopologyError
    from topology.robustness import check_plan

    rule, f = aggregation_of(overrides)
    try:
        return check_plan(graph, rule, f)
    except TopologyError as exc:
        raise ConfigError(f"aggregation: {exc}") from None


def weak_plan_message(check, *, refused: bool = True) -> str:
    """Why the plan is refused (or, written anyway, weak) and what would work, in the flags
    of `topology plan`."""
    ideas = check.suggestions()
    fix = f" What would work: {'; '.join(ideas)}." if ideas else ""
    if refused:
        return (f"refusing a plan in which {check.problem()}; they would keep their own model every round.{fix} "
                "Use --allow-weak to write it anyway")
    return f"wrote a plan in which {check.problem()}; they will keep their own model every round.{fix}"


def write_plan(graph: nx.Graph, out: str | os.PathLike, *, network_id: str = "gossipfl", transport: str = "libp2p",
               host: str = "127.0.0.1", base_port: int = 4001, mqtt_host: str = "127.0.0.1", mqtt_port: int = 1883,
               force: bool = False, overrides: dict | None = None, identities: dict | None = None,
               draw: bool = True, ports: list[int] | None = None, allow_weak: bool = True,
               gateway: GatewayLayout | None = None, admin: Identity | None = None) -> list[PlannedNode]:
    """Write keys (0600), peer.toml per node, trust.toml and the admin key (ADMIN_DIR, whose
    PeerId trust.toml names as the network's admin); refuse an existing folder unless `force`.
    An mqtt plan also gives every node a broker login (username = its PeerId) and writes the
    broker's password file, ACL and mosquitto.conf into BROKER_DIR (see peer.ops.mosquitto).
    libp2p and mqtt plans get a systemd unit per node, for the `gateway` layout (default
    GatewayLayout()), and an empty data folder (the only one the unit lets the peer write).

    `allow_weak=False` refuses (WeakPlanError, before writing anything) a plan in which some
    node's neighbourhood cannot meet its rule's requirement for its f; the CLI passes it.
    Either way analysis.json carries the verdict.
    `overrides` are merged into every node's config tables (e.g. {"round": {"deadline": 2.0}});
    `identities` maps node labels to Identity objects to use instead of fresh keys (`admin`
    likewise for the admin key); `ports` gives each node's libp2p port (default: base_port + index).
    """
    out = Path(out)
    if transport not in ("libp2p", "mqtt", "memory"):
        raise ConfigError(f"--transport must be libp2p, mqtt or memory, got {transport!r}")
    robustness = check_robustness(graph, overrides)
    if not robustness.ok and not allow_weak:
        raise WeakPlanError(weak_plan_message(robustness))
    if transport != "memory" and gateway is None:
        gateway = GatewayLayout()
    if out.exists() and any(out.iterdir()):
        if not force:
            raise ConfigError(f"{out} exists and is not empty; refusing to overwrite keys (use --force)")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    nodes = sorted(graph.nodes, key=lambda v: (str(type(v)), v))
    index = {v: i for i, v in enumerate(nodes)}
    port_of = {v: (ports[i] if ports else base_port + i) for v, i in index.items()}
    idents = {v: (identities or {}).get(v) or Identity.generate() for v in nodes}
    admin = admin or Identity.generate()
    write_admin_key(out / ADMIN_DIR, admin, network_id)
    trust = build_trust_list(network_id, [{"id": idents[v].peer_id, "name": str(v),
                                           **agreement_fields(idents[v], network_id)} for v in nodes],
                             admin=admin.peer_id)
    secure = aggregation_of(overrides)[0] == "secure_mean"
    (out / "trust.toml").write_text(trust.to_toml())
    planned, configs = [], []
    overrides = overrides or {}
    for v in nodes:
        i = index[v]
        d = out / node_dir_name(v)
        d.mkdir()
        save_key(idents[v], d / "peer.key")
        port = port_of[v] if transport == "libp2p" else None
        neighbours = []
        for u in sorted(graph.neighbors(v), key=lambda x: index[x]):
            nb = {"id": idents[u].peer_id, "name": str(u), "degree": graph.degree(u)}
            if secure:  # the receiver's group: a sender masks for it with every other member
                nb["group"] = [idents[w].peer_id for w in sorted(graph.neighbors(u), key=lambda x: index[x])]
            if transport == "libp2p":
                nb["addr"] = f"/ip4/{host}/tcp/{port_of[u]}/p2p/{idents[u].peer_id}"
            neighbours.append(nb)
        tr = {"kind": transport}
        if transport == "libp2p":
            tr["listen"] = [f"/ip4/{host}/tcp/{port}"]
        elif transport == "mqtt":  # the password lives beside the key, 0600, not in peer.toml
            write_secret(d / "mqtt.password", new_password() + "\n")
            tr.update({"host": mqtt_host, "port": mqtt_port, "username": idents[v].peer_id,
                       "password_file": "mqtt.password"})
        tables = default_tables()
        tables["data"].update({"shard": i, "shards": len(nodes)})
        doc = {
            "name": str(v),
            "identity": {"key": "peer.key"},
            "network": {"id": network_id, "trust": "../trust.toml", "neighbours": neighbours},
            "transport": tr,
            **tables,
            "storage": {"dir": "data"},
        }
        for table, values in overrides.items():
            if isinstance(values, dict):
                doc.setdefault(table, {}).update(values)
            else:
                doc[table] = values
        cfg_path = d / "peer.toml"
        text = f"# node {v} of a {len(nodes)}-node plan ({graph.graph.get('spec', 'graph')})\n" + dumps(doc)
        cfg_path.write_text(text)
        cfg = load_config(cfg_path)  # every written config must load
        configs.append(cfg)
        unit = None
        if gateway is not None:
            unit = write_unit(d, cfg, gateway, f"node {v} of gossipfl network {network_id}")
        planned.append(PlannedNode(str(v), idents[v].peer_id, d, cfg_path, port, unit))
    if transport == "mqtt":
        write_plan_broker(out / BROKER_DIR, configs, mqtt_host, admin=write_admin_login(out / ADMIN_DIR, admin.peer_id))
    manifest = [{"node": p.label, "peer_id": p.peer_id, "config": str(p.config.relative_to(out)), "port": p.port,
                 **({"unit": str(p.unit.relative_to(out))} if p.unit else {})} for p in planned]
    (out / "plan.json").write_text(json.dumps({"network": network_id, "transport": transport,
                                               "admin": admin.peer_id, "nodes": manifest}, indent=1))
    if draw:
        from topology.analysis import summarize
        from topology.draw import draw as draw_graph

        summary, _ = summarize(graph)
        summary.robustness = robustness.to_dict()
        (out / "analysis.json").write_text(json.dumps(summary.to_dict(), indent=1, default=str))
        draw_graph(graph, out / "topology.png", title=graph.graph.get("spec", ""), at_risk=robustness.weak)
    return planned


def agreement_fields(identity: Identity, network_id: str) -> dict:
    """A trust-list entry's secure-aggregation key: the X25519 public key derived from the
    identity and the identity's signature binding it to the PeerId in this network."""
    from privacy.secure import agreement_key, key_binding, public_bytes

    return {"x25519": public_bytes(agreement_key(identity)).hex(), "binding": key_binding(identity, network_id).hex()}


def write_admin_key(folder: Path, admin: Identity, network_id: str) -> Path:
    """ADMIN_DIR/admin.key (0600, in a 0700 folder) beside a README that says to move it away."""
    folder.mkdir(mode=0o700)
    os.chmod(folder, 0o700)
    path = save_key(admin, folder / ADMIN_KEY)
    (folder / "README.txt").write_text(ADMIN_README.format(network=network_id, peer_id=admin.peer_id))
    return path


def write_unit(node_dir: Path, cfg, gateway: GatewayLayout, description: str) -> Path:
    """The node's systemd unit, for its folder's place on the gateway; creates the data folder
    it may write when that lies inside the node's folder (the unit needs it to exist)."""
    node, data_dir = node_dir.resolve(), cfg.data_dir.resolve()
    if data_dir.is_relative_to(node):
        data_dir.mkdir(parents=True, exist_ok=True)
        data = data_dir.relative_to(node).as_posix()
    else:  # storage.dir outside the node's folder: the same absolute path on the gateway
        data = data_dir.as_posix()
    label = node_dir.name.removeprefix("node-")
    spec = gateway.unit(label, node_dir.name, data, description)
    path = node_dir / f"{spec.name}.service"
    path.write_text(unit_text(spec))
    return path


def write_plan_broker(folder: Path, configs: list, host: str, admin: BrokerPeer | None = None):
    """The broker files for the configs just written (their logins, prefix, network and port,
    so that overrides of those reach the ACL too), and the admin's login (membership records)."""
    prefixes = {(c.network, c.transport.topic_prefix, c.transport.port) for c in configs}
    if len(prefixes) != 1:
        raise ConfigError(f"an mqtt plan needs one network id, topic_prefix and broker port, got {sorted(prefixes)}")
    ((network, prefix, port),) = prefixes
    for c in configs:
        if not (c.transport.username and c.transport.password):
            raise ConfigError(f"{c.source}: an mqtt plan needs transport.username and transport.password")
    peers = [BrokerPeer(c.transport.username, c.transport.password, tuple(n.id for n in c.neighbours))
             for c in configs]
    return write_broker_files(folder, peers, prefix=prefix, network=network, host=host, port=port, admin=admin)
