"""Mosquitto files for an MQTT plan: a password file, an ACL and a minimal mosquitto.conf.

Why: the broker is shared, and the inbox topic's last level (the sender) is only a hint.
With these files every peer logs in as its PeerId, may publish only into its neighbours'
inboxes under its own sender suffix and to its own status, and may read only its own inbox
(plus everyone's status, for dashboards); anonymous clients are refused. The password hash
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

PBKDF2_ITERATIONS = 101  # mosquitto_passwd's default for $7$ (its -I option)
SALT_BYTES = 12  # mosquitto_passwd's salt length
PASSWORD_BYTES = 24  # 192 random bits per peer
LOOPBACK = ("127.0.0.1", "localhost", "::1")


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
    status and an inbox too): a peer reads its own inbox and every status, writes its own
    status and its neighbours' inboxes under its own sender suffix; the admin writes into
    every inbox under its own suffix, and nothing else."""
    lines = [
        f"# Mosquitto ACL for gossipfl network {network!r}, written by `gossipfl topology plan`.",
        "# Usernames are PeerIds. Nothing is granted to anonymous clients (allow_anonymous false).",
        "# Each peer reads its own inbox and every status (dashboards), publishes its own status",
        "# and into its neighbours' inboxes, only under its own sender suffix.",
        "",
    ]
    if admin is not None:
        lines += ["# The network admin: membership records into every inbox (gossipfl fleet admit/revoke).",
                  *admin_section(admin, prefix, network), ""]
    for p in peers:
        lines += [*peer_section(p, prefix, network), ""]
    return "\n".join(lines)


def peer_section(p: BrokerPeer, prefix: str, network: str) -> list[str]:
    return [f"user {p.peer_id}",
            f"topic read {inbox_topic(prefix, network, p.peer_id, '+')}",
            f"topic read {status_topic(prefix, network, '+')}",
            f"topic readwrite {status_topic(prefix, network, p.peer_id)}",  # read: granted by the line above
            *(f"topic write {inbox_topic(prefix, network, nb, p.peer_id)}" for nb in p.neighbours)]


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
                       port: int) -> BrokerFiles:
    """Write passwd (0600), acl and mosquitto.conf into `folder` (absolute paths in the conf)."""
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    files = BrokerFiles(folder / "mosquitto.conf", folder / "passwd", folder / "acl")
    write_secret(files.passwd, password_file(peers))
    files.acl.write_text(acl_file(peers, prefix, network))
    files.conf.write_text(mosquitto_conf(host, port, files.passwd, files.acl))
    return files


def write_secret(path: Path, text: str) -> None:
    """Create `path` readable by its owner only, from the first byte on."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(path, 0o600)
