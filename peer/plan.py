"""Deployment plans: from a topology to a ready folder per node (key, peer.toml) plus one
shared trust list, the drawing and the analysis. Lives in `peer` because it writes keys
(gossip) and the peer's config format; the graph math stays in `topology`."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import networkx as nx

from gossip.identity import Identity, save_key
from gossip.trust import build_trust_list

from .config import load_config
from .errors import ConfigError
from .tomlwrite import dumps


@dataclass
class PlannedNode:
    label: str
    peer_id: str
    dir: Path
    config: Path
    port: int | None


def node_dir_name(label) -> str:
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in str(label))
    return f"node-{safe}"


def write_plan(graph: nx.Graph, out: str | os.PathLike, *, network_id: str = "gossipfl", transport: str = "libp2p",
               host: str = "127.0.0.1", base_port: int = 4001, mqtt_host: str = "127.0.0.1", mqtt_port: int = 1883,
               force: bool = False, overrides: dict | None = None, identities: dict | None = None,
               draw: bool = True, ports: list[int] | None = None) -> list[PlannedNode]:
    """Write keys (0600), peer.toml per node and trust.toml; refuse an existing folder unless `force`.

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
    planned = []
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
        elif transport == "mqtt":
            tr.update({"host": mqtt_host, "port": mqtt_port})
        doc = {
            "name": str(v),
            "identity": {"key": "peer.key"},
            "network": {"id": network_id, "trust": "../trust.toml", "neighbours": neighbours},
            "transport": tr,
            "model": {"name": "mlp", "classes": 10, "options": {"hidden": [32]}},
            "data": {"source": "digits", "shard": i, "shards": len(nodes), "partition": "iid"},
            "train": {"local_steps": 20, "batch_size": 32, "lr": 0.1},
            "aggregation": {"rule": "median", "f": 1, "weights": "uniform"},
            "round": {"deadline": 10.0},
            "storage": {"dir": "data"},
        }
        for table, values in overrides.items():
            if isinstance(values, dict):
                doc.setdefault(table, {}).update(values)
            else:
                doc[table] = values
        cfg_path = d / "peer.toml"
        cfg_path.write_text(f"# node {v} of a {len(nodes)}-node plan ({graph.graph.get('spec', 'graph')})\n"
                            + dumps(doc))
        load_config(cfg_path)  # every written config must load
        planned.append(PlannedNode(str(v), idents[v].peer_id, d, cfg_path, port))
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
