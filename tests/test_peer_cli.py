"""The peer and plan commands: init, id, plan, start (a real process, stopped by SIGTERM)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from gossip.identity import load_key
from gossipfl.cli import main
from peer.audit.verify import load_events, verify_log
from peer.config.parse import load_config
from peer.errors import ConfigError


def test_peer_init_writes_a_loadable_config_and_key(tmp_path):
    r = CliRunner().invoke(main, ["peer", "init", "--dir", str(tmp_path)])
    assert r.exit_code == 0, r.output
    cfg = load_config(tmp_path / "peer.toml")
    assert cfg.transport.kind == "libp2p" and cfg.aggregation.rule == "median"
    pid = load_key(tmp_path / "peer.key").peer_id
    r = CliRunner().invoke(main, ["peer", "id", "--config", str(tmp_path / "peer.toml")])
    assert r.exit_code == 0 and r.output.splitlines() == [pid, f"/ip4/0.0.0.0/tcp/4001/p2p/{pid}"]
    r = CliRunner().invoke(main, ["peer", "init", "--dir", str(tmp_path)])
    assert r.exit_code == 2 and "--force" in r.output


def test_topology_plan_writes_loadable_configs_and_refuses_to_overwrite(tmp_path):
    out = tmp_path / "plan"
    r = CliRunner().invoke(main, ["topology", "plan", "regular:8,4", "--out", str(out), "--network-id", "lab",
                                  "--base-port", "5000", "--rule", "krum", "--f", "1"])
    assert r.exit_code == 0, r.output
    ids = set()
    for i in range(8):
        cfg = load_config(out / f"node-{i}" / "peer.toml")
        assert cfg.network == "lab" and cfg.aggregation.rule == "krum" and len(cfg.neighbours) == 4
        assert cfg.transport.listen == [f"/ip4/127.0.0.1/tcp/{5000 + i}"]
        assert all(n.addr.endswith(n.id) and n.degree == 4 for n in cfg.neighbours)
        assert oct((out / f"node-{i}" / "peer.key").stat().st_mode & 0o777) == "0o600"
        ids.add(load_key(cfg.key).peer_id)
    assert len(ids) == 8 and (out / "topology.png").exists() and (out / "analysis.json").exists()
    r = CliRunner().invoke(main, ["topology", "plan", "ring:4", "--out", str(out)])
    assert r.exit_code == 2 and "--force" in r.output
    r = CliRunner().invoke(main, ["topology", "plan", "ring:4", "--out", str(out), "--transport", "mqtt",
                                  "--broker", "127.0.0.1:1999", "--force"])
    assert r.exit_code == 0
    assert load_config(out / "node-0" / "peer.toml").transport.port == 1999


@pytest.mark.parametrize("patch, message", [
    (("rule = \"median\"", "rule = \"medain\""), "aggregation.rule"),
    (("deadline = 10.0", "deadline = -1.0"), "round.deadline must be > 0"),
    (("kind = \"memory\"", "kind = \"pigeon\""), "transport.kind must be one of"),
    (("[storage]", "[storage]\nbogus = 1"), "unknown field(s) bogus in [storage]"),
    (("shard = 0", "shard = 9"), "data.shard must be below"),
    ((re.compile(r"^lr = .*$", re.M), "lr = \"fast\""), "train.lr must be float"),
])
def test_config_errors_name_the_field(tmp_path, patch, message):
    CliRunner().invoke(main, ["topology", "plan", "ring:4", "--out", str(tmp_path / "p"), "--transport", "memory"])
    path = tmp_path / "p" / "node-0" / "peer.toml"
    text = path.read_text()
    if isinstance(patch[0], re.Pattern):
        assert patch[0].search(text)
        path.write_text(patch[0].sub(patch[1], text, count=1))
    else:
        assert patch[0] in text
        path.write_text(text.replace(patch[0], patch[1], 1))
    with pytest.raises(ConfigError, match=message.replace("(", "\\(").replace(")", "\\)").replace("[", "\\[")):
        load_config(path)


def test_missing_data_file_is_an_error_before_any_round(tmp_path):
    CliRunner().invoke(main, ["topology", "plan", "ring:4", "--out", str(tmp_path / "p"), "--transport", "memory"])
    path = tmp_path / "p" / "node-0" / "peer.toml"
    path.write_text(path.read_text().replace('source = "digits"', 'source = "csv"\npath = "nope.csv"'))
    r = CliRunner().invoke(main, ["peer", "start", "--config", str(path)])
    assert r.exit_code == 2 and "nope.csv not found" in r.output


@pytest.mark.timeout(120)
def test_peer_start_runs_and_stops_cleanly_on_sigterm(tmp_path):
    CliRunner().invoke(main, ["topology", "plan", "ring:3", "--out", str(tmp_path / "p"), "--transport", "memory"])
    cfg = tmp_path / "p" / "node-0" / "peer.toml"
    cfg.write_text(cfg.read_text().replace("deadline = 10.0", "deadline = 0.3"))
    proc = subprocess.Popen([sys.executable, "-m", "gossipfl", "peer", "start", "--config", str(cfg),
                             "--log-format", "json"], stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        lines = []
        deadline = time.time() + 60
        while time.time() < deadline:
            line = proc.stderr.readline()
            lines.append(line)
            if '"round 1:' in line or "round 1:" in line:
                break
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, "".join(lines) + rest
    assert any('"level": "info"' in x for x in lines)
    db = tmp_path / "p" / "node-0" / "data" / "provenance.db"
    assert verify_log(db).ok
    _, stopped = load_events(db, kind="stopped")
    assert stopped and stopped[-1].details["reason"] == "stop requested"
    assert (tmp_path / "p" / "node-0" / "data" / "checkpoint.msgpack").exists()


def test_init_example_shows_every_default_of_the_config_dataclasses(tmp_path):
    """Each default lives in the dataclasses: the example `peer init` writes parses to exactly
    them, field by field, except the deployment values the example names on purpose."""
    from dataclasses import fields

    from peer.config.example import EXAMPLE_VALUES
    from peer.config.parse import DEFAULT_DATA_DIR, default_of

    r = CliRunner().invoke(main, ["peer", "init", "--dir", str(tmp_path)])
    assert r.exit_code == 0, r.output
    cfg = load_config(tmp_path / "peer.toml")
    checked = 0
    for table in ("transport", "model", "data", "train", "aggregation", "round", "metrics", "personalization"):
        section = getattr(cfg, table)
        for f in fields(section):
            expected = EXAMPLE_VALUES.get(f"{table}.{f.name}", default_of(f))
            got = getattr(section, f.name)
            if table == "data" and f.name == "path":
                assert got is None
            else:
                assert got == expected, (table, f.name, got, expected)
            checked += 1
    assert checked >= 40
    assert cfg.data_dir == tmp_path / DEFAULT_DATA_DIR and cfg.name == EXAMPLE_VALUES["name"]
    assert cfg.network == EXAMPLE_VALUES["network.id"] and cfg.key == tmp_path / EXAMPLE_VALUES["identity.key"]
    text = (tmp_path / "peer.toml").read_text()
    assert "# max_message_mb" in text  # absent: derived from the model, shown commented out
    assert '\n[metrics]\n# listen = "127.0.0.1:9464"' in text and '\nlearner = "classification"' in text
    assert "\n# quorum = 0" in text and "\n# interval = 0.0" in text  # a plan computes them unless set
