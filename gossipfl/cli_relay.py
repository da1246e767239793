"""`gossipfl relay`: run a fleet relay (peer.ops.relay)."""

from __future__ import annotations

import click

from gossipfl.cli import friendly, main


@main.group("relay")
def relay_group() -> None:
    """A relay for the fleet's gateways behind NAT (Circuit Relay v2, members only)."""


@relay_group.command("start")
@click.option("--config", "config", required=True, type=click.Path(dir_okay=False),
              help="relay.toml: [identity] key, [network] trust (and records), [relay] listen and limits")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]), help="the least severe log lines shown")
@friendly
def relay_start(config: str, log_level: str) -> None:
    """Run a fleet relay until SIGINT/SIGTERM; prints its PeerId and addresses."""
    import asyncio
    import logging

    from peer.ops.relay import load_relay_config, run_relay

    logging.basicConfig(level=getattr(logging, log_level.upper()), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("libp2p").setLevel(logging.CRITICAL)
    asyncio.run(run_relay(load_relay_config(config)))
