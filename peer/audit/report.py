"""`audit report`: one self-contained HTML page for a fleet's logs (inline CSS, the lineage
PNG as a data: URI, no script, nothing fetched): verification per log, each peer's rounds,
accepted and rejected counts by reason, and the lineage picture of one update."""

from __future__ import annotations

import base64
import html
import os
import tempfile
from collections import Counter
from pathlib import Path

from ..state.provenance import EventKind
from .fleet import Fleet, short
from .lineage import draw_lineage, lineage, lineage_summary
from .query import rejections, timeline
from .verify import verify_log

CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#1d2430;background:#fff}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #d8dee8}
table{border-collapse:collapse;margin:6px 0 12px} td,th{border:1px solid #d8dee8;padding:3px 8px;text-align:left;
vertical-align:top} th{background:#f0f3f8} code{font-family:ui-monospace,monospace;font-size:12px}
.ok{color:#116b2f;font-weight:600}.bad{color:#b3261e;font-weight:600}.empty{color:#8a6d00;font-weight:600}
.muted{color:#6b7280}.grid td{min-width:64px;text-align:center;font-size:12px}
.agg{background:#e3f3e3}.skip{background:#fff4cc}.rej{background:#fbe0de}.none{background:#f7f7f7}
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


def _verification(fleet: Fleet) -> str:
    rows = []
    for log in fleet.logs:
        v = verify_log(log.path)
        cls = {"OK": "ok", "EMPTY": "empty"}.get(v.status, "bad")
        what = (f"{v.events} events, chain and signatures valid, {v.received_headers} sender headers re-verified"
                if v.ok else v.problem if v.status == "EMPTY" else f"event {v.first_bad}: {v.problem}")
        rows.append(f"<tr><td>{_e(fleet.name(log.owner))}</td><td class={cls}>{_e(v.status)}</td>"
                    f"<td>{_e(what)}</td><td><code>{_e(log.path)}</code></td></tr>")
    return ("<table><tr><th>peer</th><th>status</th><th>what was checked</th><th>log</th></tr>"
            + "".join(rows) + "</table>")


def _grid(fleet: Fleet) -> str:
    """Peers down, rounds across: aggregated, skipped, with rejections marked."""
    per_peer = {log.owner: {r.round: r for r in timeline(fleet, log.owner)}
                for log in fleet.logs if any(e.round is not None for e in log.events)}
    rounds = sorted({r for rows in per_peer.values() for r in rows})
    head = "".join(f"<th>{r}</th>" for r in rounds)
    body = []
    for owner, rows in sorted(per_peer.items(), key=lambda kv: fleet.name(kv[0])):
        cells = []
        for r in rounds:
            row = rows.get(r)
            if row is None:
                cells.append("<td class=none></td>")
                continue
            rej = sum(row.rejected.values()) + sum(row.unauthenticated.values())
            cls = "rej" if rej else "agg" if row.outcome.startswith("aggregated") else \
                "skip" if row.outcome.startswith("skipped") else "none"
            text = ("agg" if row.outcome.startswith("aggregated") else "skip" if row.outcome.startswith("skipped")
                    else "")
            text += f" +{len(row.accepted)}" if row.accepted else ""
            text += f" &#x2717;{rej}" if rej else ""
            title = _e("; ".join(x for x in [row.outcome, *row.notes,
                                              *(f"rejected {k} x{v}" for k, v in row.rejected.items()),
                                              *(f"unauthenticated {k} x{v}" for k, v in row.unauthenticated.items())]
                                 if x))
            cells.append(f"<td class={cls} title=\"{title}\">{text or '&middot;'}</td>")
        body.append(f"<tr><th>{_e(fleet.name(owner))}</th>{''.join(cells)}</tr>")
    legend = ("<p class=muted>agg = aggregated, skip = kept own model, +n = updates accepted, "
              "&#x2717;n = messages rejected (hover a cell for details)</p>")
    return f"<table class=grid><tr><th>peer \\ round</th>{head}</tr>{''.join(body)}</table>{legend}"


def _counts(fleet: Fleet) -> str:
    rows = []
    for log in sorted(fleet.logs, key=lambda lg: fleet.name(lg.owner)):
        accepted = sum(1 for e in log.events if e.kind == EventKind.RECEIVED)
        proven, strangers = Counter(), Counter()
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
    sections = [("Verification", _verification(fleet)), ("Rounds per peer", _grid(fleet)),
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
