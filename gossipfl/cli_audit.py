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


def _table(title: str, columns: list[str], wide: tuple[str, ...] = ()):
    from rich.table import Table

    table = Table(title=title, title_justify="left", expand=False)
    for col in columns:
        table.add_column(col, overflow="fold", no_wrap=col not in wide, ratio=3 if col in wide else None)
    return table


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
    """A details value for people: hashes cut to 10 characters, PeerIds as names, lists joined."""
    if isinstance(v, str):
        if len(v) == 64 and all(c in "0123456789abcdef" for c in v):
            return v[:10]
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


def _details(details: dict, fleet) -> str:
    return "\n".join(f"{k}={_value(v, fleet)}" for k, v in sorted(details.items()) if k not in ("header", "sig", "accountant"))


@audit_group.command("show")
@click.argument("db", type=click.Path())
@click.option("--round", "round_", type=int, help="only this round")
@click.option("--kind", type=click.Choice(KINDS))
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
                   ["seq", "round", "kind", "peer", "update", "hash", "details"], wide=("details",))
    for e in events:
        table.add_row(str(e.seq), "" if e.round is None else str(e.round), e.kind,
                      fleet.name(e.counterpart) if e.counterpart else "", (e.update_hash or "")[:10],
                      e.hash[:10], _details(e.details, fleet))
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
        t = _table("inputs", ["update", "signed by", "how we know"])
        for i in ans.inputs:
            how = ("its own update" if i["own"] else "signed header kept in the log" if i["verified"]
                   else "named by the aggregation only")
            t.add_row(i["update"][:10], fleet.label(i["signer"]), how)
        console.print(t)
    if ans.rejected:
        t = _table("rejected (sender proven by its signature)", ["sender", "update", "reason", "detail"],
                   wide=("detail",))
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
    t = _table("what happened to it", ["round", "peer", "what", "detail"], wide=("detail",))
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
    t = _table(f"timeline of peer {fleet.label(pid)}",
               ["round", "loss", "sent", "accepted from", "rejected", "outcome"], wide=("outcome", "rejected"))
    for r in rows:
        loss = f"{r.trained['loss']:.3f}" if isinstance(r.trained.get("loss"), float) else ""
        rejected = [f"{k} x{v}" for k, v in sorted(r.rejected.items())]
        rejected += [f"{k} x{v} (claimed)" for k, v in sorted(r.unauthenticated.items())]
        outcome = "\n".join(x for x in [r.outcome + (f" -> {r.model[:10]}" if r.model else ""), *r.notes] if x)
        t.add_row(str(r.round), loss, f"{(r.sent or '')[:10]}" + (f" to {r.sent_to}" if r.sent_to else ""),
                  ", ".join(fleet.name(p) for p in r.accepted), "\n".join(rejected), outcome)
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
                   wide=("rounds",))
        for r in rj.proven:
            t.add_row(fleet.label(r["sender"]), r["reason"], str(r["count"]),
                      ", ".join(fleet.name(p) for p in r["by"]), _rounds(r["rounds"]))
        console.print(t)
    if rj.unauthenticated:
        t = _table("unauthenticated input (the sender is only claimed: anyone can claim anyone)",
                   ["reason", "count", "claimed senders", "rejected by", "rounds"], wide=("claimed senders",))
        for r in rj.unauthenticated:
            claimed = ", ".join(f"{fleet.label(c['peer'])} x{c['times']}" for c in r["claimed"]) or "-"
            t.add_row(r["reason"], str(r["count"]), claimed, ", ".join(fleet.name(p) for p in r["by"]),
                      _rounds(r["rounds"]))
        console.print(t)


def _rounds(rounds: list[int]) -> str:
    if len(rounds) > 6 and rounds == list(range(rounds[0], rounds[-1] + 1)):
        return f"{rounds[0]}..{rounds[-1]}"
    return ", ".join(map(str, rounds))


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
@click.option("--depth", default=3, show_default=True, type=click.IntRange(0, 20))
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
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl", show_default=True)
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
