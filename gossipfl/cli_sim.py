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
