"""Commands that need no model start without torch or libp2p (checked in a fresh interpreter
by `sys.modules`), and a mistake in them is still one line, not a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.provenance_fixtures import write_ring_logs

ROOT = Path(__file__).resolve().parent.parent
PROBE = """
import json, sys
sys.argv = ["gossipfl", *sys.argv[1:]]
from gossipfl.cli import main
try:
    main()
except SystemExit as exc:
    code = exc.code
print(json.dumps({"heavy": [m for m in ("torch", "libp2p", "trio") if m in sys.modules], "code": code}),
      file=sys.stderr)
"""


def run(*args) -> dict:
    p = subprocess.run([sys.executable, "-c", PROBE, *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    return {**json.loads(p.stderr.strip().splitlines()[-1]), "stderr": p.stderr}


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    paths, _, updates = write_ring_logs(tmp_path_factory.mktemp("startup"), peers=3, rounds=2)
    return paths, updates


@pytest.mark.parametrize("args", [["--help"], ["audit", "--help"], ["keygen", "--out", "{tmp}/k.key"],
                                  ["audit", "verify", "{log}"], ["audit", "show", "{log}"],
                                  ["audit", "timeline", "{log}", "--peer", "{peer}"],
                                  ["audit", "rejections", "{log}"], ["audit", "where", "{update}", "{log}"],
                                  ["audit", "show", "/nope.db"], ["rules"], ["peer", "id", "--config", "{config}"]])
def test_no_model_commands_import_neither_torch_nor_libp2p(args, logs, tmp_path):
    paths, updates = logs
    from peer.audit.verify import load_events

    owner, _ = load_events(paths[0])
    from peer.ops.plan import write_plan
    from topology import from_spec

    nodes = write_plan(from_spec("ring:3"), tmp_path / "plan", draw=False)
    fill = {"tmp": tmp_path, "log": paths[0], "peer": owner[-8:], "update": updates[(0, 1)][:8],
            "config": nodes[0].config}
    r = run(*[a.format(**fill) for a in args])
    assert r["heavy"] == [], r
    assert r["code"] in (0, None) or (args[-1] == "/nope.db" and r["code"] == 2 and "error:" in r["stderr"]
                                      and "Traceback" not in r["stderr"])
