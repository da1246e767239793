"""Every command and every option of `gossipfl` says what it does in --help, and --help starts nothing."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from gossipfl.cli import main


def _commands(cmd: click.Command, path: tuple[str, ...] = ()):
    yield path, cmd
    if isinstance(cmd, click.Group):
        for name, sub in sorted(cmd.commands.items()):
            yield from _commands(sub, (*path, name))


COMMANDS = list(_commands(main))


def test_the_walk_finds_the_commands():
    names = {" ".join(p) for p, _ in COMMANDS}
    assert {"sim run", "sim attacks", "sim init", "demo", "rules"} <= names, names


@pytest.mark.parametrize("path, cmd", COMMANDS, ids=[" ".join(p) or "gossipfl" for p, _ in COMMANDS])
def test_every_command_and_option_has_help(path, cmd, tmp_path, monkeypatch):
    assert (cmd.help or "").strip(), f"gossipfl {' '.join(path)}: no help text"
    for param in cmd.params:
        if isinstance(param, click.Option) and not param.hidden:
            assert (param.help or "").strip(), f"gossipfl {' '.join(path)} {param.opts[0]}: no help text"
    monkeypatch.chdir(tmp_path)  # --help must write nothing
    r = CliRunner().invoke(main, [*path, "--help"])
    assert r.exit_code == 0, r.output
    assert "Usage:" in r.output
    assert list(tmp_path.iterdir()) == []


def test_sim_attacks_lists_the_registry():
    from sim.attacks import REGISTRY

    r = CliRunner().invoke(main, ["sim", "attacks", "--json"])
    assert r.exit_code == 0, r.output
    import json

    listed = json.loads(r.output)
    assert [a["name"] for a in listed] == list(REGISTRY)
    by = {a["name"]: a for a in listed}
    assert by["alie"]["family"] == "model" and by["alie"]["engines"] == ["protocol", "batched"]
    assert by["forged"]["engines"] == ["protocol"] and by["forged"]["batched"].startswith("not modelled")
    assert all(a["sends"] for a in listed)
    table = CliRunner().invoke(main, ["sim", "attacks"])
    assert table.exit_code == 0 and "dissensus" in table.output and "non_finite" in table.output


BENCH = sorted(p for p in (__import__("pathlib").Path(__file__).parent.parent / "bench").glob("*.py")
               if not p.name.startswith("_"))


@pytest.mark.parametrize("script", BENCH, ids=[p.name for p in BENCH])
def test_every_bench_script_answers_help_and_starts_nothing(script, tmp_path):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, cwd=tmp_path,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "usage:" in r.stdout.lower(), r.stdout
    assert not r.stdout.rstrip().splitlines()[-1].startswith("{")  # no figures: nothing was measured
    assert list(tmp_path.iterdir()) == []
