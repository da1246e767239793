"""`gossipfl topology`: graphs, their analysis and deployment plans."""

from __future__ import annotations

from pathlib import Path

import click

from gossipfl.cli import friendly, main


@main.group("topology")
def topology_group() -> None:
    """Generate, analyse and plan gossip topologies."""


def _graph_options(fn):
    fn = click.option("--seed", default=0, show_default=True, type=click.IntRange(0, 2**32 - 1),
                      help="seed for random generators")(fn)
    fn = click.option("--allow-directed", is_flag=True, help="accept a directed file as undirected")(fn)
    fn = click.option("--allow-disconnected", is_flag=True, help="accept a disconnected graph")(fn)
    return fn


@topology_group.command("show")
@click.argument("graph")
@click.option("--rule", default="median", show_default=True, help="aggregation rule for the robustness check")
@click.option("--byzantine", type=float, default=None, help="attack budget: a count, or a fraction below 1")
@click.option("--png", type=click.Path(dir_okay=False), default="topology.png", show_default=True,
              help="where to write the drawing of the graph")
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
    from topology.draw import check_image_path, draw

    check_image_path(png)
    g = resolve(graph, seed=seed, allow_directed=allow_directed, allow_disconnected=allow_disconnected)
    summary, report = summarize(g, rule if byzantine is not None else None, byzantine)
    draw(g, png, title=graph, at_risk=report.at_risk if report else None)
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
    if report is None:
        console.print(f"robustness not assessed: give --byzantine (a count, or a fraction below 1) to check "
                      f"{rule} against an attack budget")
    elif report.at_risk:
        shown = ", ".join(str(v) for v in report.at_risk[:20])
        more = f" and {len(report.at_risk) - 20} more" if len(report.at_risk) > 20 else ""
        console.print(f"[yellow]at risk[/yellow] (too few neighbours for {rule} against "
                      f"{report.budget} Byzantine): {shown}{more}")
    console.print(f"drawing: {png}")


def _transport_names():
    from peer.transports import names

    return list(names())


def _transport_owner() -> dict[str, str]:
    from dataclasses import fields

    from peer.transports import KINDS

    return {f.name: k.name for k in KINDS.values() for f in fields(k.plan_settings) if f.metadata.get("cli", True)}


def _transport_plan_options(fn):
    """One option per field of every transport's plan settings (peer.transports): adding a
    transport adds its options here, with no edit of this file."""
    from dataclasses import MISSING, fields

    from peer.transports import KINDS

    seen: dict[str, str] = {}
    for kind in reversed(list(KINDS.values())):
        for f in reversed(fields(kind.plan_settings)):
            if not f.metadata.get("cli", True):
                continue
            if f.name in seen:
                raise RuntimeError(f"transport plan option {f.name} declared by {seen[f.name]} and {kind.name}")
            seen[f.name] = kind.name
            low, high = f.metadata.get("range", (None, None))
            typ = click.IntRange(low, high) if f.type in (int, "int") else str
            fn = click.option(f"--{f.name.replace('_', '-')}", f.name, type=typ, show_default=True,
                              default=None if f.default is MISSING else f.default, help=f.metadata.get("help"))(fn)
    return fn


def _plan_options(fn):
    """What every node inherits: a template and the obvious settings as options (they win)."""
    fn = click.option("--rounds", type=click.IntRange(0), default=None,
                      help="round.rounds: the round every peer stops at (0: run until stopped)")(fn)
    fn = click.option("--metrics", default=None, metavar="HOST:PORT",
                      help="[metrics] listen of node 0; node i serves on PORT + i")(fn)
    fn = click.option("--data-path", default=None,
                      help="data.path; {name} and {index} are the node's plan name and position, e.g. data/{name}.csv")(fn)
    fn = click.option("--data", "data_source", default=None,
                      help="data.source: digits | npz | csv | module:loader")(fn)
    fn = click.option("--learner", default=None, help="train.learner: classification or module:factory")(fn)
    fn = click.option("--model", default=None, help="model.name: mlp | cnn | module:factory")(fn)
    fn = click.option("--template", type=click.Path(dir_okay=False, exists=True), default=None,
                      help="a peer.toml whose tables (model, data, train, aggregation, round, metrics, privacy) "
                           "every node inherits; modules it names are copied from beside it")(fn)
    return fn


def plan_overrides(rule, f, model, learner, data_source, data_path, metrics, rounds) -> dict:
    """The options given, as tables over the template's."""
    tables: dict = {}
    for table, key, value in (("aggregation", "rule", rule), ("aggregation", "f", f), ("model", "name", model),
                              ("train", "learner", learner), ("data", "source", data_source),
                              ("data", "path", data_path), ("metrics", "listen", metrics), ("round", "rounds", rounds)):
        if value is not None:
            tables.setdefault(table, {})[key] = value
    return tables


@topology_group.command("plan")
@click.argument("graph")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="folder to write the plan into")
@click.option("--network-id", default="gossipfl", show_default=True,
              help="the id every signed update carries: peers reject updates of another network")
@click.option("--transport", type=click.Choice(_transport_names()), default="libp2p", show_default=True,
              help="how the peers reach each other")
@_transport_plan_options
@click.option("--rule", default=None, help="aggregation rule for every node [default: the template's, else median]")
@click.option("--f", "f", default=None, type=click.IntRange(0),
              help="Byzantine neighbours each node tolerates [default: the template's, else 1]")
@_plan_options
@click.option("--allow-weak", is_flag=True,
              help="write the plan even if some node has too few neighbours for --rule at --f")
@click.option("--install-dir", default="/opt/gossipfl", show_default=True,
              help="systemd units: where the plan's node folders and trust.toml live on the gateways")
@click.option("--service-user", default="gossipfl", show_default=True, help="systemd units: the user peers run as")
@click.option("--gossipfl-path", default=None,
              help="systemd units: the gossipfl command on the gateways [default: INSTALL_DIR/venv/bin/gossipfl]")
@click.option("--watchdog", "watchdog_sec", default=60, show_default=True, type=click.IntRange(1),
              help="systemd units: seconds without a sign of life before systemd restarts a peer")
@click.option("--force", is_flag=True, help="replace an existing plan folder (new keys!)")
@click.option("--requests", "requests_dir", default=None, type=click.Path(file_okay=False),
              help="a folder of enrolment requests (enrolment.json of `gossipfl peer init --enrol` on each gateway, "
                   "any *.json name): the node named in a request gets its PeerId, address and reachability, and no "
                   "key is written for it")
@_graph_options
@friendly
def topology_plan(graph: str, out: str, network_id: str, transport: str, rule, f, template, model, learner,
                  data_source, data_path, metrics, rounds, allow_weak: bool, install_dir: str, service_user: str,
                  gossipfl_path, watchdog_sec: int, force: bool, requests_dir, seed: int, allow_directed: bool,
                  allow_disconnected: bool, **transport_options) -> None:
    """Write a key, a peer.toml and a systemd unit per node, a shared trust list and the
    network's admin key (in OUT/admin: move it off this machine) for GRAPH.

    With --template, every node inherits the template's model, learner, data, training,
    round, metrics and privacy settings (the options above win over it); the modules it
    names are copied into each node folder.

    Refuses a plan in which some node's neighbourhood is too small for --rule at --f
    (it would keep its own model every round), and says what would work.

    For a real fleet, --requests plans gateways that made their own keys (`gossipfl peer init
    --enrol NETWORK --name NODE` on each): no private key of theirs is in the plan."""
    from click.core import ParameterSource

    from peer.errors import ConfigError
    from peer.ops.enrol import read_requests
    from peer.ops.plan import (
        ADMIN_DIR,
        PlanOptions,
        check_robustness,
        weak_plan_message,
        write_plan,
    )
    from peer.ops.systemd import GatewayLayout
    from peer.ops.template import NodeTemplate
    from peer.transports import kind_of
    from topology import resolve

    ctx = click.get_current_context()
    for name, owner in _transport_owner().items():
        if owner != transport and ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE:
            raise ConfigError(f"--{name.replace('_', '-')} applies to --transport {owner}, not {transport}")
    g = resolve(graph, seed=seed, allow_directed=allow_directed, allow_disconnected=allow_disconnected)
    tmpl = NodeTemplate.load(template) if template else None
    overrides = plan_overrides(rule, f, model, learner, data_source, data_path, metrics, rounds)
    opts = PlanOptions(network_id=network_id, transport=transport, transport_options=transport_options,
                       template=tmpl, overrides=overrides, allow_weak=allow_weak, force=force,
                       gateway=GatewayLayout(install_dir, service_user, gossipfl_path, watchdog_sec),
                       requests=read_requests(requests_dir) if requests_dir else None)
    nodes = write_plan(g, out, opts)
    units = ", a systemd unit per node" if nodes and nodes[0].unit else ""
    click.echo(f"planned {len(nodes)} peers in {out} (trust list, plan.json, analysis.json, topology.png{units})")
    enrolled = [n.label for n in nodes if n.enrolled]
    if enrolled:
        click.echo(f"enrolled with their own keys (none written): {', '.join(enrolled)}; hand each its folder and "
                   "trust.toml, beside the peer.key it made")
    if tmpl is not None:
        _report_template(tmpl, nodes)
    check = check_robustness(g, overrides, tmpl)
    if not check.ok:
        click.echo("warning: " + weak_plan_message(check, refused=False), err=True)
    click.echo(f"the network's admin key is in {out}/{ADMIN_DIR}: move it off this machine; never copy it to a "
               "gateway")
    if not kind_of(transport).deployed:
        click.echo(f"{transport} peers talk only inside one process: run them from Python "
                   "(peer.runtime.local.build_memory_network); a `peer start` of one of them runs alone")
    for n in nodes[:8]:
        click.echo(f"  gossipfl peer start --config {n.config}")
    if len(nodes) > 8:
        click.echo(f"  ... and {len(nodes) - 8} more")


def _report_template(tmpl, nodes) -> None:
    """What the template brought into the node folders, and what the user must still provide."""
    if tmpl.dropped:
        click.echo(f"template: {', '.join(tmpl.dropped)} ignored (each node's own: the plan writes them)")
    modules, elsewhere = tmpl.module_files()
    if modules:
        click.echo(f"copied into every node folder: {', '.join(m.name for m in modules)} (from {tmpl.folder})")
    for top in elsewhere:
        click.echo(f"note: module {top!r} is not beside the template: install it on every gateway (pip install) "
                   "or copy it into each node folder")
    pattern = tmpl.tables.get("data", {}).get("path")
    if isinstance(pattern, str) and not Path(pattern).is_absolute():
        wanting = [n for i, n in enumerate(nodes) if tmpl.data_file(tmpl.for_node(n.label, i, len(nodes)))[1] is None]
        if wanting:
            first = wanting[0]
            click.echo(f"note: data.path = {pattern!r}: no such file beside the template for {len(wanting)} node(s); "
                       f"put each one's file in its folder (e.g. {first.dir.name}/"
                       f"{tmpl.for_node(first.label, nodes.index(first), len(nodes))['data']['path']})")
        else:
            click.echo(f"copied each node's data ({pattern}) into its folder")
