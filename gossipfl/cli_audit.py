"""`gossipfl audit`: verify, query, trace, report and export provenance logs.

Wherever a hash is asked for, any unambiguous prefix works; peers are named by plan name,
PeerId prefix or suffix, or log path; LOGS may be log files or folders holding them (a plan).
Nothing here needs a model: torch and libp2p are never imported."""

from __future__ import annotations

import json
import sys

import click

from gossipfl.cli import friendly, main
from peer.state.provenance import KINDS

_plan_option = click.option("--plan", "plan", type=click.Path(file_okay=False),
                            help="plan folder whose trust.toml names the peers (default: found next to each log)")
_json_option = click.option("--json", "as_json", is_flag=True, help="JSON for scripts")


def _console():
    from rich.console import Console

    return Console(soft_wrap=False, markup=False)  # log text is data, never markup: "[a, b]" stays


class _Titled:
    """A table with its title as a line of its own above it (a title wrapped to the width of a
    narrow table reads badly); rich renders it as a group of the two."""

    def __init__(self, title: str, table):
        self.title, self.table = title, table

    def add_row(self, *cells) -> None:
        self.table.add_row(*cells)

    @property
    def row_count(self) -> int:
        return self.table.row_count

    def __rich__(self):
        from rich.console import Group
        from rich.text import Text

        return Group(Text(self.title, style="bold"), self.table)


def _table(title: str, columns: list[str], wide: tuple[str, ...] = (), narrow: tuple[str, ...] = ()):
    """A table that fits the terminal (COLUMNS; 80 when not a terminal): no vertical rules, one
    space between columns; `narrow` columns (numbers, short hashes) keep their width, the others
    wrap at word boundaries and give way first, `wide` ones most."""
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, padding=(0, 1, 0, 0), pad_edge=False, show_edge=False, expand=False)
    for col in columns:
        table.add_column(col, overflow="fold", no_wrap=col in narrow, ratio=2 if col in wide else None,
                         min_width=len(col) if col in narrow else min(len(col), 8))
    return _Titled(title, table)


def _json_out(obj) -> None:
    click.echo(json.dumps(obj, indent=2))


def _fleet(logs, plan):
    from peer.audit.fleet import Fleet

    return Fleet.load(logs, plan)


@main.group("audit")
def audit_group() -> None:
    """Verify and query provenance logs: LOGS are log files or folders holding them (a plan)."""


@audit_group.command("verify")
@click.argument("dbs", nargs=-1, required=True, type=click.Path())
@friendly
def audit_verify(dbs: tuple[str, ...]) -> None:
    """Check every chain link and signature; exit 1 if any log is broken."""
    from peer.audit.fleet import expand_logs
    from peer.audit.verify import verify_log

    broken = 0
    for db in expand_logs(dbs):
        v = verify_log(db)
        click.echo(v.line())
        broken += not v.ok
    if broken:
        sys.exit(1)


# --- show ---------------------------------------------------------------------------------


def _value(v, fleet) -> str:
    """A details value for people: hashes cut to 10 characters, longer hex (raw signed bytes) to
    a prefix and its size, PeerIds as names, lists joined."""
    if isinstance(v, str):
        if len(v) >= 20 and len(v) % 2 == 0 and all(c in "0123456789abcdef" for c in v):
            return v[:10] if len(v) <= 64 else f"{v[:10]}.. ({len(v) // 2} bytes)"
        if v.startswith("12D3KooW") and len(v) > 40:
            return fleet.name(v)
        return v
    if isinstance(v, list):
        return "[" + ", ".join(_value(x, fleet) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_value(x, fleet)}" for k, x in sorted(v.items())) + "}"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _details(details: dict, fleet, kind: str = "") -> str:
    if kind == "membership":  # the admin's record: what it says; its signed bytes by prefix and size
        return _membership(details, fleet)
    return "\n".join(f"{k}={_value(v, fleet)}" for k, v in sorted(details.items()) if k not in ("header", "sig", "accountant"))


def _membership(d: dict, fleet) -> str:
    nbrs = [fleet.name(n) if isinstance(n, str) else "?" for n in d.get("neighbours") or ()]
    lines = [f"{d.get('action', '?')} {fleet.name(d.get('peer')) if isinstance(d.get('peer'), str) else '?'}"
             f", epoch {d.get('epoch', '?')}"]
    if nbrs:
        lines.append("neighbours " + ", ".join(nbrs))
    if d.get("addr"):
        lines.append(f"addr {d['addr']}")
    signed = d.get("bytes")
    lines.append(f"record {_value(d.get('record') or '', fleet)}"
                 + (f" ({len(signed) // 2} bytes signed by the admin)" if isinstance(signed, str) else ""))
    return "\n".join(lines)


@audit_group.command("show")
@click.argument("db", type=click.Path())
@click.option("--round", "round_", type=int, help="only this round")
@click.option("--kind", type=click.Choice(KINDS), help="only events of this kind")
@click.option("--peer", help="only events whose counterpart is this peer (plan name, PeerId prefix or suffix)")
@click.option("--update", help="only events about this update or model (hash prefix)")
@_plan_option
@_json_option
@friendly
def audit_show(db: str, round_, kind, peer, update, plan, as_json: bool) -> None:
    """Show a log's events as a table (names, short hashes, details wrapped)."""
    fleet = _fleet([db], plan)
    log = fleet.logs[0]
    counterpart = fleet.resolve_peer(peer) if peer else None
    target = fleet.resolve_update(update) if update else None
    events = [e for e in log.events if (round_ is None or e.round == round_) and (kind is None or e.kind == kind)
              and (counterpart is None or e.counterpart == counterpart)
              and (target is None or e.update_hash == target or target in e.details.get("inputs", ()))]
    if as_json:
        for e in events:
            click.echo(json.dumps({"peer": log.owner, **e.to_dict()}))
        return
    table = _table(f"{log.path} (peer {fleet.label(log.owner)}): {len(events)} events",
                   ["seq", "round", "kind", "peer", "update", "hash", "details"], wide=("details",),
                   narrow=("seq", "round", "update", "hash"))
    for e in events:
        table.add_row(str(e.seq), "" if e.round is None else str(e.round), e.kind,
                      fleet.name(e.counterpart) if e.counterpart else "", (e.update_hash or "")[:10],
                      e.hash[:10], _details(e.details, fleet, e.kind))
    _console().print(table)


# --- the questions ---------------------------------------------------------------------------


@audit_group.command("inputs")
@click.argument("logs", nargs=-1, required=True, type=click.Path())
@click.option("--peer", required=True, help="whose model (plan name, PeerId prefix or suffix, log path)")
@click.option("--round", "round_", required=True, type=int, help="the round of the aggregation")
@_plan_option
@_json_option
@friendly
def audit_inputs(logs, peer: str, round_: int, plan, as_json: bool) -> None:
    """Which updates went into a peer's model at a round, who signed them, and what was rejected."""
    from peer.audit.query import model_inputs

    fleet = _fleet(logs, plan)
    ans = model_inputs(fleet, fleet.resolve_peer(peer), round_)
    if as_json:
        return _json_out(ans.to_dict())
    console = _console()
    model = f", model {ans.model[:10]}" if ans.model else ""
    console.print(f"peer {fleet.label(ans.peer)}, round {ans.round}: {ans.outcome}"
                  f"{f' ({ans.rule})' if ans.rule else ''}{model}", soft_wrap=True)
    if ans.inputs:
        t = _table("inputs", ["update", "signed by", "how we know"], narrow=("update",))
        for i in ans.inputs:
            how = ("its own update" if i["own"] else "signed header kept in the log" if i["verified"]
                   else "named by the aggregation only")
            t.add_row(i["update"][:10], fleet.label(i["signer"]), how)
        console.print(t)
    if ans.rejected:
        t = _table("rejected (sender proven by its signature)", ["sender", "update", "reason", "detail"],
                   wide=("detail",), narrow=("update",))
        for r in ans.rejected:
            t.add_row(fleet.label(r["sender"]), (r["update"] or "")[:10], r["reason"], r["detail"])
        console.print(t)
    if ans.unauthenticated:
        t = _table("rejected before any signature held (claimed senders, not proof)",
                   ["reason", "count", "claimed to come from"], wide=("claimed to come from",))
        for r in ans.unauthenticated:
            t.add_row(r["reason"], str(r["count"]), ", ".join(fleet.label(c) for c in r["claimed"]) or "-")
        console.print(t)


@audit_group.command("where")
@click.argument("update")
@click.argument("logs", nargs=-1, required=True, type=click.Path())
@_plan_option
@_json_option
@friendly
def audit_where(update: str, logs, plan, as_json: bool) -> None:
    """Where did an update go: who accepted, rejected and aggregated it, in which rounds."""
    from peer.audit.query import update_story

    fleet = _fleet(logs, plan)
    s = update_story(fleet, fleet.resolve_update(update))
    if as_json:
        return _json_out(s.to_dict())
    console = _console()
    origin = fleet.label(s.origin) if s.origin else "a sender whose log is not here"
    console.print(f"{s.what} {s.update[:12]} of {origin}, round {s.round}", soft_wrap=True)
    if s.sent_to:
        console.print(f"  sent to: {', '.join(fleet.name(p) for p in s.sent_to)}", soft_wrap=True)
    if s.inputs:
        console.print(f"  combined: {', '.join(fleet.describe_hash(h) for h in s.inputs)}", soft_wrap=True)
    t = _table("what happened to it", ["round", "peer", "what", "detail"], wide=("detail",), narrow=("round",))
    for a in s.accepted_by:
        t.add_row(str(a["round"]), fleet.label(a["peer"]), "accepted", "")
    for r in s.rejected_by:
        t.add_row(str(r["round"]), fleet.label(r["peer"]), "rejected", f"{r['reason']}: {r['detail']}")
    for g in s.aggregated_by:
        t.add_row(str(g["round"]), fleet.label(g["peer"]), "aggregated", f"into model {(g['model'] or '')[:10]}")
    if t.row_count:
        console.print(t)
    else:
        console.print("  no peer in these logs received, rejected or aggregated it")


@audit_group.command("timeline")
@click.argument("logs", nargs=-1, required=True, type=click.Path())
@click.option("--peer", required=True, help="plan name, PeerId prefix or suffix, or log path")
@click.option("--from", "first", type=int, help="first round (default: the first logged)")
@click.option("--to", "last", type=int, help="last round (default: the last logged)")
@_plan_option
@_json_option
@friendly
def audit_timeline(logs, peer: str, first, last, plan, as_json: bool) -> None:
    """What a peer did round by round: trained, sent, accepted, rejected, aggregated."""
    from peer.audit.query import timeline

    fleet = _fleet(logs, plan)
    pid = fleet.resolve_peer(peer)
    rows = timeline(fleet, pid, first, last)
    if as_json:
        return _json_out([r.to_dict() for r in rows])
    span = f"round {rows[0].round}" if len(rows) == 1 else f"rounds {rows[0].round} to {rows[-1].round}"
    t = _table(f"timeline of peer {fleet.label(pid)}, {span}",
               ["round", "loss", "sent", "accepted from", "rejected", "outcome"], wide=("outcome", "rejected"),
               narrow=("round",))
    for r in rows:
        loss = f"{r.trained['loss']:.3f}" if isinstance(r.trained.get("loss"), float) else ""
        rejected = [f"{k} x{v}" for k, v in sorted(r.rejected.items())]
        rejected += [f"{k} x{v} (claimed)" for k, v in sorted(r.unauthenticated.items())]
        outcome = "\n".join(x for x in [r.outcome + (f" -> {r.model[:10]}" if r.model else ""), *r.notes] if x)
        sent = f"{r.sent[:10]}\n({r.sent_to} neighbour{'' if r.sent_to == 1 else 's'})" if r.sent else ""
        t.add_row(str(r.round), loss, sent, ", ".join(fleet.name(p) for p in r.accepted), "\n".join(rejected),
                  outcome)
    _console().print(t)


@audit_group.command("rejections")
@click.argument("logs", nargs=-1, required=True, type=click.Path())
@_plan_option
@_json_option
@friendly
def audit_rejections(logs, plan, as_json: bool) -> None:
    """Which peers ever sent something rejected, by reason (and what strangers claimed)."""
    from peer.audit.query import rejections

    fleet = _fleet(logs, plan)
    rj = rejections(fleet)
    if as_json:
        return _json_out(rj.to_dict())
    console = _console()
    if not rj.proven and not rj.unauthenticated:
        console.print(f"no rejections in {len(fleet.logs)} logs")
        return
    if rj.proven:
        t = _table("senders proven by their signature", ["sender", "reason", "count", "rejected by", "rounds"],
                   wide=("rounds",), narrow=("count",))
        for r in rj.proven:
            t.add_row(fleet.label(r["sender"]), r["reason"], str(r["count"]),
                      ", ".join(fleet.name(p) for p in r["by"]), _rounds(r["rounds"]))
        console.print(t)
    if rj.unauthenticated:
        t = _table("unauthenticated input (the sender is only claimed: anyone can claim anyone)",
                   ["reason", "count", "claimed senders", "rejected by", "rounds"], wide=("claimed senders",),
                   narrow=("count",))
        for r in rj.unauthenticated:
            claimed = ", ".join(f"{fleet.label(c['peer'])} x{c['times']}" for c in r["claimed"]) or "-"
            t.add_row(r["reason"], str(r["count"]), claimed, ", ".join(fleet.name(p) for p in r["by"]),
                      _rounds(r["rounds"]))
        console.print(t)


MAX_ROUND_RUNS = 8


def _rounds(rounds: list[int]) -> str:
    """Sorted rounds for people: runs as "3..9"; past MAX_ROUND_RUNS runs, their span and count
    (--json lists every round)."""
    runs: list[list[int]] = []
    for r in rounds:
        if runs and r == runs[-1][1] + 1:
            runs[-1][1] = r
        else:
            runs.append([r, r])
    if len(runs) > MAX_ROUND_RUNS:
        return f"{len(rounds)} rounds from {rounds[0]} to {rounds[-1]}"
    return ", ".join(str(a) if a == b else f"{a}, {b}" if b == a + 1 else f"{a}..{b}" for a, b in runs)


# --- lineage --------------------------------------------------------------------------------


@audit_group.command("trace")
@click.argument("update_hash")
@click.argument("dbs", nargs=-1, required=True, type=click.Path())
@click.option("--depth", default=3, show_default=True, type=click.IntRange(0, 100),
              help="steps to follow back and forward")
@click.option("--png", "png", type=click.Path(dir_okay=False),
              help="where to draw the lineage [default: lineage-<short hash>.png; not with --json or --dot]")
@click.option("--dot", "dot", type=click.Path(dir_okay=False), help="also write a Graphviz file of the lineage")
@_plan_option
@_json_option
@friendly
def audit_trace(update_hash: str, dbs, depth: int, png, dot, plan, as_json: bool) -> None:
    """Where an update (or a model) came from and what it fed, drawn as a graph."""
    from peer.audit.lineage import draw_lineage, lineage, lineage_dot, lineage_summary

    fleet = _fleet(dbs, plan)
    target = fleet.resolve_update(update_hash)
    g = lineage(fleet, target, depth)
    if png is None and not as_json and not dot:
        png = f"lineage-{target[:10]}.png"
    if png:
        from topology.draw import check_image_path

        check_image_path(png)
        summary = lineage_summary(fleet, g)
        draw_lineage(fleet, g, png, title=f"lineage of {summary['kind']} {target[:10]} "
                                          f"(peer {summary['name'] or '?'}, round {summary['round']})")
    if dot:
        with open(dot, "w") as fh:
            fh.write(lineage_dot(fleet, g))
    s = lineage_summary(fleet, g)
    if as_json:
        return _json_out(s)

    def one(n) -> str:
        return f"{n['update'][:10]} ({n['kind']} of {n['name'] or '?'}, round {n['round']})"

    console = _console()
    console.print(f"{one(s)}: {g.number_of_nodes()} updates within {depth} steps", soft_wrap=True)
    console.print("  came from: " + (", ".join(map(one, s["inputs"])) or "nothing in these logs"), soft_wrap=True)
    if s["rejected_inputs"]:
        console.print("  refused inputs: " + ", ".join(map(one, s["rejected_inputs"])), soft_wrap=True)
    console.print("  fed: " + (", ".join(map(one, s["fed"])) or "nothing in these logs"), soft_wrap=True)
    for path, what in ((png, "drawing"), (dot, "graphviz")):
        if path:
            console.print(f"{what}: {path}", soft_wrap=True)


@audit_group.command("report")
@click.argument("logs", nargs=-1, required=True, type=click.Path())
@click.option("--out", required=True, type=click.Path(file_okay=False), help="folder to write index.html into")
@click.option("--update", help="update or model to draw the lineage of (hash prefix; default: the newest "
                               "aggregated model of the first log)")
@click.option("--depth", default=3, show_default=True, type=click.IntRange(0, 20),
              help="rounds of lineage to draw back from the update")
@_plan_option
@friendly
def audit_report(logs, out: str, update, depth: int, plan) -> None:
    """One self-contained HTML page for a fleet's logs: verification, timelines, rejections, lineage."""
    from peer.audit.report import write_report

    fleet = _fleet(logs, plan)
    path = write_report(fleet, out, update=fleet.resolve_update(update) if update else None, depth=depth)
    click.echo(f"report: {path}")


@audit_group.command("export")
@click.argument("db", type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl", show_default=True,
              help="one JSON object per event, or CSV with a header row")
@click.option("--out", type=click.Path(dir_okay=False), help="file to write (default: standard output)")
@friendly
def audit_export(db: str, fmt: str, out) -> None:
    """Export a log as JSON lines or CSV."""
    from peer.audit.verify import export

    text = export(db, fmt)
    if out:
        with open(out, "w") as fh:
            fh.write(text)
    else:
        click.echo(text, nl=False)
