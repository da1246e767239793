"""`gossipfl fleet`: watch (and, later, change) a running fleet."""

from __future__ import annotations

import json

import click

from gossipfl.cli import friendly, main


@main.group("fleet")
def fleet_group() -> None:
    """Watch a running fleet."""


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.4g}"


def status_table(rows):
    from rich.table import Table

    table = Table(title=f"fleet: {sum(r.online for r in rows)}/{len(rows)} online")
    for col in ("peer", "round", "eval", "train loss", "heard", "last aggregation", "rejected", "online"):
        table.add_column(col, justify="left" if col in ("peer", "eval", "online") else "right")
    for r in rows:
        quality = "-" if r.metric is None else f"{r.metric} {_num(r.value)}"
        heard = "-" if r.heard is None else f"{r.heard}/{'?' if r.neighbours is None else r.neighbours}"
        online = ("[green]online[/]" if r.online else f"[red]offline[/] {r.error}") + \
            (f" ({r.source})" if r.source else "")
        table.add_row(f"{r.name} (..{r.peer_id[-8:]})", "-" if r.round is None else str(r.round), quality,
                      _num(r.loss), heard, _age(r.since_aggregation), "-" if r.rejected is None else str(r.rejected),
                      online)
    return table


@fleet_group.command("status")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--watch", is_flag=True, help="refresh the table until Ctrl-C")
@click.option("--interval", type=click.FloatRange(0.5, 3600), default=2.0, show_default=True,
              help="seconds between refreshes with --watch")
@click.option("--json", "as_json", is_flag=True, help="one JSON document (a list of peers) for scripts")
@click.option("--source", type=click.Choice(["auto", "metrics", "mqtt"]), default="auto", show_default=True,
              help="metrics endpoints, MQTT status topics, or metrics where a peer has an endpoint")
@click.option("--timeout", type=click.FloatRange(0.1, 60), default=3.0, show_default=True,
              help="seconds to wait for each peer")
@friendly
def fleet_status_cmd(paths, watch: bool, interval: float, as_json: bool, source: str, timeout: float) -> None:
    """Show every peer of a plan folder (or of peer.toml files): round, eval metric, training
    loss, neighbours heard, age of the last aggregation, rejections, online."""
    import asyncio
    import time

    from rich.console import Console
    from rich.live import Live

    from peer.ops.status import fleet_status, members

    group = members(list(paths))

    def rows():
        return asyncio.run(fleet_status(group, timeout, source))

    if as_json and not watch:
        click.echo(json.dumps([r.to_dict() for r in rows()], indent=1))
        return
    if not watch:
        Console().print(status_table(rows()))
        return
    try:
        if as_json:  # one document per refresh, one per line
            while True:
                click.echo(json.dumps([r.to_dict() for r in rows()]))
                time.sleep(interval)
        with Live(status_table(rows()), auto_refresh=False) as live:
            while True:
                time.sleep(interval)
                live.update(status_table(rows()), refresh=True)
    except KeyboardInterrupt:
        pass
