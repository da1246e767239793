"""`audit report`: one self-contained HTML page for a fleet's logs (inline CSS, the pictures as
data: URIs, no script, nothing fetched): verification per log, the fleet's membership and
lifecycle history (admit, revoke, start, stop, crash-resume, catch-up jumps), each peer's rounds
(a heat map of the whole history, and the details in a table that scrolls under sticky headers),
accepted and rejected counts by reason, and the lineage picture of one update."""

from __future__ import annotations

import base64
import html
import os
import tempfile
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

from ..state.provenance import EventKind
from .fleet import Fleet, short
from .grid import AGGREGATED, MARKS, REJECTED, REVOKED, SKIPPED, Grid, build_grid, heat_map_png
from .lifecycle import Happening, fleet_history
from .lineage import draw_lineage, lineage, lineage_summary
from .query import rejections
from .verify import verify_log

MAX_GRID_CELLS = 120_000  # the detail table's cells (1,000 rounds x 100 peers fit); the heat map has all

CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#1d2430;background:#fff}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #d8dee8}
table{border-collapse:collapse;margin:6px 0 12px} td,th{border:1px solid #d8dee8;padding:3px 8px;text-align:left;
vertical-align:top} th{background:#f0f3f8} code{font-family:ui-monospace,monospace;font-size:12px}
.ok{color:#116b2f;font-weight:600}.bad{color:#b3261e;font-weight:600}.empty{color:#8a6d00;font-weight:600}
.muted{color:#6b7280}.nw{white-space:nowrap}
.scroll{overflow:auto;max-width:100%;max-height:70vh;border:1px solid #d8dee8;margin:6px 0 12px}
.scroll table{margin:0;border-collapse:separate;border-spacing:0}
.scroll td,.scroll th{border-width:0 1px 1px 0}
.scroll thead th{position:sticky;top:0;z-index:2}
.scroll tbody th{position:sticky;left:0;z-index:1;white-space:nowrap}
.scroll thead th:first-child{left:0;z-index:3}
.grid td{min-width:26px;padding:2px 3px;text-align:center;font-size:12px;white-space:nowrap}
.grid th{padding:2px 4px;font-size:12px}
.agg{background:#e3f3e3}.skip{background:#fff4cc}.rej{background:#fbe0de}.none{background:#f7f7f7}
.rv{background:#e6dcf2}.th-revoke{background:#7b4fa6!important;color:#fff}
.th-admit{background:#1f7a8c!important;color:#fff}
.ev-revoke td{background:#efe6f8}.ev-admit td{background:#e3f1f4}.ev-crash-resume td{background:#fde8d7}
.ev-jump td{background:#e3eefc}
img{max-width:100%;border:1px solid #d8dee8}
"""


def _e(x) -> str:
    return html.escape(str(x), quote=True)


def _default_update(fleet: Fleet) -> str | None:
    """The newest aggregated model of the first log: the end of a story with a past."""
    for e in reversed(fleet.logs[0].events if fleet.logs else []):
        if e.kind == EventKind.AGGREGATED and e.update_hash:
            return e.update_hash
    for log in fleet.logs:
        for e in reversed(log.events):
            if e.kind == EventKind.SENT and e.update_hash:
                return e.update_hash
    return None


NAMES_SHOWN = 12  # peers named in one cell of the history; the rest counted


def _names(fleet: Fleet, peers: list[str]) -> str:
    names = [fleet.name(p) for p in peers]
    more = f" and {len(names) - NAMES_SHOWN} more" if len(names) > NAMES_SHOWN else ""
    return ", ".join(names[:NAMES_SHOWN]) + more


def _verification(fleet: Fleet) -> str:
    rows, ok = [], 0
    for log in fleet.logs:
        v = verify_log(log.path)
        ok += v.ok
        cls = {"OK": "ok", "EMPTY": "empty"}.get(v.status, "bad")
        what = (f"{v.events} events, chain and signatures valid, {v.received_headers} sender headers re-verified"
                if v.ok else v.problem if v.status == "EMPTY" else f"event {v.first_bad}: {v.problem}")
        rows.append(f"<tr><th>{_e(fleet.name(log.owner))}</th><td class={cls}>{_e(v.status)}</td>"
                    f"<td>{_e(what)}</td><td><code>{_e(log.path)}</code></td></tr>")
    return (f"<p class={'ok' if ok == len(fleet.logs) else 'bad'}>{ok} of {len(fleet.logs)} logs verified</p>"
            "<div class=scroll><table><thead><tr><th>peer</th><th>status</th><th>what was checked</th><th>log</th>"
            f"</tr></thead><tbody>{''.join(rows)}</tbody></table></div>")


def _history(fleet: Fleet) -> str:
    """Membership records and each peer's starts, stops, crashes and jumps, in time order; what
    many peers did alike at one round (all started at round 0) is one row naming them."""
    history = fleet_history(fleet)
    if not history:
        return "<p class=muted>no lifecycle or membership events in these logs</p>"
    counts = Counter(h.kind for h in history)
    summary = ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items()))
    groups: dict[tuple, list] = {}
    for h in history:
        key = (h.kind, h.round, h.text) if not h.applied else (id(h),)
        groups.setdefault(key, []).append(h)
    rows = []
    for hs in groups.values():
        h = hs[0]
        who = fleet.label(h.peer) if len(hs) == 1 else f"{len(hs)} peers: {_names(fleet, [x.peer for x in hs])}"
        by_round: dict[int | None, list[str]] = {}
        for a in h.applied:
            by_round.setdefault(a["round"], []).append(a["peer"])
        detail = "; ".join(f"applied at round {r} by {_names(fleet, ps)}" for r, ps in by_round.items())
        when = datetime.fromtimestamp(min(x.ts for x in hs), UTC).strftime("%Y-%m-%d %H:%M:%S")
        rows.append(f"<tr class=ev-{_e(h.kind)}><td>{'' if h.round is None else h.round}</td><td class=nw>{when}</td>"
                    f"<td>{_e(h.kind)}</td><td>{_e(who)}</td><td>{_e(h.text)}"
                    f"{f'<br><span class=muted>{_e(detail)}</span>' if detail else ''}</td></tr>")
    return (f"<p>{_e(summary)}. Membership records are the admin's signed word (once per record, with "
            "every peer that applied it); a crash-resume is a start after a log that did not end with "
            "<code>stopped</code>; a jump is a peer catching up with its neighbours' round.</p>"
            "<div class=scroll><table class=history><thead><tr><th>round</th><th>time (UTC)</th><th>event</th>"
            f"<th>peer</th><th>what</th></tr></thead><tbody>{''.join(rows)}</tbody></table></div>")


CELL_CLASS = {AGGREGATED: "agg", SKIPPED: "skip", REJECTED: "rej", REVOKED: "rv"}  # else "none"


def _cell(grid: Grid, owner: str, r: int, code: int) -> str:
    row = grid.rows[owner].get(r)
    marks = grid.marks.get((owner, r), [])
    if row is None and not marks:
        return "<td class=none></td>"
    rej = 0 if row is None else sum(row.rejected.values()) + sum(row.unauthenticated.values())
    text = "".join(MARKS[h.kind] for h in marks)
    text += str(len(row.accepted)) if row and row.accepted else ""
    text += f"&#x2717;{rej}" if rej else ""
    notes = [h.text for h in marks]
    if row is not None:
        notes += [row.outcome, *row.notes, *(f"rejected {k} x{v}" for k, v in row.rejected.items()),
                  *(f"unauthenticated {k} x{v}" for k, v in row.unauthenticated.items())]
    if code == REVOKED:
        notes.append(f"revoked at round {grid.revoked[owner]}: its neighbours reject it")
    if code == AGGREGATED and not marks and not rej and row is not None and not row.notes:
        notes = []  # the common case says nothing a hover would add (the page stays small at scale)
    title = "; ".join(x for x in notes if x)
    title = f' title="{_e(title)}"' if title else ""
    return f"<td class={CELL_CLASS.get(code, 'none')}{title}>{text or '&middot;'}</td>"


def _grid(fleet: Fleet) -> str:
    """The heat map of every round, then the details (peers down, rounds across) in a scroll
    container whose round numbers and peer names stay in view."""
    grid = build_grid(fleet)
    if grid is None:
        return "<p class=muted>no rounds in these logs</p>"
    png = base64.b64encode(heat_map_png(fleet, grid)).decode("ascii")
    n_peers, n_rounds = grid.cells.shape
    alt = f"rounds {grid.first} to {grid.last} of {n_peers} peers"
    out = (f"<p>{n_peers} peers, rounds {grid.first} to {grid.last}. The heat map shows every round "
           "(zoom in with the browser); the table below has the details of each cell.</p>"
           f"<img class=heat alt=\"heat map: {_e(alt)}\" src=\"data:image/png;base64,{png}\">")
    shown = grid.rounds
    if n_peers * n_rounds > MAX_GRID_CELLS:
        keep = max(MAX_GRID_CELLS // n_peers, 1)
        shown = range(grid.last - keep + 1, grid.last + 1)
        out += (f"<p class=muted>The table shows the last {keep} rounds ({shown[0]} to {shown[-1]}); "
                "the heat map above shows them all.</p>")
    membership: dict[int | None, list[Happening]] = {}
    for h in grid.membership:
        membership.setdefault(h.round, []).append(h)
    head = []
    for r in shown:
        hs = membership.get(r, [])
        if hs:
            what = "; ".join(h.text for h in hs)
            head.append(f"<th class=th-{_e(hs[0].kind)} title=\"{_e(what)}\">{r} "
                        f"{_e(', '.join(f'{h.kind} {fleet.name(h.peer)}' for h in hs))}</th>")
        else:
            head.append(f"<th>{r}</th>")
    body = []
    for i, owner in enumerate(grid.peers):
        cells = "".join(_cell(grid, owner, r, int(grid.cells[i, r - grid.first])) for r in shown)
        body.append(f"<tr><th>{_e(fleet.label(owner))}</th>{cells}</tr>")
    legend = ("<p class=muted>n = updates accepted, &#x2717;n = messages rejected; green aggregated, yellow kept "
              "its own model, red rejected something (late updates alone stay green), purple revoked; "
              + ", ".join(f"{m} {k}" for k, m in MARKS.items()) + " (hover a cell for details)</p>")
    return (out + f"<div class=scroll><table class=grid><thead><tr><th>peer \\ round</th>{''.join(head)}"
            f"</tr></thead><tbody>{''.join(body)}</tbody></table></div>{legend}")


def _counts(fleet: Fleet) -> str:
    rows = []
    for log in sorted(fleet.logs, key=lambda lg: fleet.name(lg.owner)):
        accepted = sum(1 for e in log.events if e.kind == EventKind.RECEIVED)
        proven: Counter[str] = Counter()
        strangers: Counter[str] = Counter()
        for e in log.events:
            if e.kind == EventKind.REJECTED:
                reason = str(e.details.get("reason", "?"))
                if e.counterpart is None and e.details.get("authenticated") is False:
                    strangers[reason] += int(e.details.get("count", 1)) if isinstance(e.details.get("count"), int) else 1
                else:
                    proven[reason] += 1
        fmt = lambda c: ", ".join(f"{k} {v}" for k, v in sorted(c.items())) or "-"  # noqa: E731
        rows.append(f"<tr><td>{_e(fleet.name(log.owner))}</td><td>{accepted}</td><td>{_e(fmt(proven))}</td>"
                    f"<td>{_e(fmt(strangers))}</td></tr>")
    table = ("<table><tr><th>peer</th><th>accepted</th><th>rejected (sender proven)</th>"
             "<th>rejected unauthenticated (counts)</th></tr>" + "".join(rows) + "</table>")
    rj = rejections(fleet)
    senders = "".join(
        f"<tr><td>{_e(fleet.label(r['sender']))}</td><td>{_e(r['reason'])}</td><td>{r['count']}</td>"
        f"<td>{_e(', '.join(fleet.name(p) for p in r['by']))}</td></tr>" for r in rj.proven)
    claimed = "".join(
        f"<tr><td>{_e(r['reason'])}</td><td>{r['count']}</td><td>"
        f"{_e(', '.join(fleet.label(c['peer']) + ' x' + str(c['times']) for c in r['claimed']) or '-')}</td></tr>"
        for r in rj.unauthenticated)
    out = table
    if senders:
        out += ("<h3>Senders of rejected updates (proven by their signature)</h3><table><tr><th>sender</th>"
                f"<th>reason</th><th>count</th><th>rejected by</th></tr>{senders}</table>")
    if claimed:
        out += ("<h3>Unauthenticated input: claimed senders, not proof</h3><table><tr><th>reason</th>"
                f"<th>count</th><th>claimed to come from</th></tr>{claimed}</table>")
    return out


def _lineage(fleet: Fleet, update: str | None, depth: int) -> str:
    if update is None:
        return "<p class=muted>no update in these logs to draw</p>"
    g = lineage(fleet, update, depth)
    s = lineage_summary(fleet, g)
    caption = f"lineage of {s['kind']} {short(update, 12)} (peer {s['name'] or '?'}, round {s['round']})"
    with tempfile.TemporaryDirectory() as tmp:
        png = Path(tmp) / "lineage.png"
        draw_lineage(fleet, g, png, title=caption)
        data = base64.b64encode(png.read_bytes()).decode("ascii")
    return (f"<p>{_e(caption)}: {g.number_of_nodes()} updates within {depth} steps; inputs "
            f"{_e(', '.join(short(i['update']) for i in s['inputs']) or 'none')}.</p>"
            f"<img alt=\"{_e(caption)}\" src=\"data:image/png;base64,{data}\">")


def render_report(fleet: Fleet, update: str | None = None, depth: int = 3) -> str:
    update = update or _default_update(fleet)
    sections = [("Verification", _verification(fleet)), ("Membership and lifecycle", _history(fleet)),
                ("Rounds per peer", _grid(fleet)),
                ("Accepted and rejected", _counts(fleet)), ("Lineage", _lineage(fleet, update, depth))]
    body = "".join(f"<h2>{_e(title)}</h2>{content}" for title, content in sections)
    return ("<!doctype html><html lang=en><head><meta charset=utf-8>"
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; "
            "style-src 'unsafe-inline'\"><title>gossipfl audit report</title>"
            f"<style>{CSS}</style></head><body><h1>gossipfl audit report</h1>"
            f"<p class=muted>{len(fleet.logs)} provenance logs, "
            f"{sum(len(lg.events) for lg in fleet.logs)} events</p>{body}</body></html>\n")


def write_report(fleet: Fleet, out: str | os.PathLike, update: str | None = None, depth: int = 3) -> Path:
    """Write OUT/index.html; returns its path."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "index.html"
    path.write_text(render_report(fleet, update, depth), encoding="utf-8")
    return path
