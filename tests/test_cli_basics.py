"""The face: --help, --version, and the rules listing work without a traceback."""

from click.testing import CliRunner

from gossipfl import __version__
from gossipfl.cli import main


def test_help_and_version():
    r = CliRunner().invoke(main, ["--help"])
    assert r.exit_code == 0 and "gossipfl" in r.output
    r = CliRunner().invoke(main, ["--version"])
    assert r.exit_code == 0 and __version__ in r.output


def test_rules_lists_every_rule():
    from aggregation import RULES
    r = CliRunner().invoke(main, ["rules"])
    assert r.exit_code == 0
    for name in RULES:
        assert name in r.output
