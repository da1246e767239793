"""Load and save user topologies in the formats networkx reads, chosen by file extension."""

from __future__ import annotations

import json
import os
from pathlib import Path

import networkx as nx

from .errors import TopologyError
from .generators import from_spec

FORMATS = {".edgelist": "edgelist", ".txt": "edgelist", ".graphml": "graphml", ".gml": "gml",
           ".json": "json"}


def _format(path: Path) -> str:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise TopologyError(f"{path}: unknown graph format; use one of {', '.join(sorted(FORMATS))}")
    return fmt


def save(graph: nx.Graph, path: str | os.PathLike) -> Path:
    path = Path(path)
    fmt = _format(path)
    if fmt == "edgelist":
        nx.write_edgelist(graph, path, data=False)
    elif fmt == "graphml":
        nx.write_graphml(graph, path)
    elif fmt == "gml":
        nx.write_gml(graph, path, stringizer=str)
    else:
        path.write_text(json.dumps(nx.node_link_data(graph, edges="links"), indent=1, default=str))
    return path


def load(path: str | os.PathLike, *, allow_directed: bool = False, allow_disconnected: bool = False) -> nx.Graph:
    """Read a graph; directed or disconnected input is an error unless explicitly allowed."""
    path = Path(path)
    fmt = _format(path)
    if not path.is_file():
        raise TopologyError(f"{path}: no such graph file")
    try:
        if fmt == "edgelist":
            g = nx.read_edgelist(path, nodetype=str)
            g = _maybe_int_labels(g)
        elif fmt == "graphml":
            g = _maybe_int_labels(nx.read_graphml(path))
        elif fmt == "gml":
            g = _maybe_int_labels(nx.read_gml(path, label="label"))
        else:
            g = nx.node_link_graph(json.loads(path.read_text()), edges="links")
    except (nx.NetworkXError, ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise TopologyError(f"{path}: cannot read as {fmt}: {exc}") from None
    return check(g, str(path), allow_directed=allow_directed, allow_disconnected=allow_disconnected)


def check(g: nx.Graph, where: str, *, allow_directed: bool = False, allow_disconnected: bool = False) -> nx.Graph:
    if g.is_directed():
        if not allow_directed:
            raise TopologyError(f"{where}: the graph is directed; gossip links are two-way "
                                "(pass --allow-directed to use it as undirected)")
        g = g.to_undirected()
    if g.is_multigraph():
        g = nx.Graph(g)
    g.remove_edges_from(list(nx.selfloop_edges(g)))
    if g.number_of_nodes() < 2:
        raise TopologyError(f"{where}: a topology needs at least 2 nodes")
    if not nx.is_connected(g) and not allow_disconnected:
        parts = nx.number_connected_components(g)
        raise TopologyError(f"{where}: the graph has {parts} disconnected parts, so they can never agree "
                            "(pass --allow-disconnected to analyse it anyway)")
    return g


def _maybe_int_labels(g: nx.Graph) -> nx.Graph:
    try:
        mapping = {v: int(v) for v in g.nodes}
    except (TypeError, ValueError):
        return g
    return nx.relabel_nodes(g, mapping)


def resolve(spec_or_file: str, seed: int = 0, **kw) -> nx.Graph:
    """A spec like 'ring:16' or a path to a graph file."""
    if Path(spec_or_file).suffix.lower() in FORMATS or os.sep in spec_or_file:
        return load(spec_or_file, **kw)
    return from_spec(spec_or_file, seed=seed)
