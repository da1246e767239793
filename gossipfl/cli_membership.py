"""`gossipfl fleet admit` / `fleet revoke`: the network admin changes the fleet while it runs."""

from __future__ import annotations

import click

from gossipfl.cli import friendly
from gossipfl.cli_fleet import fleet_group


def _report(outcome) -> None:
    click.echo(f"epoch {outcome.epoch}: {outcome.action} {outcome.peer_id}  (record {outcome.record})")
    if outcome.config is not None:
        click.echo(f"new gateway: {outcome.config.parent}  (copy it to the gateway; start it with "
                   f"gossipfl peer start --config {outcome.config})")
    if outcome.broker is not None:
        files = f"{outcome.broker / 'passwd'} and {outcome.broker / 'acl'}"
        click.echo(f"broker login {'added to' if outcome.action == 'admit' else 'removed from'} {files}: "
                   "reload Mosquitto to apply it (kill -HUP <its pid>, or systemctl reload mosquitto; copy both "
                   "files first if the broker runs on another host)"
                   + (", then start the new gateway" if outcome.action == "admit" else ""))
    if outcome.delivered:
        ok = [n for n, d in outcome.delivered.items() if d]
        missed = [n for n, d in outcome.delivered.items() if not d]
        click.echo(f"delivered to {len(ok)} of {len(outcome.delivered)} gateways"
                   + (f"; not reached: {', '.join(missed)} (their neighbours pass it on)" if missed else ""))


@fleet_group.command("admit")
@click.argument("plan", type=click.Path(file_okay=False, exists=True))
@click.option("--name", required=True, help="plan name of the new gateway")
@click.option("--neighbours", required=True, help="comma-separated plan names (or PeerIds) it neighbours")
@click.option("--port", type=click.IntRange(1, 65535), default=None,
              help="libp2p plans: its port (default: next free in the plan)")
@click.option("--host", default="127.0.0.1", show_default=True, help="libp2p plans: its address")
@click.option("--no-send", is_flag=True, help="only write and sign the record")
@friendly
def fleet_admit(plan: str, name: str, neighbours: str, port, host: str, no_send: bool) -> None:
    """Admit a new gateway to a running fleet: its folder, a signed record, delivered now
    (MQTT plans: also its broker login and ACL lines, applied when the broker reloads)."""
    from peer.ops.admin import admit

    _report(admit(plan, name, [n.strip() for n in neighbours.split(",") if n.strip()], port=port, host=host,
                  send=not no_send))


@fleet_group.command("revoke")
@click.argument("plan", type=click.Path(file_okay=False, exists=True))
@click.argument("who")
@click.option("--no-send", is_flag=True, help="only write and sign the record")
@friendly
def fleet_revoke(plan: str, who: str, no_send: bool) -> None:
    """Revoke a gateway (plan name or PeerId): every peer rejects it from the record's arrival
    (MQTT plans: its broker login is removed too, once the broker reloads)."""
    from peer.ops.admin import revoke

    _report(revoke(plan, who, send=not no_send))
