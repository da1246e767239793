"""Deployment plans: from a topology to a ready folder per node (key, peer.toml) plus one
shared trust list, the drawing and the analysis. Lives in `peer` because it writes keys
(gossip) and the peer's config format; the graph math stays in `topology`."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import networkx as nx

from gossip.identity import Identity, save_key
from gossip.trust import build_trust_list

from .config import AggregationConfig, DataConfig, ModelConfig, RoundConfig, load_config
from .errors import ConfigError
from .mosquitto import BrokerPeer, new_password, write_broker_files, write_secret
from .tomlwrite import dumps
from .training import TrainConfig

BROKER_DIR = "broker"  # mqtt plans: mosquitto.conf, passwd and acl for the broker host


@dataclass
class PlannedNode:
    label: str
    peer_id: str
    dir: Path
    config: Path
    port: int | None


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


def write_plan(graph: nx.Graph, out: str | os.PathLike, *, network_id: str = "gossipfl", transport: str = "libp2p",
               host: str = "127.0.0.1", base_port: int = 4001, mqtt_host: str = "127.0.0.1", mqtt_port: int = 1883,
               force: bool = False, overrides: dict | None = None, identities: dict | None = None,
               draw: bool = True, ports: list[int] | None = None) -> list[PlannedNode]:
    """Write keys (0600), peer.toml per node and trust.toml; refuse an existing folder unless `force`.
    An mqtt plan also gives every node a broker login (username = its PeerId) and writes the
    broker's password file, ACL and mosquitto.conf into BROKER_DIR (see peer.mosquitto).

    `overrides` are merged into every node's config tables (e.g. {"round": {"deadline": 2.0}});
    `identities` maps node labels to Identity objects to use instead of fresh keys;
    `ports` gives each node's libp2p port (default: base_port + index).
    """
    out = Path(out)
    if transport not in ("libp2p", "mqtt", "memory"):
        raise ConfigError(f"--transport must be libp2p, mqtt or memory, got {transport!r}")
    if out.exists() and any(out.iterdir()):
        if not force:
            raise ConfigError(f"{out} exists and is not empty; refusing to overwrite keys (use --force)")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    nodes = sorted(graph.nodes, key=lambda v: (str(type(v)), v))
    index = {v: i for i, v in enumerate(nodes)}
    port_of = {v: (ports[i] if ports else base_port + i) for v, i in index.items()}
    idents = {v: (identities or {}).get(v) or Identity.generate() for v in nodes}
    trust = build_trust_list(network_id, [{"id": idents[v].peer_id, "name": str(v)} for v in nodes])
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
        configs.append(load_config(cfg_path))  # every written config must load
        planned.append(PlannedNode(str(v), idents[v].peer_id, d, cfg_path, port))
    if transport == "mqtt":
        write_plan_broker(out / BROKER_DIR, configs, mqtt_host)
    manifest = [{"node": p.label, "peer_id": p.peer_id, "config": str(p.config.relative_to(out)), "port": p.port}
                for p in planned]
    (out / "plan.json").write_text(json.dumps({"network": network_id, "transport": transport, "nodes": manifest},
                                              indent=1))
    if draw:
        from topology.analysis import summarize
        from topology.draw import draw as draw_graph

        summary, _ = summarize(graph)
        (out / "analysis.json").write_text(json.dumps(summary.to_dict(), indent=1, default=str))
        draw_graph(graph, out / "topology.png", title=graph.graph.get("spec", ""))
    return planned


def write_plan_broker(folder: Path, configs: list, host: str):
    """The broker files for the configs just written (their logins, prefix, network and port,
    so that overrides of those reach the ACL too)."""
    prefixes = {(c.network, c.transport.topic_prefix, c.transport.port) for c in configs}
    if len(prefixes) != 1:
        raise ConfigError(f"an mqtt plan needs one network id, topic_prefix and broker port, got {sorted(prefixes)}")
    ((network, prefix, port),) = prefixes
    for c in configs:
        if not (c.transport.username and c.transport.password):
            raise ConfigError(f"{c.source}: an mqtt plan needs transport.username and transport.password")
    peers = [BrokerPeer(c.transport.username, c.transport.password, tuple(n.id for n in c.neighbours))
             for c in configs]
    return write_broker_files(folder, peers, prefix=prefix, network=network, host=host, port=port)
