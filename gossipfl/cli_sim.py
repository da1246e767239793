"""`gossipfl sim` and `gossipfl demo`: simulations on one machine."""

from __future__ import annotations

import click

from gossipfl.cli import friendly, main


def _console():
    """Rich console; 120 columns when output is not a terminal (CI logs, pipes)."""
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=120)


def _print_outcome(outcome, title: str, quiet: bool) -> None:
    from sim import report

    console = _console()
    for w in outcome.warnings:
        console.print(f"[yellow]warning:[/yellow] {w}")
    if not quiet:
        console.print(report.table(outcome.rows, title))
        ranking = report.sweep_plots.regimes(outcome.rows, outcome.results)
        if len({r["regime"] for r in ranking}) > 1 and len({r["rule"] for r in ranking}) > 1:
            console.print(report.regimes_table(ranking, outcome.results[0].metric))
    engines = {r["engine"] for r in outcome.rows}
    logs = "per-run topology.png (small graphs)"
    if "protocol" in engines:
        logs += " and peers/*/data/provenance.db"
    if "batched" in engines:
        logs += "; batched runs write no provenance logs (no wire: see summary.json)"
    console.print(f"results: {outcome.out} (summary.json, metrics.jsonl, metrics.csv, "
                  f"{', '.join(p.name for p in outcome.plots)}, {logs})")


@main.group("sim")
def sim_group() -> None:
    """Simulate many peers on one machine (or a Ray cluster)."""


@sim_group.command("run")
@click.argument("scenario", type=click.Path(dir_okay=False))
@click.argument("sweep_items", nargs=-1, metavar="[KEY=V1,V2 ...]")
@click.option("--sweep", multiple=True, help="KEY=V1,V2: run every combination (aggregator, attack, byzantine, "
              "topology, dataset, ... or a field name such as attack.kind); also as extra arguments")
@click.option("--engine", type=click.Choice(["auto", "protocol", "batched"]), default=None,
              help="override the scenario's engine (auto: protocol up to 100 nodes, batched beyond)")
@click.option("--ray", "ray_address", default=None, metavar="auto|ADDRESS",
              help="run the sweep's points as Ray tasks (auto: a running cluster, else a local one)")
@click.option("--shards", type=click.IntRange(0, 4096), default=0,
              help="with --ray: split each batched run over this many Ray actors")
@click.option("--out", type=click.Path(file_okay=False), default=None, help="results folder (default: results/NAME)")
@click.option("--quiet", is_flag=True, help="no progress bar or table")
@friendly
def sim_run(scenario: str, sweep_items, sweep, engine, ray_address, shards: int, out, quiet: bool) -> None:
    """Run SCENARIO.toml (optionally a grid of variants) and write metrics, plots and logs.

    \b
    gossipfl sim run s.toml --sweep aggregator=mean,median attack=none,sign_flip,alie
    gossipfl sim run s.toml --engine batched --ray auto --shards 2
    """
    from sim.errors import ScenarioError
    from sim.run import run_all
    from sim.scenario import expand, load, parse_sweep

    items = list(sweep) + list(sweep_items)
    for item in sweep_items:
        if "=" not in item:
            raise ScenarioError(f"unexpected argument {item!r}: sweep items are KEY=V1,V2 (e.g. attack=none,alie)")
    if shards > 1 and not ray_address:
        raise ScenarioError("--shards needs --ray auto|ADDRESS (the shards are Ray actors)")
    base = load(scenario)
    scenarios = expand(base, parse_sweep(items)) if items else [base]
    outcome = run_all(scenarios, out or f"results/{base.name}", quiet=quiet, engine=engine, ray=ray_address,
                      shards=shards, console=_console())
    _print_outcome(outcome, f"simulation {base.name}", quiet)


@sim_group.command("attacks")
@click.option("--json", "as_json", is_flag=True, help="print the registry as JSON instead of a table")
@friendly
def sim_attacks(as_json: bool) -> None:
    """List every attack: what it sends, its parameters, and how it acts in each engine."""
    from sim.attacks import REGISTRY

    rows = [{"name": a.name, "family": a.family, "sends": a.summary, "params": a.defaults,
             "engines": list(a.engines), "batched": a.batched, "protocol": a.protocol} for a in REGISTRY.values()]
    if as_json:
        import json

        click.echo(json.dumps(rows, indent=1, default=str))
        return
    from rich.table import Table

    table = Table(title="attacks (attack.kind)", show_lines=True)
    for col in ("name", "family", "what the attacker sends", "params", "batched engine", "protocol engine"):
        table.add_column(col, overflow="fold")
    for r in rows:
        params = ", ".join(f"{k}={v}" for k, v in r["params"].items()) or "-"
        table.add_row(r["name"], r["family"], r["sends"], params, r["batched"] or "-", r["protocol"] or "-")
    _console().print(table)


@sim_group.command("init")
@click.argument("path", type=click.Path(dir_okay=False), default="scenario.toml")
@click.option("--force", is_flag=True, help="overwrite an existing file")
@friendly
def sim_init(path: str, force: bool) -> None:
    """Write a commented example scenario to PATH (default scenario.toml)."""
    import tomllib
    from pathlib import Path

    from sim.errors import ScenarioError
    from sim.scenario import EXAMPLE, build

    build(tomllib.loads(EXAMPLE))  # the example is always a valid scenario
    p = Path(path)
    if p.exists() and not force:
        raise ScenarioError(f"{p} exists; use --force to overwrite it")
    p.write_text(EXAMPLE)
    click.echo(f"wrote {p}; run it with: gossipfl sim run {p}")


@main.command("demo")
@click.option("--rounds", default=30, show_default=True, type=click.IntRange(1, 100_000), help="gossip rounds")
@click.option("--nodes", default=16, show_default=True, type=click.IntRange(10, 1000), help="peers in the graph")
@click.option("--out", type=click.Path(file_okay=False), default="demo-results", show_default=True,
              help="results folder")
@click.option("--quiet", is_flag=True, help="no progress bar or table")
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
