"""Load and save user topologies in the formats networkx reads, chosen by file extension."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import networkx as nx

from .errors import TopologyError
from .generators import MAX_EDGES, MAX_NODES, from_spec

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


MAX_GRAPH_FILE = 64 * 1024 * 1024
PARSE_ERRORS = (nx.NetworkXError, ValueError, KeyError, TypeError, AttributeError, IndexError, SyntaxError,
                UnicodeDecodeError, RecursionError)  # SyntaxError: xml.etree's ParseError


def read_graph_text(path: Path) -> str:
    """The file's text, refusing non-regular files and anything over MAX_GRAPH_FILE unread."""
    try:  # O_NONBLOCK: a FIFO without a writer must not block the open
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise TopologyError(f"{path}: not a regular file")
            data = fh.read(MAX_GRAPH_FILE + 1)
    except FileNotFoundError:
        raise TopologyError(f"{path}: no such graph file") from None
    except IsADirectoryError:
        raise TopologyError(f"{path}: a directory, not a graph file") from None
    except OSError as exc:
        raise TopologyError(f"{path}: cannot read: {exc.strerror}") from None
    if len(data) > MAX_GRAPH_FILE:
        raise TopologyError(f"{path}: larger than {MAX_GRAPH_FILE >> 20} MB")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TopologyError(f"{path}: not UTF-8 text (byte {exc.start})") from None


def parse_edgelist(text: str, where: str) -> nx.Graph:
    """One edge per line: two node labels separated by whitespace; '#' starts a comment."""
    g = nx.Graph()
    for lineno, line in enumerate(text.splitlines(), start=1):
        tokens = line.split("#", 1)[0].split()
        if not tokens:
            continue
        if len(tokens) != 2:
            raise TopologyError(f"{where}:{lineno}: expected two node labels per line, got {line.strip()!r:.60}")
        g.add_edge(*tokens)
        if g.number_of_edges() > MAX_EDGES:
            raise TopologyError(f"{where}: more than {MAX_EDGES:,} edges")
    return g


def parse_node_link(text: str, where: str) -> nx.Graph:
    doc = json.loads(text)
    if not isinstance(doc, dict) or not isinstance(doc.get("nodes"), list) or not isinstance(doc.get("links"), list):
        raise TopologyError(f"{where}: expected a networkx node-link JSON object with \"nodes\" and \"links\" lists")
    if not all(isinstance(x, dict) for x in doc["nodes"] + doc["links"]):
        raise TopologyError(f"{where}: every node and link must be a JSON object")
    return nx.node_link_graph(doc, edges="links")


def load(path: str | os.PathLike, *, allow_directed: bool = False, allow_disconnected: bool = False) -> nx.Graph:
    """Read a graph; directed or disconnected input is an error unless explicitly allowed."""
    path = Path(path)
    fmt = _format(path)
    text = read_graph_text(path)
    try:
        if fmt == "edgelist":
            g = parse_edgelist(text, str(path))
        elif fmt == "graphml":
            g = nx.parse_graphml(text)
        elif fmt == "gml":
            g = nx.parse_gml(text, label="label")
        else:
            g = parse_node_link(text, str(path))
    except TopologyError:
        raise
    except PARSE_ERRORS as exc:
        raise TopologyError(f"{path}: cannot read as {fmt}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__:.200}") from None
    return check(_maybe_int_labels(g), str(path), allow_directed=allow_directed,
                 allow_disconnected=allow_disconnected)


def check(g: nx.Graph, where: str, *, allow_directed: bool = False, allow_disconnected: bool = False) -> nx.Graph:
    if g.is_directed():
        if not allow_directed:
            raise TopologyError(f"{where}: the graph is directed; gossip links are two-way "
                                "(pass --allow-directed to use it as undirected)")
        g = g.to_undirected()
    if g.is_multigraph():
        g = nx.Graph(g)
    g.remove_edges_from(list(nx.selfloop_edges(g)))
    if g.number_of_nodes() > MAX_NODES or g.number_of_edges() > MAX_EDGES:
        raise TopologyError(f"{where}: {g.number_of_nodes():,} nodes and {g.number_of_edges():,} edges; "
                            f"at most {MAX_NODES:,} nodes and {MAX_EDGES:,} edges")
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
    except (TypeError, ValueError, OverflowError):
        return g
    if len(set(mapping.values())) != len(mapping):  # "1" and "01" are different nodes
        return g
    return nx.relabel_nodes(g, mapping)


def resolve(spec_or_file: str, seed: int = 0, **kw) -> nx.Graph:
    """A spec like 'ring:16' or a path to a graph file."""
    if Path(spec_or_file).suffix.lower() in FORMATS or os.sep in spec_or_file:
        return load(spec_or_file, **kw)
    return from_spec(spec_or_file, seed=seed)
