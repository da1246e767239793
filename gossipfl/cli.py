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
    from sim.errors import ScenarioError
    from topology.errors import TopologyError

    return (AggregationError, GossipError, PeerError, TopologyError, ScenarioError, OSError)


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


@main.group("peer")
def peer_group() -> None:
    """Run and configure one peer."""


@peer_group.command("init")
@click.option("--dir", "directory", default=".", show_default=True, type=click.Path(file_okay=False),
              help="where to write peer.toml, peer.key and a one-peer trust.toml")
@click.option("--force", is_flag=True, help="overwrite existing files")
@friendly
def peer_init(directory: str, force: bool) -> None:
    """Write a commented example peer.toml and a new key."""
    from pathlib import Path

    from gossip.identity import Identity, save_key
    from gossip.trust import build_trust_list
    from peer.errors import ConfigError
    from peer.example import example_config

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    cfg = d / "peer.toml"
    if cfg.exists() and not force:
        raise ConfigError(f"{cfg} exists (use --force to overwrite)")
    ident = Identity.generate()
    save_key(ident, d / "peer.key", force=force)
    cfg.write_text(example_config())
    trust = d / "trust.toml"
    if force or not trust.exists():
        trust.write_text(build_trust_list("my-network", [{"id": ident.peer_id, "name": "gateway-1"}]).to_toml())
    click.echo(f"wrote {cfg}, {d / 'peer.key'} and {trust}; this peer is {ident.peer_id}")
    click.echo("add your neighbours' PeerIds to network.neighbours and trust.toml, then: "
               f"gossipfl peer start --config {cfg}")


@peer_group.command("start")
@click.option("--config", "config", required=True, type=click.Path(dir_okay=False))
@click.option("--rounds", type=click.IntRange(0), default=None, help="stop after this many rounds (default: from the config)")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("-v", "--verbose", is_flag=True, help="log every rejection")
@friendly
def peer_start(config: str, rounds, log_format: str, verbose: bool) -> None:
    """Run a peer until its rounds are done or it gets SIGINT/SIGTERM."""
    import asyncio
    import logging

    from peer import logs
    from peer.config import load_config
    from peer.service import serve

    cfg = load_config(config)
    logs.setup(log_format, logging.DEBUG if verbose else logging.INFO)
    sys.exit(asyncio.run(serve(cfg, rounds)))


@peer_group.command("id")
@click.option("--config", "config", required=True, type=click.Path(dir_okay=False))
@friendly
def peer_id_cmd(config: str) -> None:
    """Print this peer's PeerId and the multiaddrs others dial, without starting it."""
    from gossip.identity import load_key
    from peer.config import load_config

    cfg = load_config(config)
    ident = load_key(cfg.key)
    click.echo(ident.peer_id)
    if cfg.transport.kind == "libp2p":
        for addr in cfg.transport.listen:
            click.echo(f"{addr}/p2p/{ident.peer_id}")
    elif cfg.transport.kind == "mqtt":
        click.echo(f"mqtt://{cfg.transport.host}:{cfg.transport.port} topic "
                   f"{cfg.transport.topic_prefix}/{cfg.network}/{ident.peer_id}/inbox")


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
@click.option("--force", is_flag=True, help="replace an existing plan folder (new keys!)")
@_graph_options
@friendly
def topology_plan(graph: str, out: str, network_id: str, transport: str, host: str, base_port: int, broker: str,
                  rule: str, f: int, force: bool, seed: int, allow_directed: bool, allow_disconnected: bool) -> None:
    """Write a key, a peer.toml per node and a shared trust list for GRAPH."""
    from peer.errors import ConfigError
    from peer.plan import write_plan
    from topology import resolve

    g = resolve(graph, seed=seed, allow_directed=allow_directed, allow_disconnected=allow_disconnected)
    mqtt_host, _, mqtt_port = broker.rpartition(":")
    if not mqtt_host or not mqtt_port.isdigit() or not 0 < int(mqtt_port) < 65536:
        raise ConfigError(f"--broker must be HOST:PORT with a TCP port, got {broker!r}")
    nodes = write_plan(g, out, network_id=network_id, transport=transport, host=host, base_port=base_port,
                       mqtt_host=mqtt_host, mqtt_port=int(mqtt_port), force=force,
                       overrides={"aggregation": {"rule": rule, "f": f}})
    click.echo(f"planned {len(nodes)} peers in {out} (trust list, plan.json, analysis.json, topology.png)")
    for n in nodes[:8]:
        click.echo(f"  gossipfl peer start --config {n.config}")
    if len(nodes) > 8:
        click.echo(f"  ... and {len(nodes) - 8} more")


def _console():
    """Rich console; 120 columns when output is not a terminal (CI logs, pipes)."""
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=120)


def _print_outcome(outcome, title: str, quiet: bool) -> None:
    from sim import report

    console = _console()
    if not quiet:
        console.print(report.table(outcome.rows, title))
    console.print(f"results: {outcome.out} (summary.json, metrics.jsonl, metrics.csv, "
                  f"{', '.join(p.name for p in outcome.plots)}, per-run topology.png and peers/*/data/provenance.db)")


@main.group("sim")
def sim_group() -> None:
    """Simulate many peers on one machine."""


@sim_group.command("run")
@click.argument("scenario", type=click.Path(dir_okay=False))
@click.option("--sweep", multiple=True, help="KEY=V1,V2 (aggregator, attack, byzantine, topology, partition, ...)")
@click.option("--out", type=click.Path(file_okay=False), default=None, help="results folder (default: results/NAME)")
@click.option("--quiet", is_flag=True, help="no progress bar or table")
@friendly
def sim_run(scenario: str, sweep, out, quiet: bool) -> None:
    """Run SCENARIO.toml (optionally a grid of variants) and write metrics, plots and logs."""
    from sim.run import run_all
    from sim.scenario import expand, load, parse_sweep

    base = load(scenario)
    scenarios = expand(base, parse_sweep(list(sweep))) if sweep else [base]
    outcome = run_all(scenarios, out or f"results/{base.name}", quiet=quiet)
    _print_outcome(outcome, f"simulation {base.name}", quiet)


@main.command("demo")
@click.option("--rounds", default=30, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--nodes", default=16, show_default=True, type=click.IntRange(10, 1000))
@click.option("--out", type=click.Path(file_okay=False), default="demo-results", show_default=True)
@click.option("--quiet", is_flag=True)
@friendly
def demo_cmd(rounds: int, nodes: int, out: str, quiet: bool) -> None:
    """16 peers on a small-world graph, non-IID digits, 3 sign-flip attackers: mean vs robust rules."""
    from sim.demo import demo_scenarios
    from sim.run import run_all

    console = _console()
    console.print(f"[bold]gossipfl demo[/bold]: {nodes} peers gossip signed updates over a small-world graph; "
                  "3 of them send sign-flipped models. Plain averaging vs robust aggregation, plus an attack-free run.")
    outcome = run_all(demo_scenarios(rounds, nodes), out, quiet=quiet)
    _print_outcome(outcome, f"demo: {nodes} peers, {rounds} rounds, non-IID digits", quiet)
    rows = {(r["rule"], r["attack"]): r for r in outcome.rows}
    clean = rows.get(("mean", "none"))
    attacked = next((r for r in outcome.rows if r["rule"] == "mean" and r["attack"] != "none"), None)
    best = max((r for r in outcome.rows if r["attack"] != "none" and r["rule"] != "mean"),
               key=lambda r: r["mean_accuracy"], default=None)
    if clean and attacked and best:
        console.print(f"attack-free gossip averaging: {100 * clean['mean_accuracy']:.1f}%; under "
                      f"{attacked['attack']}: "
                      f"{100 * attacked['mean_accuracy']:.1f}%; best robust rule ({best['rule']}): "
                      f"{100 * best['mean_accuracy']:.1f}%")
    console.print(f"audit any peer's log: gossipfl audit verify {out}/*/peers/*/data/provenance.db")
