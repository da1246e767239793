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
    """The fleet as a table that fits 80 columns: the eval metric's name goes in the header when
    every peer reports the same one, and why a peer is offline goes below the table (an error
    is a sentence, not a cell)."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    from peer.ops.status import per_gateway

    names = {r.metric for r in rows if r.metric is not None}
    one_metric = names.pop() if len(names) == 1 else None
    table = Table(title=f"fleet: {sum(r.online for r in rows)}/{len(rows)} online", title_justify="left",
                  padding=(0, 1, 0, 0), pad_edge=False, box=None, header_style="bold")
    personal = any(r.personal is not None for r in rows)  # [personalization]: the model each gateway serves
    for col in ("peer", "round", one_metric or "eval", *(("personal",) if personal else ()), "loss", "heard",
                "since agg", "rejected", "status"):
        table.add_column(col, justify="left" if col in ("peer", "status") else "right", overflow="fold")
    notes = []
    for r in rows:
        if r.metric is None:
            quality = "-"
        else:
            quality = _num(r.value) if one_metric else f"{r.metric} {_num(r.value)}"
        heard = "-" if r.heard is None else f"{r.heard}/{'?' if r.neighbours is None else r.neighbours}"
        status = Text("online", style="green") if r.online else Text("offline", style="red")
        if r.source:
            status.append(f" ({r.source})")
        if r.reachability or r.links:
            status.append(f" {r.reachability or '?'}")
            kinds = sorted(set(r.links.values()))
            status.append("".join(f" {sum(k == kind for k in r.links.values())} {kind}" for kind in kinds))
        label = f"{r.name} (..{r.peer_id[-8:]})"
        if not r.online and r.error:
            notes.append(Text(f"{label} is offline: {r.error}"))
        mine = (_num(r.personal),) if personal else ()
        table.add_row(label, "-" if r.round is None else str(r.round), quality, *mine, _num(r.loss), heard,
                      _age(r.since_aggregation), "-" if r.rejected is None else str(r.rejected), status)
    spread = per_gateway(rows)
    if spread is not None and spread["gateways"] > 1:
        notes.append(Text(f"per gateway ({spread['metric']} of the model each serves, {spread['gateways']} "
                          f"gateways): worst {_num(spread['worst'])}, 10th percentile {_num(spread['p10'])}, "
                          f"median {_num(spread['median'])}"))
    if any(r.source and r.metric is None for r in rows):
        notes.append(Text("eval and loss are '-' for peers that keep them to themselves (the default; "
                          "[metrics] share_learning_metrics = true publishes them)", style="dim"))
    return Group(table, *notes)


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
@click.option("--username", help="broker login that reads every status [default: the plan's dashboard login]")
@click.option("--password-file", type=click.Path(dir_okay=False),
              help="its password [default: PLAN/broker/dashboard.password, found from the paths given]")
@friendly
def fleet_status_cmd(paths, watch: bool, interval: float, as_json: bool, source: str, timeout: float,
                     username, password_file) -> None:
    """Show every peer of a plan folder (or of peer.toml files): round, eval metric, training
    loss, neighbours heard, age of the last aggregation, rejections, online; for libp2p peers
    their reachability and how many links are direct, hole-punched or relayed (--json: each one). Eval and loss
    show "-" for peers that keep their learning metrics to themselves (the default)."""
    import asyncio
    import time

    from rich.console import Console
    from rich.live import Live

    from peer.ops.status import dashboard_login, fleet_status, members

    group = members(list(paths))
    login = dashboard_login(list(paths), username, password_file) if source != "metrics" else None

    def rows():
        return asyncio.run(fleet_status(group, timeout, source, login))

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
