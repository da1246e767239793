"""Running under systemd: a unit file per planned node, and the peer's side of `Type=notify`.

Why: on a gateway the peer is a service. systemd starts it, learns that it is up when it
says READY=1, and restarts it when it stops feeding the watchdog (WATCHDOG=1), which it
does from a task on the event loop, so a stalled loop is a dead peer. The notify protocol
is one datagram per message on the unix socket named by $NOTIFY_SOCKET (abstract namespace
when it starts with '@'); this module speaks it without libsystemd. Outside systemd
($NOTIFY_SOCKET unset) every call is a no-op.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath

from ..errors import EXIT_REVOKED, EXIT_USER_ERROR, ConfigError

log = logging.getLogger("gossipfl.systemd")

DEFAULT_WATCHDOG_SEC = 60  # generous: a slow gateway's round (training runs off the loop) must fit
DEFAULT_INSTALL_DIR = "/opt/gossipfl"  # where a node's folder lives on its gateway
DEFAULT_USER = "gossipfl"
CONFIG_ERROR_EXIT = EXIT_USER_ERROR  # gossipfl's exit status for errors a user must fix: restarting cannot help


class Notifier:
    """A sd_notify client; disabled (every call returns False) when there is no socket."""

    def __init__(self, address: str | None):
        self.address = _socket_address(address)
        self.sock: socket.socket | None = None
        self.stopping_sent = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Notifier:
        return cls(env.get("NOTIFY_SOCKET"))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *fields: str) -> bool:
        """Send `KEY=value` fields as one datagram; never blocks, never raises (logs once)."""
        if self.address is None:
            return False
        try:
            if self.sock is None:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self.sock.setblocking(False)
            self.sock.sendto("\n".join(fields).encode("utf-8", "replace"), self.address)
            return True
        except BlockingIOError:  # the manager's queue is full: this message is lost, the next may pass
            return False
        except OSError as exc:
            log.warning("systemd notify socket %s: %s; not notifying any more", _shown(self.address), exc)
            self.close()
            self.address = None
            return False

    def ready(self, status: str = "") -> bool:
        return self.send("READY=1", *([f"STATUS={_one_line(status)}"] if status else []))

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={_one_line(text)}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def stopping(self) -> bool:
        """STOPPING=1, once."""
        if self.stopping_sent:
            return False
        self.stopping_sent = True
        return self.send("STOPPING=1")

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def _socket_address(address: str | None) -> str | bytes | None:
    if not address:
        return None
    if address.startswith("@"):  # abstract namespace: a leading NUL byte instead of '@'
        return b"\0" + address[1:].encode()
    if address.startswith("/"):
        return address
    log.warning("NOTIFY_SOCKET %r is neither a path nor an abstract socket; not notifying systemd", address[:80])
    return None


def _shown(address: str | bytes) -> str:
    return "@" + address[1:].decode(errors="replace") if isinstance(address, bytes) else address


def _one_line(text: str) -> str:
    return " ".join(str(text).split())[:200]


def watchdog_interval(env: Mapping[str, str] = os.environ, pid: int | None = None) -> float | None:
    """Seconds between WATCHDOG=1 messages: half of $WATCHDOG_USEC, or None when systemd did
    not ask this process (unset, not a positive integer, or $WATCHDOG_PID names another)."""
    usec = env.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) <= 0:
        return None
    owner = env.get("WATCHDOG_PID", "")
    if owner and owner != str(os.getpid() if pid is None else pid):
        return None
    return int(usec) / 2e6


async def feed_watchdog(notifier: Notifier, interval: float) -> None:
    """WATCHDOG=1 every `interval` seconds from the event loop (until cancelled)."""
    while True:
        notifier.watchdog()
        await asyncio.sleep(interval)


# --- unit files ------------------------------------------------------------------------


@dataclass(frozen=True)
class UnitSpec:
    """One node's service on its gateway; every path is the gateway's, absolute."""

    name: str  # the unit's name without .service, e.g. gossipfl-3
    description: str
    executable: str  # the gossipfl command
    config: PurePosixPath  # the node's peer.toml
    workdir: PurePosixPath  # the node's folder
    data_dir: PurePosixPath  # the only folder the service may write
    user: str = DEFAULT_USER
    watchdog_sec: int = DEFAULT_WATCHDOG_SEC

    def __post_init__(self):
        for label, path in (("executable", self.executable), ("config", self.config), ("workdir", self.workdir),
                            ("data_dir", self.data_dir)):
            text = str(path)
            if (not text.startswith("/") or ".." in PurePosixPath(text).parts
                    or any(c.isspace() or c in "\"'\\%$;" for c in text)):
                raise ConfigError(f"systemd unit {self.name}: {label} must be an absolute path without '..', "
                                 f"spaces, quotes or %$;\\ characters, got {text!r}")
        if not self.user or not all(c.isalnum() or c in "-_." for c in self.user):
            raise ConfigError(f"systemd unit {self.name}: user must be a plain user name, got {self.user!r}")
        if self.watchdog_sec < 1:
            raise ConfigError(f"systemd unit {self.name}: watchdog_sec must be >= 1, got {self.watchdog_sec}")


# Hardening. Left out on purpose: MemoryDenyWriteExecute (libffi closures and JIT-compiled
# kernels in PyTorch need writable+executable pages), PrivateUsers and ProcSubset=pid
# (PyTorch reads /proc/cpuinfo and /proc/meminfo).
HARDENING = """\
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
ProtectProc=invisible
RestrictSUIDSGID=yes
RestrictRealtime=yes
RestrictNamespaces=yes
LockPersonality=yes
RemoveIPC=yes
CapabilityBoundingSet=
AmbientCapabilities=
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallErrorNumber=EPERM
UMask=0077
"""


def unit_text(spec: UnitSpec) -> str:
    """The unit file: Type=notify with a watchdog, restarted on failure (not on a config
    error), hardened, writing only to the node's data folder."""
    return (
        f"# systemd unit for {spec.description}, written by `gossipfl topology plan`.\n"
        f"# Install (as root, once {spec.workdir} holds this node's folder and is owned by {spec.user}):\n"
        f"#   cp {spec.workdir}/{spec.name}.service /etc/systemd/system/\n"
        f"#   systemctl daemon-reload && systemctl enable --now {spec.name}\n"
        f"# Watch: systemctl status {spec.name}; journalctl -u {spec.name} -f\n"
        "[Unit]\n"
        f"Description={spec.description}\n"
        "Wants=network-online.target\n"
        "After=network-online.target\n"
        "\n"
        "[Service]\n"
        "Type=notify\n"
        "NotifyAccess=main\n"
        f"ExecStart={spec.executable} peer start --config {spec.config}\n"
        f"WorkingDirectory={spec.workdir}\n"
        f"User={spec.user}\n"
        f"Group={spec.user}\n"
        "Environment=PYTHONUNBUFFERED=1\n"
        f"WatchdogSec={spec.watchdog_sec}\n"
        "TimeoutStartSec=300\n"
        "TimeoutStopSec=60\n"
        "Restart=on-failure\n"
        "RestartSec=5\n"
        f"RestartPreventExitStatus={CONFIG_ERROR_EXIT} {EXIT_REVOKED}\n"
        f"{HARDENING}"
        f"ReadWritePaths={spec.data_dir}\n"
        "\n"
        "[Install]\n"
        "WantedBy=multi-user.target\n"
    )


@dataclass(frozen=True)
class GatewayLayout:
    """Where a plan's folders go on the gateways: INSTALL_DIR/trust.toml and INSTALL_DIR/node-X,
    run as `user` with `executable` (default INSTALL_DIR/venv/bin/gossipfl)."""

    install_dir: str = DEFAULT_INSTALL_DIR
    user: str = DEFAULT_USER
    executable: str | None = None
    watchdog_sec: int = DEFAULT_WATCHDOG_SEC

    def unit(self, label: str, folder: str, data_dir: str, description: str) -> UnitSpec:
        """`folder` is the node's folder name in the plan; `data_dir` its storage.dir, relative
        to that folder or absolute."""
        root = PurePosixPath(self.install_dir)
        workdir = root / folder
        executable = self.executable or str(root / "venv" / "bin" / "gossipfl")
        return UnitSpec(f"gossipfl-{label}", description, executable, workdir / "peer.toml", workdir,
                        workdir / data_dir, self.user, self.watchdog_sec)
