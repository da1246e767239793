"""The rounds-by-peers picture of a fleet: one cell per peer and round saying what the peer's
log shows for it (aggregated, kept its own model, rejected something, revoked, nothing), with
the fleet's history (peer_history, membership records) marked on it. The report draws it twice:
a heat map PNG of the whole history that fits any page (1,000 rounds x 100 peers is one
picture), and an HTML table of the same cells with the details, in a scroll container."""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field

import numpy as np

from .fleet import Fleet
from .lifecycle import Happening, fleet_history, revoked_at
from .query import RoundRow, timeline

# cell codes, their names in the legend, and their colours (the heat map's; the HTML table uses
# lighter ones for its text to stay readable)
NONE, AGGREGATED, SKIPPED, REJECTED, OTHER, REVOKED = range(6)
LEGEND = ("nothing logged", "aggregated", "kept its own model", "rejected something (not just late)",
          "trained, no outcome",
          "revoked (its neighbours reject it)")
COLOURS = ("#f2f2f2", "#57b35a", "#f2c14e", "#d9443c", "#9db4cf", "#7b4fa6")
MARKS = {"started": "\u25b6", "restarted": "\u21ba", "crash-resume": "\u21af", "stopped": "\u25a0",
         "jump": "\u00bb", "budget-spent": "\u03b5", "diverged": "!"}
MARK_STYLE = {"started": (">", "#1d2430"), "restarted": ("o", "#1d2430"), "crash-resume": ("X", "#e8590c"),
              "stopped": ("s", "#1d2430"), "jump": (">", "#1c7ed6"), "budget-spent": ("D", "#7b4fa6"),
              "diverged": ("d", "#d9443c")}
MEMBERSHIP_COLOURS = {"admit": "#1f7a8c", "revoke": "#7b4fa6", "rotate": "#b5651d"}


@dataclass
class Grid:
    peers: list[str]                       # owners, rows in display order
    first: int                             # rounds first..last, every round a column
    last: int
    cells: np.ndarray                      # (peers, rounds) int8 codes
    rows: dict[str, dict[int, RoundRow]]   # the timeline rows behind the cells
    marks: dict[tuple[str, int], list[Happening]] = field(default_factory=dict)  # lifecycle per cell
    membership: list[Happening] = field(default_factory=list)
    revoked: dict[str, int] = field(default_factory=dict)  # peer -> round of its revocation

    @property
    def rounds(self) -> range:
        return range(self.first, self.last + 1)


TIMING = frozenset({"stale_round", "future_round"})  # late or early updates: the network, not a fault


def natural(name: str) -> list:
    """Sort key that puts g2 before g10 (numbers compared as numbers)."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", name) if part]


def _code(row: RoundRow) -> int:
    if any(k not in TIMING for k in (*row.rejected, *row.unauthenticated)):
        return REJECTED
    if row.outcome.startswith("aggregated"):
        return AGGREGATED
    if row.outcome.startswith("skipped"):
        return SKIPPED
    return OTHER if row.trained or row.sent else NONE


def build_grid(fleet: Fleet) -> Grid | None:
    """The grid of the logs that logged rounds; None when none did."""
    logs = sorted((lg for lg in fleet.logs if any(e.round is not None for e in lg.events)),
                  key=lambda lg: natural(fleet.name(lg.owner)))
    if not logs:
        return None
    rows = {lg.owner: {r.round: r for r in timeline(fleet, lg.owner)} for lg in logs}
    first = min(min(r) for r in rows.values())
    last = max(max(r) for r in rows.values())
    peers = [lg.owner for lg in logs]
    cells = np.zeros((len(peers), last - first + 1), dtype=np.int8)
    revoked = revoked_at(fleet)
    for i, owner in enumerate(peers):
        for r, row in rows[owner].items():
            cells[i, r - first] = _code(row)
        if owner in revoked:  # what the revoked peer did afterwards, nobody accepted
            gone = max(revoked[owner] - first, 0)
            cells[i, gone:][cells[i, gone:] != NONE] = REVOKED
    history = fleet_history(fleet)
    marks: dict[tuple[str, int], list[Happening]] = {}
    for h in history:
        if h.kind not in MEMBERSHIP_COLOURS and h.round is not None and h.peer in rows:
            marks.setdefault((h.peer, h.round), []).append(h)
    return Grid(peers, first, last, cells, rows, marks, [h for h in history if h.kind in MEMBERSHIP_COLOURS],
                revoked)


def heat_map_png(fleet: Fleet, grid: Grid, width_px: int = 1400) -> bytes:
    """The whole grid as one PNG: peers down, rounds across, membership records as vertical
    lines, lifecycle events as markers."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.artist import Artist
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    n_peers, n_rounds = grid.cells.shape
    dpi = 100
    row_in = 0.22 if n_peers <= 30 else 0.12
    fig = Figure(figsize=(width_px / dpi, 2.2 + row_in * n_peers), dpi=dpi)
    ax = fig.add_subplot()
    ax.imshow(grid.cells, aspect="auto", interpolation="nearest", cmap=ListedColormap(COLOURS),
              vmin=0, vmax=len(COLOURS) - 1, extent=(grid.first - 0.5, grid.last + 0.5, n_peers - 0.5, -0.5))
    ax.set_yticks(range(n_peers), [fleet.name(p) for p in grid.peers], fontsize=8 if n_peers <= 30 else 6)
    ax.set_xlabel("round")
    ax.set_xlim(grid.first - 0.5, grid.last + 0.5)
    index = {p: i for i, p in enumerate(grid.peers)}
    for h in grid.membership:
        if h.round is None:
            continue  # a record every peer applied only at start-up (round None): no round to draw it at
        colour = MEMBERSHIP_COLOURS.get(h.kind, "#1d2430")
        ax.axvline(h.round - 0.5, color=colour, linewidth=2, linestyle="--")
        ax.annotate(f"{h.kind} {fleet.name(h.peer)}", (h.round - 0.5, -0.5), xytext=(3, 4),
                    textcoords="offset points", color=colour, fontsize=8, fontweight="bold",
                    annotation_clip=False, va="bottom")
    by_kind: dict[str, list[tuple[int, int]]] = {}
    for (peer, r), hs in grid.marks.items():
        for h in hs:
            by_kind.setdefault(h.kind, []).append((r, index[peer]))
    for kind, points in by_kind.items():
        marker, colour = MARK_STYLE[kind]
        xs, ys = zip(*points, strict=True)
        ax.scatter(xs, ys, marker=marker, s=70 if n_peers <= 30 else 18, color=colour, edgecolors="white",
                   linewidths=0.8, zorder=3)
    handles: list[Artist] = [Patch(color=c, label=label) for c, label in zip(COLOURS, LEGEND, strict=True)]
    handles += [Line2D([], [], marker=MARK_STYLE[k][0], color=MARK_STYLE[k][1], linestyle="", label=k)
                for k in MARK_STYLE if k in by_kind]
    handles += [Line2D([], [], color=c, linestyle="--", label=f"{k} (membership record)")
                for k, c in MEMBERSHIP_COLOURS.items() if any(h.kind == k for h in grid.membership)]
    fig.legend(handles=handles, loc="lower center", ncol=5, fontsize=8, frameon=False)
    fig.subplots_adjust(left=0.08, right=0.99, top=1 - 0.45 / fig.get_figheight(),
                        bottom=1.25 / fig.get_figheight())
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()
