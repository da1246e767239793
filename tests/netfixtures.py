"""Real network pieces for tests and benchmarks: free loopback ports, a Mosquitto broker,
peer processes. Everything started here is stopped here."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def free_run(n: int, avoid=()) -> int:
    """A port p with p .. p + n - 1 free on 127.0.0.1 now (a plan's nodes take consecutive ports;
    other tests on this machine take free ports too)."""
    for _ in range(200):
        (base,) = free_ports(1)
        ports = range(base, base + n)
        if base + n < 65536 and not set(ports) & set(avoid) and all(_bindable(p) for p in ports):
            return base
    raise RuntimeError(f"no {n} consecutive free ports")


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def wait_port(port: int, timeout: float = 10.0) -> None:
    end = time.time() + timeout
    while time.time() < end:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


def mosquitto_binary() -> str | None:
    return shutil.which("mosquitto") or next((p for p in ("/usr/sbin/mosquitto",) if os.path.exists(p)), None)


def listener_port(conf: str) -> int:
    """The port of the first `listener PORT [HOST]` line of a mosquitto.conf."""
    for line in conf.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "listener" and parts[1].isdigit():
            return int(parts[1])
    raise ValueError("the mosquitto config has no `listener PORT` line")


@contextlib.contextmanager
def mosquitto_broker(directory: Path, config: Path | None = None) -> Iterator[int | None]:
    """A real Mosquitto broker on a loopback port, stopped on exit; yields its port, or None
    where Mosquitto is not installed. Used by the tests' fixture and by bench/.

    Without `config`: anonymous, on a free port. With `config` (e.g. the mosquitto.conf of an
    mqtt plan, with its password file and ACL): that file as is, on its listener port, plus
    `user <the current user>` so that a broker started as root can still read a 0600 password
    file owned by root. The broker's log is DIRECTORY/mosquitto.log."""
    binary = mosquitto_binary()
    if binary is None:
        yield None
        return
    directory = Path(directory)
    conf = directory / "mosquitto.conf"
    if config is None:
        (port,) = free_ports(1)
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                        "max_queued_messages 10000\nmax_inflight_messages 100\n")
    else:
        text = Path(config).read_text()
        port = listener_port(text)
        conf = directory / "mosquitto-run.conf"
        conf.write_text(text.rstrip("\n") + f"\nuser {pwd.getpwuid(os.geteuid()).pw_name}\n")
    log_path = directory / "mosquitto.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([binary, "-c", str(conf)], stdout=log, stderr=log)
    try:
        _wait_broker(proc, port, log_path)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_broker(proc: subprocess.Popen, port: int, log_path: Path, timeout: float = 10.0) -> None:
    """Until the broker listens; a broker that exits (e.g. an unreadable password file) fails at once."""
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"mosquitto exited with {proc.returncode}: {log_path.read_text(errors='replace')[-1000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"mosquitto does not listen on 127.0.0.1:{port}: {log_path.read_text(errors='replace')[-1000:]}")


@pytest.fixture
def mosquitto(tmp_path):
    """A real Mosquitto broker on a free loopback port (config written by the test)."""
    with mosquitto_broker(tmp_path) as port:
        if port is None:
            pytest.skip("mosquitto is not installed (the project's .ci/install puts it there: apt-get install mosquitto)")
        yield port


class PeerProcesses:
    """`gossipfl peer start` processes, stopped (SIGKILL as a last resort) at teardown."""

    def __init__(self, tmp_path: Path):
        self.tmp = tmp_path
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, config: Path, *extra: str) -> subprocess.Popen:
        log = open(self.tmp / f"{name}.log", "ab")
        proc = subprocess.Popen([sys.executable, "-m", "gossipfl", "peer", "start", "--config", str(config), *extra],
                                stdout=log, stderr=log, env={**os.environ, "PYTHONPATH": str(ROOT)})
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")

    def kill(self, name: str) -> None:
        self.procs[name].send_signal(signal.SIGKILL)
        self.procs[name].wait(30)

    def wait_all(self, timeout: float) -> dict[str, int]:
        end = time.time() + timeout
        codes = {}
        for name, p in self.procs.items():
            try:
                codes[name] = p.wait(max(1.0, end - time.time()))
            except subprocess.TimeoutExpired:
                codes[name] = None
        return codes

    def stop_all(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def wait_until(pp: PeerProcesses, names, check, timeout: float = 120.0) -> None:
    """Until check(log) holds for the log of every one of `names`; fails with their logs at the
    timeout, or at once when one of them exited without it (no waiting on a dead peer)."""
    end = time.time() + timeout
    while True:
        if all(check(pp.log(n)) for n in names):
            return
        exited = [n for n in names if n in pp.procs and pp.procs[n].poll() is not None]
        if exited and all(check(pp.log(n)) for n in names):  # its last lines came as it exited
            return
        if exited or time.time() > end:
            why = f"{', '.join(exited)} exited" if exited else "timed out"
            raise AssertionError(f"{why} waiting on {names}:\n" + "\n---\n".join(pp.log(n)[-2000:] for n in names))
        time.sleep(0.2)


def rounds_done(k: int):
    """A check for wait_until: the peer logged k rounds that aggregated."""
    return lambda text: text.count(" neighbours accepted") >= k


@pytest.fixture
def peer_processes(tmp_path):
    pp = PeerProcesses(tmp_path)
    try:
        yield pp
    finally:
        pp.stop_all()


async def collect_until(client, marker: bytes, timeout: float = 10.0) -> list[tuple[str, bytes]]:
    """Every message an aiomqtt client gets up to and including `marker`: one connection delivers
    in order (QoS 1 markers are barriers), so whatever the broker routed to it before the marker
    is in the list."""
    import asyncio

    got = []
    async with asyncio.timeout(timeout):
        async for m in client.messages:
            got.append((str(m.topic), bytes(m.payload)))
            if m.payload == marker:
                return got
    return got
