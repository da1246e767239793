"""Running on a gateway: the unit `topology plan` writes per node, and the peer's side of
systemd's notify protocol (READY, the watchdog fed from the event loop, STOPPING)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from gossipfl.cli import main
from peer.errors import ConfigError
from peer.ops.plan import write_plan
from peer.ops.systemd import (
    GatewayLayout,
    Notifier,
    feed_watchdog,
    watchdog_interval,
)
from topology import from_spec

ROOT = Path(__file__).resolve().parents[1]


def unit_fields(text: str) -> dict[str, list[str]]:
    """KEY -> every value it is given (ignoring comments and section headers)."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


@pytest.fixture
def notify_socket():
    """A datagram socket the test owns, at a path short enough for sockaddr_un."""
    folder = tempfile.mkdtemp(prefix="sdn")
    path = os.path.join(folder, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    try:
        yield sock, path
    finally:
        sock.close()
        shutil.rmtree(folder)


def receive(sock: socket.socket, until, timeout: float = 90.0) -> list[str]:
    """Datagrams until `until(messages)` holds (or the generous timeout)."""
    messages: list[str] = []
    end = time.monotonic() + timeout
    while not until(messages) and time.monotonic() < end:
        sock.settimeout(max(0.1, end - time.monotonic()))
        try:
            messages.append(sock.recv(4096).decode())
        except TimeoutError:
            break
    return messages


def test_plan_writes_a_hardened_notify_unit_per_node(tmp_path):
    out = tmp_path / "plan"
    r = CliRunner().invoke(main, ["topology", "plan", "ring:4", "--out", str(out), "--install-dir", "/srv/fleet",
                                  "--service-user", "fl", "--watchdog", "45"])
    assert r.exit_code == 0, r.output
    for i in range(4):
        unit = out / f"node-{i}" / f"gossipfl-{i}.service"
        f = unit_fields(unit.read_text())
        assert f["Type"] == ["notify"] and f["NotifyAccess"] == ["main"] and f["WatchdogSec"] == ["45"]
        assert f["Restart"] == ["on-failure"] and f["RestartPreventExitStatus"] == ["2 3"]
        assert f["ExecStart"] == [f"/srv/fleet/venv/bin/gossipfl peer start --config /srv/fleet/node-{i}/peer.toml"]
        assert f["User"] == ["fl"] and f["WorkingDirectory"] == [f"/srv/fleet/node-{i}"]
        for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "PrivateDevices", "RestrictSUIDSGID"):
            assert f[key] == ["yes"], key
        assert f["ProtectSystem"] == ["strict"] and f["CapabilityBoundingSet"] == [""]
        assert f["ReadWritePaths"] == [f"/srv/fleet/node-{i}/data"]  # the data folder only
        assert (out / f"node-{i}" / "data").is_dir()  # the unit needs it to exist
    mem = write_plan(from_spec("ring:3"), tmp_path / "mem", transport="memory", draw=False)
    assert all(n.unit is None for n in mem)  # an in-process plan has nothing to run as a service


def test_unit_paths_are_checked():
    with pytest.raises(ConfigError, match="executable must be an absolute path"):
        GatewayLayout(executable="gossipfl").unit("0", "node-0", "data", "x")
    with pytest.raises(ConfigError, match="without '..', spaces"):
        GatewayLayout(install_dir="/opt/my fleet").unit("0", "node-0", "data", "x")
    with pytest.raises(ConfigError, match="data_dir"):
        GatewayLayout().unit("0", "node-0", "../elsewhere", "x")
    with pytest.raises(ConfigError, match="user must be a plain user name"):
        GatewayLayout(user="root;rm").unit("0", "node-0", "data", "x")
    spec = GatewayLayout(install_dir="/opt/g").unit("a_b", "node-a_b", "/var/lib/fl", "x")
    assert spec.name == "gossipfl-a_b" and str(spec.data_dir) == "/var/lib/fl"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_generated_unit_passes_systemd_analyze_verify(tmp_path):
    gossipfl = Path(sys.executable).parent / "gossipfl"
    executable = str(gossipfl if gossipfl.exists() else Path(sys.executable))
    out = tmp_path / "plan"
    nodes = write_plan(from_spec("ring:3"), out, transport="libp2p", draw=False,
                       gateway=GatewayLayout(install_dir=str(out), executable=executable))
    unit = nodes[0].unit
    r = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True,
                       timeout=60)
    # systemd-analyze exits 0 even for keys it ignores: any complaint is a failure here
    assert r.returncode == 0 and not (r.stdout + r.stderr).strip(), r.stdout + r.stderr


def test_watchdog_interval_is_half_of_watchdog_usec_and_only_for_this_process():
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "200000", "WATCHDOG_PID": str(os.getpid())}) == 0.1
    assert watchdog_interval({"WATCHDOG_USEC": "200000", "WATCHDOG_PID": "1"}, pid=2) is None
    for bad in ({}, {"WATCHDOG_USEC": ""}, {"WATCHDOG_USEC": "0"}, {"WATCHDOG_USEC": "-5"}, {"WATCHDOG_USEC": "1e6"}):
        assert watchdog_interval(bad) is None, bad


def test_notifier_speaks_to_path_and_abstract_sockets(notify_socket):
    sock, path = notify_socket
    n = Notifier(path)
    assert n.ready("peer a\nstarted") and n.watchdog() and n.stopping() and not n.stopping()  # STOPPING once
    n.close()
    assert receive(sock, lambda m: len(m) == 3) == ["READY=1\nSTATUS=peer a started", "WATCHDOG=1", "STOPPING=1"]
    name = f"gossipfl-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as abstract:
        abstract.bind(b"\0" + name.encode())
        n = Notifier.from_env({"NOTIFY_SOCKET": "@" + name})
        assert n.enabled and n.ready()
        n.close()
        assert receive(abstract, lambda m: len(m) == 1) == ["READY=1"]


def test_notifier_is_a_no_op_without_systemd_and_survives_a_missing_socket(tmp_path):
    assert not Notifier.from_env({}).enabled and not Notifier(None).ready()
    assert not Notifier("vsock:2:1234").enabled  # a form this client does not speak: off, not an error
    gone = Notifier(str(tmp_path / "nobody-listens"))
    assert gone.enabled and not gone.ready() and not gone.enabled  # gives up after the first failure


def test_a_blocked_event_loop_stops_feeding_the_watchdog(notify_socket):
    sock, path = notify_socket

    async def scenario():
        notifier = Notifier(path)
        task = asyncio.create_task(feed_watchdog(notifier, 0.02))
        sock.setblocking(False)
        await asyncio.sleep(0.1)  # the loop runs: the task feeds
        before = _drain(sock)
        time.sleep(0.3)  # the loop is blocked: the feeding task cannot run
        during = _drain(sock)
        await asyncio.sleep(0.1)  # the loop runs again: feeding resumes
        after = _drain(sock)
        task.cancel()
        notifier.close()
        return before, during, after

    before, during, after = asyncio.run(scenario())
    assert before and set(before) == {"WATCHDOG=1"}
    assert during == []
    assert after and set(after) == {"WATCHDOG=1"}


def _drain(sock: socket.socket) -> list[str]:
    out = []
    while True:
        try:
            out.append(sock.recv(4096).decode())
        except BlockingIOError:
            return out


@pytest.mark.timeout(180)
def test_a_real_peer_reports_ready_feeds_the_watchdog_and_says_stopping(tmp_path, notify_socket):
    sock, path = notify_socket
    CliRunner().invoke(main, ["topology", "plan", "ring:3", "--out", str(tmp_path / "p"), "--transport", "memory"])
    cfg = tmp_path / "p" / "node-0" / "peer.toml"
    cfg.write_text(cfg.read_text().replace("deadline = 10.0", "deadline = 0.3"))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000",
           "OMP_NUM_THREADS": "1"}
    log = open(tmp_path / "peer.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "gossipfl", "peer", "start", "--config", str(cfg)],
                            stdout=log, stderr=log, env=env)
    try:
        messages = receive(sock, lambda m: m.count("WATCHDOG=1") >= 3)
        running = proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
        rest = receive(sock, lambda m: "STOPPING=1" in m, timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    output = (tmp_path / "peer.log").read_text(errors="replace")
    assert messages and messages[0].startswith("READY=1\nSTATUS=peer 0 started"), (messages, output)
    assert messages.count("WATCHDOG=1") >= 3 and running, (messages, output)
    assert code == 0 and "STOPPING=1" in rest, (code, rest, output)
