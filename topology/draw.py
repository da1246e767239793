"""PNG drawings of a topology, coloured by role (honest, at risk, Byzantine)."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import networkx as nx  # noqa: E402

from .errors import TopologyError  # noqa: E402

SPRING_LIMIT = 2000  # force layouts are quadratic in the nodes; above this, a circle


def layout(graph: nx.Graph, seed: int = 0) -> dict:
    n = graph.number_of_nodes()
    if n <= 300:
        return nx.kamada_kawai_layout(graph) if n <= 64 else nx.spring_layout(graph, seed=seed, iterations=60)
    if n <= SPRING_LIMIT:
        return nx.spring_layout(graph, seed=seed, iterations=15)
    return nx.circular_layout(graph)


def check_image_path(path: str | os.PathLike) -> None:
    """The drawing's file name ends in a format matplotlib writes (checked before any work)."""
    suffix = os.path.splitext(str(path))[1].lower().lstrip(".")
    from matplotlib.backend_bases import FigureCanvasBase

    formats = FigureCanvasBase.get_supported_filetypes()
    if suffix not in formats:
        raise TopologyError(f"{path}: cannot draw in format {suffix or '(none)'!r}; use a name ending in "
                            f"{', '.join('.' + f for f in sorted(formats))}")


def draw(graph: nx.Graph, path: str | os.PathLike, *, title: str = "", at_risk=None, byzantine=(),
         seed: int = 0) -> str:
    """Honest nodes blue, at-risk orange, Byzantine red; labels only on small graphs.
    `at_risk=None` means robustness was not assessed: the legend says so rather than "safe"."""
    check_image_path(path)
    assessed = at_risk is not None
    at_risk, byzantine = set(at_risk or ()), set(byzantine)
    n = graph.number_of_nodes()
    pos = layout(graph, seed)
    colours = ["#d62728" if v in byzantine else "#ff7f0e" if v in at_risk else "#1f77b4" for v in graph.nodes]
    size = 300 if n <= 40 else 80 if n <= 300 else 8
    fig, ax = plt.subplots(figsize=(7, 7))
    nx.draw_networkx_edges(graph, pos, ax=ax, alpha=0.35 if n <= 300 else 0.08, width=0.8)
    nx.draw_networkx_nodes(graph, pos, ax=ax, node_color=colours, node_size=size, linewidths=0)
    if n <= 40:
        nx.draw_networkx_labels(graph, pos, ax=ax, font_size=8, font_color="white")
    from matplotlib.lines import Line2D
    plain = "honest" if byzantine else "node"
    label = f"{plain}, safe" if assessed else f"{plain} (robustness not assessed)"
    legend = [Line2D([], [], marker="o", ls="", color="#1f77b4", label=label)]
    if at_risk:
        legend.append(Line2D([], [], marker="o", ls="", color="#ff7f0e", label="at risk"))
    if byzantine:
        legend.append(Line2D([], [], marker="o", ls="", color="#d62728", label="Byzantine"))
    ax.legend(handles=legend, loc="upper right", frameon=False)
    ax.set_title(title or graph.graph.get("spec", ""))
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)
