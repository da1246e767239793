"""Trust lists: which PeerIds may take part in a network."""

from __future__ import annotations

import json
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from .errors import PeerIdError, TrustListError
from .files import FileReadError, read_limited_text
from .identity import check_peer_id

MAX_TRUST_FILE = 4 * 1024 * 1024


@dataclass(frozen=True)
class TrustList:
    """The allowed peers of one network; `names` maps a PeerId to an optional label.
    `admin` is the PeerId of the network's admin key, which signs membership records
    (None in trust lists written before there was one: no membership changes then);
    `retired` the admin keys rotated away before it, oldest first (`fleet rotate-admin`):
    records they signed before their rotation still count, none after."""

    network: str
    peers: frozenset[str]
    names: dict[str, str]
    admin: str | None = None
    retired: tuple[str, ...] = ()

    def __contains__(self, peer_id: object) -> bool:
        return peer_id in self.peers

    def to_toml(self) -> str:
        lines = [f'network = "{self.network}"']
        if self.admin is not None:
            lines.append(f'admin = "{self.admin}"  # signs membership records; its key is kept off the gateways')
        if self.retired:
            keys = ", ".join(f'"{k}"' for k in self.retired)
            lines.append(f"retired_admins = [{keys}]  # rotated away, oldest first: nothing they sign now counts")
        lines.append("")
        for pid in sorted(self.peers, key=lambda p: (self.names.get(p, ""), p)):
            lines.append("[[peer]]")
            lines.append(f'id = "{pid}"')
            if pid in self.names:
                lines.append(f'name = "{self.names[pid]}"')
            lines.append("")
        return "\n".join(lines)


def build_trust_list(network: object, entries: list, admin: object = None, retired: object = ()) -> TrustList:
    """Entries are PeerId strings or {id, name} tables; errors name the bad entry. `network` and
    `admin` are checked too (they may come straight from a parsed file). (Lists written for
    single-masking secure aggregation also carry `x25519` and `binding`: unused now that every
    round's keys are fresh and signed by the identity, and ignored.)"""
    if not isinstance(network, str) or not network:
        raise TrustListError("trust list: `network` must be a non-empty string")
    if admin is not None:
        if not isinstance(admin, str):
            raise TrustListError(f"trust list: `admin` must be a PeerId string, got {admin!r:.80}")
        try:
            check_peer_id(admin)
        except PeerIdError as exc:
            raise TrustListError(f"trust list: `admin`: {exc}") from None
    peers: list[str] = []
    names: dict[str, str] = {}
    for i, entry in enumerate(entries):
        pid, name = (entry, None) if isinstance(entry, str) else (
            (entry.get("id"), entry.get("name")) if isinstance(entry, dict) else (None, None))
        if not isinstance(pid, str):
            raise TrustListError(f"trust list entry {i + 1}: expected a PeerId string or {{id, name}}, got {entry!r:.80}")
        try:
            check_peer_id(pid)
        except PeerIdError as exc:
            raise TrustListError(f"trust list entry {i + 1}: {exc}") from None
        if pid in peers:
            raise TrustListError(f"trust list entry {i + 1}: {pid} is listed twice")
        peers.append(pid)
        if name is not None:
            names[pid] = str(name)
    if admin is not None and admin in peers:
        raise TrustListError(f"trust list: `admin` {admin} is also a peer; the admin key must be kept apart from the nodes")
    return TrustList(network, frozenset(peers), names, admin, _retired(retired, admin, peers))


def _retired(retired: object, admin: object, peers: list[str]) -> tuple[str, ...]:
    """`retired_admins`: distinct PeerIds, none of them the admin or a peer, only with an admin."""
    if not isinstance(retired, list | tuple) or not all(isinstance(k, str) for k in retired):
        raise TrustListError(f"trust list: `retired_admins` must be a list of PeerId strings, got {retired!r:.80}")
    if retired and admin is None:
        raise TrustListError("trust list: `retired_admins` without `admin`: name the current admin key")
    for key in retired:
        try:
            check_peer_id(key)
        except PeerIdError as exc:
            raise TrustListError(f"trust list: `retired_admins`: {exc}") from None
        if key == admin or key in peers or list(retired).count(key) > 1:
            raise TrustListError(f"trust list: `retired_admins` names {key} twice, or as the admin or a peer")
    return tuple(retired)


def load_trust_list(path: str | os.PathLike) -> TrustList:
    """Read a TOML (`network = ...`, optional `admin = ...`, `[[peer]] id = ...` tables or a
    `peers = [...]` list) or JSON ({"network", "peers", optional "admin"}) trust list."""
    path = Path(path)
    try:
        text = read_limited_text(path, MAX_TRUST_FILE, "trust list")
    except FileReadError as exc:
        raise TrustListError(str(exc)) from None
    try:
        if path.suffix.lower() == ".json":
            doc = json.loads(text)
            entries = doc.get("peers", []) if isinstance(doc, dict) else None
        else:
            doc = tomllib.loads(text)
            entries = doc.get("peer", doc.get("peers", []))
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise TrustListError(f"trust list {path} does not parse: {exc}") from None
    except RecursionError:
        raise TrustListError(f"trust list {path} does not parse: nested too deeply") from None
    if not isinstance(doc, dict) or not isinstance(entries, list):
        raise TrustListError(f"trust list {path}: expected `network` and a list of peers")
    try:
        return build_trust_list(doc.get("network"), entries, doc.get("admin"), doc.get("retired_admins", []))
    except TrustListError as exc:
        raise TrustListError(f"{path}: {exc}") from None
