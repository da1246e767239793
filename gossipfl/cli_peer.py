"""`gossipfl peer`: configure and run one gateway."""

from __future__ import annotations

import sys

import click

from gossipfl.cli import friendly, main


@main.group("peer")
def peer_group() -> None:
    """Run and configure one peer."""


@peer_group.command("init")
@click.option("--dir", "directory", default=".", show_default=True, type=click.Path(file_okay=False),
              help="where to write peer.toml, peer.key and a one-peer trust.toml")
@click.option("--force", is_flag=True, help="overwrite existing files")
@click.option("--enrol", "enrol", metavar="NETWORK", default=None,
              help="join the fleet NETWORK: write only a new key and an enrolment request (enrolment.json) for "
                   "its admin's `gossipfl fleet admit --request`")
@click.option("--name", default=None, help="with --enrol: the name asked for [default: the host name]")
@click.option("--reachability", type=click.Choice(["auto", "public", "private"]), default="auto", show_default=True,
              help="with --enrol: can others dial this gateway (private: behind NAT)")
@click.option("--addr", default="", help="with --enrol: where others dial it, /ip4/HOST/tcp/PORT (public gateways)")
@friendly
def peer_init(directory: str, force: bool, enrol, name, reachability: str, addr: str) -> None:
    """Write a commented example peer.toml and a new key (--enrol: a key and an enrolment
    request; the private key never leaves this gateway)."""
    from pathlib import Path

    from gossip.identity import Identity, save_key
    from gossip.trust import build_trust_list
    from peer.config.example import example_config
    from peer.errors import ConfigError

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    if enrol is not None:
        return _enrol(d, force, enrol, name, reachability, addr)
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


def _enrol(d, force: bool, network: str, name, reachability: str, addr: str) -> None:
    import socket

    from gossip.identity import Identity, save_key
    from peer.errors import ConfigError
    from peer.ops.enrol import make_request

    out = d / "enrolment.json"
    if out.exists() and not force:
        raise ConfigError(f"{out} exists (use --force to overwrite)")
    ident = Identity.generate()
    text = make_request(ident, network, name or socket.gethostname().split(".")[0], reachability, addr)
    save_key(ident, d / "peer.key", force=force)
    out.write_text(text)
    click.echo(f"wrote {d / 'peer.key'} (keep it here) and {out}; this peer is {ident.peer_id}")
    click.echo(f"send {out.name} to the network's admin: gossipfl fleet admit PLAN --request {out.name} "
               "--neighbours ...; then put the peer.toml (and trust.toml) it writes in this folder and run "
               "gossipfl peer start --config peer.toml")


@peer_group.command("start")
@click.option("--config", "config", required=True, type=click.Path(dir_okay=False), help="the peer's peer.toml")
@click.option("--rounds", type=click.IntRange(0), default=None,
              help="run this many rounds from wherever the peer starts, then stop [default: until its round "
                   "reaches round.rounds]")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="log lines as text, or one JSON object per line (for journald or a log shipper)")
@click.option("-v", "--verbose", is_flag=True, help="log every rejection")
@click.option("--accept-rollback", is_flag=True,
              help="start even though a neighbour holds an update this peer signed later than its log and "
                   "checkpoint (a restored backup); logged in the `started` event")
@friendly
def peer_start(config: str, rounds, log_format: str, verbose: bool, accept_rollback: bool) -> None:
    """Run a peer until its rounds are done or it gets SIGINT/SIGTERM."""
    import asyncio
    import logging

    from peer.config.parse import load_config
    from peer.runtime import logs
    from peer.runtime.service import serve

    cfg = load_config(config)
    logs.setup(log_format, logging.DEBUG if verbose else logging.INFO, peer=cfg.name or None, names=logs.names_of(cfg))
    sys.exit(asyncio.run(serve(cfg, rounds, accept_rollback)))


@peer_group.command("id")
@click.option("--config", "config", required=True, type=click.Path(dir_okay=False), help="the peer's peer.toml")
@friendly
def peer_id_cmd(config: str) -> None:
    """Print this peer's PeerId and the multiaddrs others dial, without starting it."""
    from gossip.identity import load_key
    from peer.config.parse import load_config
    from peer.transports import kind_of

    cfg = load_config(config)
    ident = load_key(cfg.key)
    click.echo(ident.peer_id)
    for line in kind_of(cfg.transport.kind).describe(cfg, ident.peer_id):
        click.echo(line)
