"""The `gossipfl` command. Each subcommand parses its arguments, calls one function of a
package, and prints; errors that a user can fix become one line and exit code 2."""

from __future__ import annotations

import functools
import sys

import click

from gossipfl import __version__


def user_errors() -> tuple[type[BaseException], ...]:
    """The project's typed errors: shown as one line, never a traceback."""
    from aggregation import AggregationError
    from gossip.errors import GossipError
    from peer.errors import PeerError
    from topology.errors import TopologyError

    return (AggregationError, GossipError, PeerError, TopologyError, OSError)


def friendly(fn):
    """Turn the project's typed errors into `error: ...` and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except user_errors() as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="gossipfl")
def main() -> None:
    """gossipfl: serverless peer-to-peer federated learning with signed, auditable,
    robustly aggregated updates."""


@main.command("rules")
def rules_cmd() -> None:
    """List the aggregation rules and pre-steps with their requirements."""
    from rich.console import Console
    from rich.table import Table

    from aggregation import PRE_REGISTRY, PRE_STEPS, REGISTRY, RULES

    table = Table(title="aggregation rules")
    table.add_column("name", no_wrap=True)
    for col in ("tolerates f when", "weights", "parameters", "what it does"):
        table.add_column(col)
    for name in RULES:
        r = REGISTRY[name]
        table.add_row(name, r.requirement, "yes" if r.takes_weights else "uniform only",
                      ", ".join(r.params), r.summary)
    for name in PRE_STEPS:
        r = PRE_REGISTRY[name]
        table.add_row(f"{name}+RULE", r.requirement, "passes on", ", ".join(r.params), r.summary)
    Console().print(table)


@main.command("keygen")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False), help="key file to write (mode 0600)")
@click.option("--force", is_flag=True, help="replace an existing key file")
@friendly
def keygen_cmd(out: str, force: bool) -> None:
    """Create an Ed25519 peer key and print its PeerId."""
    from gossip.identity import Identity, save_key

    ident = Identity.generate()
    save_key(ident, out, force=force)
    click.echo(ident.peer_id)


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
@click.option("--kind", type=click.Choice(["started", "trained", "sent", "received", "rejected", "aggregated",
                                           "checkpoint", "stopped", "skipped", "rate_limited"]))
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
@click.option("--depth", default=3, show_default=True, help="rounds to follow back and forward")
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


@main.group("topology")
def topology_group() -> None:
    """Generate, analyse and plan gossip topologies."""


def _graph_options(fn):
    fn = click.option("--seed", default=0, show_default=True, help="seed for random generators")(fn)
    fn = click.option("--allow-directed", is_flag=True, help="accept a directed file as undirected")(fn)
    fn = click.option("--allow-disconnected", is_flag=True, help="accept a disconnected graph")(fn)
    return fn


@topology_group.command("show")
@click.argument("graph")
@click.option("--rule", default="median", show_default=True, help="aggregation rule for the robustness check")
@click.option("--byzantine", type=float, default=None, help="attack budget: a count, or a fraction below 1")
@click.option("--png", type=click.Path(dir_okay=False), default="topology.png", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="print the analysis as JSON")
@_graph_options
@friendly
def topology_show(graph: str, rule: str, byzantine, png: str, as_json: bool, seed: int,
                  allow_directed: bool, allow_disconnected: bool) -> None:
    """Analyse GRAPH (a spec like regular:32,4 or a graph file) and draw it."""
    import json as _json

    from rich.console import Console
    from rich.table import Table

    from topology import resolve, summarize
    from topology.draw import draw

    g = resolve(graph, seed=seed, allow_directed=allow_directed, allow_disconnected=allow_disconnected)
    summary, report = summarize(g, rule if byzantine is not None else None, byzantine)
    at_risk = report.at_risk if report else ()
    draw(g, png, title=graph, at_risk=at_risk)
    if as_json:
        click.echo(_json.dumps({**summary.to_dict(), "png": png}, default=str))
        return
    table = Table(title=f"topology {graph}")
    table.add_column("property")
    table.add_column("value")
    for k, v in summary.rows():
        table.add_row(k, v)
    console = Console()
    console.print(table)
    if report and report.at_risk:
        shown = ", ".join(str(v) for v in report.at_risk[:20])
        more = f" and {len(report.at_risk) - 20} more" if len(report.at_risk) > 20 else ""
        console.print(f"[yellow]at risk[/yellow] (too few neighbours for {rule} against "
                      f"{report.budget} Byzantine): {shown}{more}")
    console.print(f"drawing: {png}")
