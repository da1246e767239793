"""`gossipfl topology`: graphs, their analysis and deployment plans."""

from __future__ import annotations

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


@topology_group.command("plan")
@click.argument("graph")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="folder to write the plan into")
@click.option("--network-id", default="gossipfl", show_default=True)
@click.option("--transport", type=click.Choice(["libp2p", "mqtt", "memory"]), default="libp2p", show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True, help="libp2p: the address every node listens on")
@click.option("--base-port", default=4001, show_default=True, type=click.IntRange(1, 65535), help="libp2p: node i listens on base-port + i")
@click.option("--broker", default="127.0.0.1:1883", show_default=True, help="mqtt: HOST:PORT of the broker")
@click.option("--rule", default="median", show_default=True, help="aggregation rule for every node")
@click.option("--f", "f", default=1, show_default=True, type=click.IntRange(0), help="Byzantine neighbours each node tolerates")
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
@_graph_options
@friendly
def topology_plan(graph: str, out: str, network_id: str, transport: str, host: str, base_port: int, broker: str,
                  rule: str, f: int, allow_weak: bool, install_dir: str, service_user: str, gossipfl_path,
                  watchdog_sec: int, force: bool, seed: int, allow_directed: bool, allow_disconnected: bool) -> None:
    """Write a key, a peer.toml and a systemd unit per node, a shared trust list and the
    network's admin key (in OUT/admin: move it off this machine) for GRAPH.

    Refuses a plan in which some node's neighbourhood is too small for --rule at --f
    (it would keep its own model every round), and says what would work."""
    from peer.errors import ConfigError
    from peer.ops.plan import ADMIN_DIR, check_robustness, weak_plan_message, write_plan
    from peer.ops.systemd import GatewayLayout
    from topology import resolve

    g = resolve(graph, seed=seed, allow_directed=allow_directed, allow_disconnected=allow_disconnected)
    mqtt_host, _, mqtt_port = broker.rpartition(":")
    if not mqtt_host or not mqtt_port.isdigit() or not 0 < int(mqtt_port) < 65536:
        raise ConfigError(f"--broker must be HOST:PORT with a TCP port, got {broker!r}")
    overrides = {"aggregation": {"rule": rule, "f": f}}
    gateway = GatewayLayout(install_dir, service_user, gossipfl_path, watchdog_sec)
    nodes = write_plan(g, out, network_id=network_id, transport=transport, host=host, base_port=base_port,
                       mqtt_host=mqtt_host, mqtt_port=int(mqtt_port), force=force, overrides=overrides,
                       allow_weak=allow_weak, gateway=gateway)
    units = ", a systemd unit per node" if nodes and nodes[0].unit else ""
    click.echo(f"planned {len(nodes)} peers in {out} (trust list, plan.json, analysis.json, topology.png{units})")
    check = check_robustness(g, overrides)
    if not check.ok:
        click.echo("warning: " + weak_plan_message(check, refused=False), err=True)
    click.echo(f"the network's admin key is in {out}/{ADMIN_DIR}: move it off this machine; never copy it to a "
               "gateway")
    for n in nodes[:8]:
        click.echo(f"  gossipfl peer start --config {n.config}")
    if len(nodes) > 8:
        click.echo(f"  ... and {len(nodes) - 8} more")
