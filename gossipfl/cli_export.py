"""`gossipfl peer export`: take the trained model out of a peer's data folder."""

from __future__ import annotations

import click

from gossipfl.cli import friendly
from gossipfl.cli_peer import peer_group


@peer_group.command("export")
@click.option("--config", "config", required=True, type=click.Path(dir_okay=False), help="the peer's peer.toml")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="folder to write the model into")
@click.option("--format", "formats", default="state_dict,safetensors,torchscript,onnx", show_default=True,
              help="comma-separated: state_dict, safetensors, torchscript, onnx")
@friendly
def peer_export(config: str, out: str, formats: str) -> None:
    """Write the model of the last checkpoint the provenance log vouches for (no training
    data needed; safe while the peer runs): the personal model where [personalization] gives
    the gateway one, else the shared model; the first line says which."""
    import torch

    from peer.config.parse import load_config
    from peer.learning.export import export

    torch.set_num_threads(1)
    cfg = load_config(config)
    done = export(cfg, out, tuple(f.strip() for f in formats.split(",") if f.strip()))
    which = ("personal model (this gateway's own, [personalization])" if done.serves == "personal"
             else "shared model (the fleet's)")
    click.echo(f"{which} of round {done.round} (params {done.params_hash[:16]}..., {done.in_features} inputs)")
    for fmt, path in done.written.items():
        click.echo(f"  {fmt:<12} {path}")
    for fmt, why in done.skipped.items():
        click.echo(f"  {fmt:<12} not written: {why}")
