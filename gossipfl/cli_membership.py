"""`gossipfl fleet admit` / `fleet revoke` / `fleet rotate-admin`: the network admin changes the fleet
while it runs."""

from __future__ import annotations

import click

from gossip.membership import MAX_EPOCH_STEP
from gossipfl.cli import friendly
from gossipfl.cli_fleet import fleet_group


def _report(outcome) -> None:
    what = "rotate the admin key to" if outcome.action == "rotate" else outcome.action
    click.echo(f"epoch {outcome.epoch}: {what} {outcome.peer_id}  (record {outcome.record})")
    if outcome.config is not None:
        ports = ", ".join(f"{k} port {v}" for k, v in outcome.ports.items())
        click.echo(f"new gateway: {outcome.config.parent}" + (f" ({ports})" if ports else "") +
                   f"; copy it to the gateway; start it with gossipfl peer start --config {outcome.config}")
    if outcome.copied:
        click.echo(f"copied into it from the plan's template: {', '.join(outcome.copied)}")
    if outcome.unit is not None:
        click.echo(f"systemd unit: {outcome.unit} (install it as the plan's README in the unit says)")
    for note in outcome.notes:
        click.echo(f"note: {note}")
    if outcome.rewritten:
        names = ", ".join(p.parent.name for p in outcome.rewritten)
        click.echo(f"rewrote the neighbours in {names}/peer.toml (running peers have the record already; copy "
                   "these files to their gateways before you set one up again from the plan)")
    if outcome.broker is not None and outcome.action == "rotate":
        click.echo(f"the admin's broker login changed in {outcome.broker / 'passwd'} and {outcome.broker / 'acl'}: "
                   "reload Mosquitto (kill -HUP <its pid>, or systemctl reload mosquitto) before the next admit")
    elif outcome.broker is not None:
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
@click.option("--name", default=None, help="plan name of the new gateway [default with --request: the request's]")
@click.option("--neighbours", required=True, help="comma-separated plan names (or PeerIds) it neighbours")
@click.option("--request", "request", type=click.Path(dir_okay=False, exists=True), default=None,
              help="an enrolment request (gossipfl peer init --enrol on the gateway): admit the key the gateway "
                   "generated itself; no private key is written")
@click.option("--port", type=click.IntRange(1, 65535), default=None,
              help="its listening port where the transport has one (default: one no node of the plan uses)")
@click.option("--host", default=None, help="its listening address (default: the plan's nodes')")
@click.option("--no-send", is_flag=True, help="only write and sign the record")
@friendly
def fleet_admit(plan: str, name, neighbours: str, request, port, host: str, no_send: bool) -> None:
    """Admit a new gateway to a running fleet: its folder (from the plan's template, with ports
    no other node uses, its systemd unit and the template's modules), a signed record,
    delivered now (MQTT plans: also its broker login and ACL lines, applied when the broker
    reloads). With --request, the gateway's own key (checked: the request is signed by it),
    name, address and reachability come from its enrolment request and no key is written."""
    from peer.ops.admin import admit
    from peer.ops.enrol import read_request

    _report(admit(plan, name, [n.strip() for n in neighbours.split(",") if n.strip()], port=port, host=host,
                  send=not no_send, request=read_request(request) if request else None))


@fleet_group.command("revoke")
@click.argument("plan", type=click.Path(file_okay=False, exists=True))
@click.argument("who")
@click.option("--no-send", is_flag=True, help="only write and sign the record")
@friendly
def fleet_revoke(plan: str, who: str, no_send: bool) -> None:
    """Revoke a gateway (plan name or PeerId): every peer rejects it from the record's arrival;
    trust.toml and its former neighbours' peer.toml in the plan no longer name it (MQTT plans:
    its broker login is removed too, once the broker reloads)."""
    from peer.ops.admin import revoke

    _report(revoke(plan, who, send=not no_send))


@fleet_group.command("rotate-admin")
@click.argument("plan", type=click.Path(file_okay=False, exists=True))
@click.option("--key", "key", type=click.Path(dir_okay=False, exists=True), default=None,
              help="the successor admin key (a PEM key file, mode 0600, e.g. from `gossipfl keygen`), copied to "
                   "PLAN/admin/admin.key [default: a fresh key, written there]")
@click.option("--epoch", type=click.IntRange(1, 2**63 - 1), default=None,
              help="sign the rotation at this epoch [default: the plan's next]; higher when a thief of the old key "
                   f"signed records with higher epochs (at most {MAX_EPOCH_STEP} past what a peer holds)")
@friendly
def fleet_rotate_admin(plan: str, key, epoch) -> None:
    """Replace the network's admin key (e.g. it leaked): a record signed by the current key names
    its successor and is delivered to every gateway now, under the old key; from its arrival the
    peers refuse what the old key signs (`retired_admin`) and apply what the new one signs. The
    plan's admin.key, trust.toml (`admin`, `retired_admins`) and plan.json switch to the new
    key, so later `fleet admit` / `fleet revoke` sign with it; the old key leaves the plan.
    MQTT plans: the admin's broker login changes too (reload the broker)."""
    from pathlib import Path

    from peer.ops.admin import rotate_admin

    _report(rotate_admin(plan, Path(key) if key else None, epoch=epoch))
