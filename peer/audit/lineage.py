"""An update's lineage as a graph (a DAG: one node per update, shared inputs drawn once),
built from a fleet's logs, and drawn as a PNG (networkx + matplotlib) or Graphviz text.

Nodes are sent updates (and the traced model, when a model hash is traced); an edge runs
from each input to the update it fed. Updates a peer rejected are drawn too, marked, with a
dashed red edge to the update that peer sent next: what it refused to build on."""

from __future__ import annotations

import os
from collections import deque

import networkx as nx

from ..state.provenance import EventKind
from .fleet import Fleet, short

MAX_DRAWN = 400  # nodes in a picture; past this the depth is too large to read anyway


def fleet_graph(fleet: Fleet) -> nx.DiGraph:
    """Every sent update, its parents, and the updates peers rejected, as one DiGraph."""
    g = nx.DiGraph()
    next_sent: dict[tuple[str, int], str] = {}
    for log in fleet.logs:
        for e in log.events:
            if e.kind == EventKind.SENT and e.update_hash:
                g.add_node(e.update_hash, peer=log.owner, round=e.round, kind="update")
                if e.round is not None:
                    next_sent[(log.owner, e.round)] = e.update_hash
                for p in e.details.get("parents", ()):
                    if isinstance(p, str):
                        g.add_edge(p, e.update_hash, rejected=False)
    for log in fleet.logs:
        for e in log.events:
            if e.kind == EventKind.REJECTED and e.update_hash and e.round is not None:
                if e.update_hash not in g:
                    g.add_node(e.update_hash, peer=e.counterpart, round=e.round, kind="rejected")
                g.nodes[e.update_hash]["rejected_by"] = g.nodes[e.update_hash].get("rejected_by", ()) + (log.owner,)
                nxt = next_sent.get((log.owner, e.round + 1))
                if nxt:
                    g.add_edge(e.update_hash, nxt, rejected=True)
            elif e.kind == EventKind.AGGREGATED and e.update_hash:
                g.graph.setdefault("models", {})[e.update_hash] = (
                    log.owner, e.round, [h for h in e.details.get("inputs", ()) if isinstance(h, str)],
                    next_sent.get((log.owner, (e.round or 0) + 1)))
    for _, data in g.nodes(data=True):  # inputs seen only as parents: their sender's log is not here
        data.setdefault("kind", "update")
        data.setdefault("peer", None)
        data.setdefault("round", None)
    return g


def lineage(fleet: Fleet, target: str, depth: int = 3) -> nx.DiGraph:
    """The part of the fleet's graph within `depth` steps back and forward of `target`
    (an update, or a model hash: then the model is a node between its inputs and the next update)."""
    g = fleet_graph(fleet)
    models = g.graph.get("models", {})
    if target not in g and target in models:
        peer, rnd, inputs, nxt = models[target]
        g.add_node(target, peer=peer, round=rnd, kind="model")
        for h in inputs:
            if h not in g:
                g.add_node(h, peer=None, round=None, kind="update")
            g.add_edge(h, target, rejected=False)
        if nxt:
            g.add_edge(target, nxt, rejected=False)
    if target not in g:
        g.add_node(target, peer=None, round=None, kind="update")
    keep = {target} | _within(g, target, depth, g.predecessors) | _within(g, target, depth, g.successors)
    sub = g.subgraph(keep).copy()
    sub.graph["target"] = target
    return sub


def _within(g: nx.DiGraph, start: str, depth: int, step) -> set[str]:
    seen, queue = set(), deque([(start, 0)])
    while queue:
        n, d = queue.popleft()
        if d >= depth:
            continue
        for m in step(n):
            if m not in seen:
                seen.add(m)
                queue.append((m, d + 1))
    return seen


def _label(fleet: Fleet, g: nx.DiGraph, n: str) -> str:
    data = g.nodes[n]
    who = fleet.name(data.get("peer")) if data.get("peer") else "?"
    rnd = data.get("round")
    head = f"{who} r{rnd}" if rnd is not None else who
    tail = {"model": "\nmodel", "rejected": "\nrejected"}.get(data.get("kind"), "")
    return f"{head}\n{short(n, 6)}{tail}"


def _positions(fleet: Fleet, g: nx.DiGraph) -> dict[str, tuple[float, float]]:
    """Rounds left to right, one row per peer (plan names in order): a lineage reads like a timeline."""
    peers = sorted({g.nodes[n].get("peer") for n in g} - {None}, key=lambda p: (fleet.name(p), p))
    row = {p: i for i, p in enumerate(peers)}
    rounds = [g.nodes[n]["round"] for n in g if g.nodes[n].get("round") is not None]
    lo = min(rounds) if rounds else 0
    cells: dict[tuple[float, float], int] = {}
    pos = {}
    for n in sorted(g, key=lambda n: ({"update": 0, "model": 1, "rejected": 2}.get(g.nodes[n]["kind"], 3), n)):
        data = g.nodes[n]
        x = float(data["round"]) if data.get("round") is not None else lo - 1.0
        y = -float(row.get(data.get("peer"), len(peers)))
        if data["kind"] == "model":
            x += 0.5
        k = cells.get((x, y), 0)
        cells[(x, y)] = k + 1
        pos[n] = (x + 0.18 * k, y - 0.32 * k)
    return pos


def draw_lineage(fleet: Fleet, g: nx.DiGraph, path: str | os.PathLike, title: str = "") -> str:
    """Write the lineage as a PNG; returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    target = g.graph.get("target")
    if g.number_of_nodes() > MAX_DRAWN:
        from .fleet import AuditLookupError

        raise AuditLookupError(f"the lineage has {g.number_of_nodes()} updates, too many to draw "
                               f"(at most {MAX_DRAWN}); use a smaller --depth")
    pos = _positions(fleet, g)
    xs = [p[0] for p in pos.values()] or [0]
    ys = [p[1] for p in pos.values()] or [0]
    width = min(4 + 1.9 * (max(xs) - min(xs) + 1), 40)
    height = min(2.5 + 1.1 * (max(ys) - min(ys) + 1), 30)
    fig = Figure(figsize=(width, height), dpi=100)
    ax = fig.add_subplot()
    plain = [(a, b) for a, b, r in g.edges(data="rejected") if not r]
    refused = [(a, b) for a, b, r in g.edges(data="rejected") if r]
    kw = {"ax": ax, "arrows": True, "arrowsize": 12, "node_size": 2200, "node_shape": "s"}
    nx.draw_networkx_edges(g, pos, edgelist=plain, edge_color="#888888", width=1.0, **kw)
    nx.draw_networkx_edges(g, pos, edgelist=refused, edge_color="#d62728", width=1.4, style="dashed", **kw)
    colour = {"update": "#e8eef7", "model": "#cfe8cf", "rejected": "#f7c6c5"}
    for kind, shape in (("update", "s"), ("model", "o"), ("rejected", "s")):
        nodes = [n for n in g if g.nodes[n]["kind"] == kind and n != target]
        if nodes:
            nx.draw_networkx_nodes(g, pos, nodelist=nodes, ax=ax, node_shape=shape,
                                   node_color=colour[kind], node_size=2200,
                                   edgecolors="#d62728" if kind == "rejected" else "#4c6a92", linewidths=1.2)
    if target in pos:
        nx.draw_networkx_nodes(g, pos, nodelist=[target], ax=ax, node_color="#ffd34d", node_size=2600,
                               node_shape="o" if g.nodes[target]["kind"] == "model" else "s",
                               edgecolors="#b8860b", linewidths=2.5)
    nx.draw_networkx_labels(g, pos, labels={n: _label(fleet, g, n) for n in g}, ax=ax, font_size=8,
                            font_family="monospace")
    legend = [Line2D([], [], marker="s", ls="", ms=10, mfc="#ffd34d", mec="#b8860b", label="traced"),
              Line2D([], [], marker="s", ls="", ms=10, mfc=colour["update"], mec="#4c6a92", label="update (signed, sent)"),
              Line2D([], [], color="#888888", label="fed into")]
    if refused or any(g.nodes[n]["kind"] == "rejected" for n in g):
        legend += [Line2D([], [], marker="s", ls="", ms=10, mfc=colour["rejected"], mec="#d62728",
                          label="rejected input"),
                   Line2D([], [], color="#d62728", ls="--", label="rejected by")]
    ax.legend(handles=legend, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, fontsize=8)
    ax.set_title(title or f"lineage of {short(target, 12)}", fontsize=11)
    ax.margins(0.12)
    ax.set_xlabel("round")
    ax.set_xticks(sorted({int(x) for x in xs}))
    peers = sorted({g.nodes[n].get("peer") for n in g} - {None}, key=lambda p: (fleet.name(p), p))
    ax.set_yticks([-i for i in range(len(peers))], [f"peer {fleet.name(p)}" for p in peers])
    ax.tick_params(bottom=True, labelbottom=True, left=False, labelleft=True)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    fig.tight_layout()
    fig.savefig(path)
    return str(path)


def lineage_dot(fleet: Fleet, g: nx.DiGraph) -> str:
    """Graphviz text of the same graph (for `dot -Tsvg`)."""
    target = g.graph.get("target")
    lines = ["digraph lineage {", "  rankdir=LR;", '  node [shape=box, fontname="monospace"];']
    for n in sorted(g):
        kind = g.nodes[n]["kind"]
        style = (", style=filled, fillcolor=gold" if n == target else
                 ", style=filled, fillcolor=mistyrose, color=red" if kind == "rejected" else
                 ", shape=ellipse" if kind == "model" else "")
        label = _label(fleet, g, n).replace("\n", "\\n")
        lines.append(f'  "{n}" [label="{label}"{style}];')
    for a, b, rejected in sorted(g.edges(data="rejected")):
        lines.append(f'  "{a}" -> "{b}"' + (' [style=dashed, color=red, label="rejected"];' if rejected else ";"))
    lines.append("}")
    return "\n".join(lines) + "\n"


def lineage_summary(fleet: Fleet, g: nx.DiGraph) -> dict:
    """The traced node, its direct inputs and what it fed (for text and --json)."""
    target = g.graph["target"]

    def node(n: str) -> dict:
        d = g.nodes[n]
        return {"update": n, "peer": d.get("peer"), "name": fleet.name(d.get("peer")) if d.get("peer") else None,
                "round": d.get("round"), "kind": d.get("kind")}

    return {**node(target),
            "inputs": [node(p) for p in sorted(g.predecessors(target)) if not g.edges[p, target]["rejected"]],
            "rejected_inputs": [node(p) for p in sorted(g.predecessors(target)) if g.edges[p, target]["rejected"]],
            "fed": [node(s) for s in sorted(g.successors(target))],
            "nodes": [node(n) for n in sorted(g, key=lambda n: (g.nodes[n].get("round") or -1, n))],
            "edges": [{"from": a, "to": b, "rejected": r} for a, b, r in sorted(g.edges(data="rejected"))]}
