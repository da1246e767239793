"""The `gossipfl` command. Each subcommand parses its arguments, calls one function of a
package, and prints; errors that a user can fix become one line and exit code 2."""

from __future__ import annotations

import functools
import os
import sys

import click

from gossipfl import __version__

# module -> the typed error it raises; an error class is only looked up once its module is loaded
# (an error of a package that was never imported cannot have been raised), so a command that
# needs no model never imports torch just to be able to report a mistake.
_ERROR_CLASSES = (("aggregation._checks", "AggregationError"), ("gossip.errors", "GossipError"),
                  ("peer.errors", "PeerError"), ("topology.errors", "TopologyError"),
                  ("sim.errors", "ScenarioError"))


def user_errors() -> tuple[type[BaseException], ...]:
    """The project's typed errors (of the packages loaded so far): one line, never a traceback."""
    found = [getattr(sys.modules[m], name) for m, name in _ERROR_CLASSES if m in sys.modules]
    return (*found, OSError)


def _quiet_stdout() -> None:
    """Point standard output at /dev/null so the interpreter's last flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # not a real file (tests capture output)
        pass


def friendly(fn):
    """Turn the project's typed errors into `error: ...` and exit status 2 (or the status the
    error class names, see peer.errors: revoked, transient); a reader that
    closes the pipe early (`| head`) is not an error: stop quietly with status 0."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except BrokenPipeError:
            _quiet_stdout()
            sys.exit(0)
        except user_errors() as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(getattr(exc, "exit_status", 2))  # 2: fix it; peer.errors says which others mean what

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


# the command groups live in their own modules; importing them registers their commands
from gossipfl import (  # noqa: E402,F401
    cli_audit,
    cli_export,
    cli_fleet,
    cli_membership,
    cli_peer,
    cli_relay,
    cli_sim,
    cli_topology,
)
