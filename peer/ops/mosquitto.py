"""Mosquitto files for an MQTT plan: a password file, an ACL and a minimal mosquitto.conf.

Why: the broker is shared, and the inbox topic's last level (the sender) is only a hint.
With these files every peer logs in as its PeerId, may publish only into its neighbours'
inboxes under its own sender suffix and to its own status, and may read only its own inbox
and its own status (a peer's status is nobody else's business); a separate dashboard login
(`dashboard`, its password in the broker folder) may read every status and nothing else;
the network admin (its PeerId too) may only publish membership records into inboxes under
its own suffix; anonymous clients are refused. `fleet admit` / `fleet revoke` add and remove logins in these files while the
broker runs; Mosquitto re-reads them on SIGHUP. The password hash
is Mosquitto 2's `$7$` format (PBKDF2-SHA512, as `mosquitto_passwd` writes it), computed
here so that a plan needs no broker tools and no password ever appears on a command line.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from gossip.mqtt_transport import inbox_topic, status_topic

from ..errors import ConfigError

PBKDF2_ITERATIONS = 101  # mosquitto_passwd's default for $7$ (its -I option)
SALT_BYTES = 12  # mosquitto_passwd's salt length
PASSWORD_BYTES = 24  # 192 random bits per peer
LOOPBACK = ("127.0.0.1", "localhost", "::1")
ADMIN_PASSWORD = "mqtt.password"  # the admin's broker password, in the plan's admin folder
DASHBOARD_USER = "dashboard"  # reads every status (fleet status, a dashboard); never a PeerId
DASHBOARD_PASSWORD = "dashboard.password"  # its password, in the plan's broker folder


@dataclass(frozen=True)
class BrokerPeer:
    """One login: the peer's PeerId (its username), its password, its neighbours' PeerIds."""

    peer_id: str
    password: str
    neighbours: tuple[str, ...]


@dataclass(frozen=True)
class BrokerFiles:
    conf: Path
    passwd: Path
    acl: Path


def new_password() -> str:
    return secrets.token_urlsafe(PASSWORD_BYTES)


def password_hash(password: str, salt: bytes | None = None, iterations: int = PBKDF2_ITERATIONS) -> str:
    """`$7$ITERATIONS$SALT$HASH` (base64), the format Mosquitto >= 2.0 reads from a password file."""
    salt = os.urandom(SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def password_file(peers: list[BrokerPeer]) -> str:
    return "".join(f"{p.peer_id}:{password_hash(p.password)}\n" for p in peers)


def acl_file(peers: list[BrokerPeer], prefix: str, network: str, admin: str | None = None) -> str:
    """One `user` section per login (no patterns: a pattern would grant the admin login a
    status and an inbox too): a peer reads its own inbox and its own status, writes its own
    status and its neighbours' inboxes under its own sender suffix; the dashboard login reads
    every status and nothing else; the admin writes into every inbox under its own suffix,
    and nothing else."""
    lines = [
        f"# Mosquitto ACL for gossipfl network {network!r}, written by `gossipfl topology plan`.",
        "# Usernames are PeerIds. Nothing is granted to anonymous clients (allow_anonymous false).",
        "# Each peer reads its own inbox and its own status, publishes its own status and into its",
        "# neighbours' inboxes, only under its own sender suffix.",
        "",
    ]
    lines += ["# Dashboards (gossipfl fleet status --source mqtt): every status, read only.",
              *dashboard_section(prefix, network), ""]
    if admin is not None:
        lines += ["# The network admin: membership records into every inbox (gossipfl fleet admit/revoke).",
                  *admin_section(admin, prefix, network), ""]
    for p in peers:
        lines += [*peer_section(p, prefix, network), ""]
    return "\n".join(lines)


def peer_section(p: BrokerPeer, prefix: str, network: str) -> list[str]:
    return [f"user {p.peer_id}",
            f"topic read {inbox_topic(prefix, network, p.peer_id, '+')}",
            f"topic readwrite {status_topic(prefix, network, p.peer_id)}",
            *(f"topic write {inbox_topic(prefix, network, nb, p.peer_id)}" for nb in p.neighbours)]


def dashboard_section(prefix: str, network: str) -> list[str]:
    return [f"user {DASHBOARD_USER}", f"topic read {status_topic(prefix, network, '+')}"]


def admin_section(admin: str, prefix: str, network: str) -> list[str]:
    return [f"user {admin}", f"topic write {inbox_topic(prefix, network, '+', admin)}"]


def mosquitto_conf(host: str, port: int, passwd: Path, acl: Path) -> str:
    bind = f" {host}" if host in LOOPBACK else ""  # a remote broker host: listen on every interface
    return (f"# Minimal Mosquitto (>= 2.0) config for this plan: mosquitto -c {passwd.parent / 'mosquitto.conf'}\n"
            "# Use TLS (listener certfile/keyfile) when peers reach the broker over a network you do not trust:\n"
            "# passwords travel in the clear otherwise. Started as root, Mosquitto reads these files as\n"
            "# its `user` (default: mosquitto): chown that user the passwd file (mode 0600).\n"
            f"listener {port}{bind}\n"
            "allow_anonymous false\n"
            f"password_file {passwd}\n"
            f"acl_file {acl}\n"
            "persistence false\n")


def write_broker_files(folder: Path, peers: list[BrokerPeer], *, prefix: str, network: str, host: str,
                       port: int, admin: BrokerPeer | None = None) -> BrokerFiles:
    """Write passwd (0600), acl and mosquitto.conf into `folder` (absolute paths in the conf),
    and the dashboard login's password (DASHBOARD_PASSWORD, 0600); `admin`: the network
    admin's login too (it delivers membership records)."""
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    files = broker_files(folder)
    dashboard = BrokerPeer(DASHBOARD_USER, new_password(), ())
    write_secret(folder / DASHBOARD_PASSWORD, dashboard.password + "\n")
    write_secret(files.passwd, password_file(peers + ([admin] if admin else []) + [dashboard]))
    files.acl.write_text(acl_file(peers, prefix, network, admin.peer_id if admin else None))
    files.conf.write_text(mosquitto_conf(host, port, files.passwd, files.acl))
    return files


def broker_files(folder: Path) -> BrokerFiles:
    folder = Path(folder)
    return BrokerFiles(folder / "mosquitto.conf", folder / "passwd", folder / "acl")


def write_admin_login(folder: Path, admin_id: str) -> BrokerPeer:
    """The admin's broker login: username its PeerId, the password in FOLDER/mqtt.password
    (0600, beside admin.key: it never reaches a gateway)."""
    login = BrokerPeer(admin_id, new_password(), ())
    write_secret(Path(folder) / ADMIN_PASSWORD, login.password + "\n")
    return login


# --- changing a running broker's files (gossipfl fleet admit / revoke; then reload it: SIGHUP) ---

def add_login(folder: Path, peer: BrokerPeer, *, prefix: str, network: str) -> BrokerFiles:
    """Give an admitted gateway a login: its hash in passwd, its ACL section, and a line in
    each neighbour's section that lets the neighbour write into its inbox."""
    files = _existing(folder)
    users = _password_lines(files.passwd)
    if peer.peer_id in users:
        raise ConfigError(f"{files.passwd} already has a login {peer.peer_id}")
    blocks = _acl_blocks(files.acl.read_text())
    owners = {_user(b): b for b in blocks if _user(b)}
    missing = [nb for nb in peer.neighbours if nb not in owners]
    if missing:
        raise ConfigError(f"{files.acl} has no section for neighbour {missing[0]} (was it revoked?)")
    for nb in peer.neighbours:
        owners[nb].append(f"topic write {inbox_topic(prefix, network, peer.peer_id, nb)}")
    blocks.append(peer_section(peer, prefix, network))
    users[peer.peer_id] = password_hash(peer.password)
    _write(files, users, blocks)
    return files


def remove_login(folder: Path, peer_id: str, *, prefix: str, network: str) -> BrokerFiles:
    """Take a revoked gateway's login away: its passwd line, its ACL section, and every
    neighbour's right to write into its inbox (idempotent)."""
    files = _existing(folder)
    users = _password_lines(files.passwd)
    users.pop(peer_id, None)
    blocks = [b for b in _acl_blocks(files.acl.read_text()) if _user(b) != peer_id]
    for b in blocks:
        if user := _user(b):
            gone = f"topic write {inbox_topic(prefix, network, peer_id, user)}"
            b[:] = [line for line in b if line != gone]
    _write(files, users, blocks)
    return files


def replace_admin_login(folder: Path, old: str, new: BrokerPeer, *, prefix: str, network: str) -> BrokerFiles:
    """The admin key was rotated: the old admin's login and ACL section go, the new one's come."""
    files = _existing(folder)
    users = _password_lines(files.passwd)
    users.pop(old, None)
    users[new.peer_id] = password_hash(new.password)
    blocks = [b for b in _acl_blocks(files.acl.read_text()) if _user(b) != old]
    _write(files, users, [*blocks, admin_section(new.peer_id, prefix, network)])
    return files


def _existing(folder: Path) -> BrokerFiles:
    files = broker_files(folder)
    for path in (files.passwd, files.acl):
        if not path.is_file():
            raise ConfigError(f"{path} not found: the plan's broker files are needed to add or remove a login")
    return files


def _password_lines(path: Path) -> dict[str, str]:
    users = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip() and not line.startswith("#"):
            user, sep, digest = line.partition(":")
            if not sep:
                raise ConfigError(f"{path}:{n}: not a `user:hash` line")
            users[user] = digest
    return users


def _acl_blocks(text: str) -> list[list[str]]:
    """The ACL as blocks of lines separated by blank lines (a block that starts `user X` is X's)."""
    blocks, block = [], []
    for line in text.splitlines():
        if line.strip():
            block.append(line)
        elif block:
            blocks.append(block)
            block = []
    return blocks + ([block] if block else [])


def _user(block: list[str]) -> str | None:
    users = [line.split(None, 1)[1].strip() for line in block if line.startswith("user ")]
    return users[0] if len(users) == 1 else None


def _write(files: BrokerFiles, users: dict[str, str], blocks: list[list[str]]) -> None:
    write_secret(files.passwd, "".join(f"{u}:{h}\n" for u, h in users.items()))
    files.acl.write_text("\n\n".join("\n".join(b) for b in blocks) + "\n")


def write_secret(path: Path, text: str) -> None:
    """Create `path` readable by its owner only, from the first byte on."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(path, 0o600)
