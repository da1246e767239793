"""`gossipfl audit`: verify, query, export and trace provenance logs."""

from __future__ import annotations

import sys

import click

from gossipfl.cli import friendly, main
from peer.provenance import KINDS


@main.group("audit")
def audit_group() -> None:
    """Verify and query provenance logs."""


@audit_group.command("verify")
@click.argument("dbs", nargs=-1, required=True, type=click.Path())
@friendly
def audit_verify(dbs: tuple[str, ...]) -> None:
    """Check every chain link and signature; exit 1 if any log is broken."""
    from peer.audit import verify_log

    broken = 0
    for db in dbs:
        v = verify_log(db)
        click.echo(v.line())
        broken += not v.ok
    if broken:
        sys.exit(1)


@audit_group.command("show")
@click.argument("db", type=click.Path())
@click.option("--round", "round_", type=int, help="only this round")
@click.option("--kind", type=click.Choice(KINDS))
@click.option("--peer", help="only events whose counterpart is this PeerId")
@click.option("--json", "as_json", is_flag=True, help="JSON lines for machines")
@friendly
def audit_show(db: str, round_, kind, peer, as_json: bool) -> None:
    """Show a log's events as a table."""
    import json as _json

    from rich.console import Console
    from rich.table import Table

    from peer.audit import load_events

    owner, events = load_events(db, round_=round_, kind=kind, peer=peer)
    if as_json:
        for e in events:
            click.echo(_json.dumps({"peer": owner, **e.to_dict()}))
        return
    table = Table(title=f"{db} (peer {owner})")
    for col in ("seq", "round", "kind", "counterpart", "update", "details"):
        table.add_column(col, overflow="fold")
    for e in events:
        details = ", ".join(f"{k}={_short(v)}" for k, v in sorted(e.details.items()) if k not in ("header", "sig"))
        table.add_row(str(e.seq), "" if e.round is None else str(e.round), e.kind,
                      (e.counterpart or "")[-10:], (e.update_hash or "")[:12], details)
    Console().print(table)


def _short(v) -> str:
    text = str(v)
    return text if len(text) <= 40 else text[:37] + "..."


@audit_group.command("trace")
@click.argument("update_hash")
@click.argument("dbs", nargs=-1, required=True, type=click.Path())
@click.option("--depth", default=3, show_default=True, type=click.IntRange(0, 100), help="rounds to follow back and forward")
@click.option("--json", "as_json", is_flag=True)
@click.option("--dot", "dot", type=click.Path(dir_okay=False), help="write a Graphviz file of the lineage")
@friendly
def audit_trace(update_hash: str, dbs, depth: int, as_json: bool, dot) -> None:
    """Where an update came from and which aggregations it fed, across many peers' logs."""
    import json as _json

    from rich.console import Console
    from rich.tree import Tree

    from peer.audit import lineage_dot, trace

    node = trace(update_hash, dbs, depth=depth)
    if dot:
        with open(dot, "w") as fh:
            fh.write(lineage_dot(node))
    if as_json:
        click.echo(_json.dumps(node.to_dict(), indent=2))
        return

    def describe(n) -> str:
        return f"{n.update[:16]} round {n.round} from {n.sender or 'unknown sender'}"

    root = Tree(f"[bold]{describe(node)}[/bold]")
    back = root.add("came from")
    def add_inputs(tree, n):
        for i in n.inputs:
            add_inputs(tree.add(describe(i)), i)
    add_inputs(back, node)
    fwd = root.add("fed")
    def add_fed(tree, n):
        for f in n.fed:
            sub = tree.add(f"aggregated by {f['peer']} in round {f['round']}")
            if f["next"]:
                nxt = sub.add(f"-> {describe(f['next'])}")
                add_fed(nxt, f["next"])
    add_fed(fwd, node)
    Console().print(root)


@audit_group.command("export")
@click.argument("db", type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl", show_default=True)
@click.option("--out", type=click.Path(dir_okay=False), help="file to write (default: standard output)")
@friendly
def audit_export(db: str, fmt: str, out) -> None:
    """Export a log as JSON lines or CSV."""
    from peer.audit import export

    text = export(db, fmt)
    if out:
        with open(out, "w") as fh:
            fh.write(text)
    else:
        click.echo(text, nl=False)
