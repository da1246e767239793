"""A fleet's provenance logs loaded for questions: who is who (plan names from the nearest
trust.toml / peer.toml), and hashes and peers named the way people name them (any
unambiguous prefix of a hash; a plan name, a PeerId prefix or suffix, or a log path)."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gossip.errors import GossipError
from gossip.files import FileReadError, read_limited_text
from gossip.trust import load_trust_list

from ..errors import ProvenanceError
from ..state.provenance import Event

MAX_CONFIG_BYTES = 1 << 20
MAX_LOGS = 10_000
CANDIDATES_SHOWN = 8
_HEX = frozenset("0123456789abcdef")


class AuditLookupError(ProvenanceError):
    """A hash or a peer name that matches nothing, or more than one thing."""


def resolve_prefix(text: str, candidates: Iterable[str], what: str, describe=None) -> str:
    """The one candidate equal to `text` or starting with it (case-insensitive hex); an error
    listing the candidates when several match, and one saying so when none does."""
    needle = text.strip().lower()
    if not needle or not set(needle) <= _HEX:
        raise AuditLookupError(f"{what} {text!r} is not a hexadecimal hash or prefix")
    pool = set(candidates)
    if needle in pool:
        return needle
    found = sorted(c for c in pool if c.startswith(needle))
    if len(found) == 1:
        return found[0]
    if not found:
        raise AuditLookupError(f"{what} {needle[:16]}{'...' if len(needle) > 16 else ''} appears in none "
                               f"of the logs given")
    raise AuditLookupError(_ambiguous(what, text, found, describe))


def _ambiguous(what: str, text: str, found: Sequence[str], describe=None) -> str:
    shown = [describe(c) if describe else c for c in found[:CANDIDATES_SHOWN]]
    more = f" and {len(found) - CANDIDATES_SHOWN} more" if len(found) > CANDIDATES_SHOWN else ""
    return f"{what} {text!r} is ambiguous: it matches {', '.join(shown)}{more}; give more characters"


def short(hash_: str | None, n: int = 10) -> str:
    return (hash_ or "")[:n]


def expand_logs(args: Iterable[str | os.PathLike]) -> list[Path]:
    """Log files as given; a folder stands for every provenance.db below it (a plan or sim folder)."""
    out: list[Path] = []
    for a in args:
        p = Path(a)
        if p.is_dir():
            found = sorted(p.glob("**/provenance.db"))[:MAX_LOGS]
            if not found:
                raise AuditLookupError(f"{p}: no provenance.db below this folder")
            out.extend(found)
        else:
            out.append(p)  # a missing file is reported by the loader, naming it
    return list(dict.fromkeys(out))


# --- names ----------------------------------------------------------------------------


def _read_toml(path: Path) -> dict | None:
    try:
        return tomllib.loads(read_limited_text(path, MAX_CONFIG_BYTES, "config"))
    except (FileReadError, tomllib.TOMLDecodeError, RecursionError, UnicodeDecodeError):
        return None


def _names_near(log: Path, owner: str, plan: Path | None) -> dict[str, str]:
    """Names from the files of a plan: PLAN/node-X/data/provenance.db has node-X/peer.toml
    (`name`, and its neighbours' names) and PLAN/trust.toml (every peer's name)."""
    names: dict[str, str] = {}
    folders = [plan] if plan else []
    folders += list(log.resolve().parents)[:4]
    for folder in folders:
        trust = folder / "trust.toml"
        if trust.is_file():
            try:
                names = {**load_trust_list(trust).names, **names}
            except GossipError:
                pass
        cfg = folder / "peer.toml"
        if cfg.is_file() and (doc := _read_toml(cfg)) is not None:
            if isinstance(doc.get("name"), str) and doc["name"]:
                names.setdefault(owner, doc["name"])
            net = doc.get("network")
            for nb in (net.get("neighbours", []) if isinstance(net, dict) else []):
                if isinstance(nb, dict) and isinstance(nb.get("id"), str) and isinstance(nb.get("name"), str):
                    names.setdefault(nb["id"], nb["name"])
    return names


# --- the fleet ------------------------------------------------------------------------


@dataclass
class PeerLog:
    path: Path
    owner: str
    events: list[Event]


@dataclass
class Fleet:
    """Every event of the logs at hand, and the names of the peers they mention."""

    logs: list[PeerLog]
    names: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, args: Iterable[str | os.PathLike], plan: str | os.PathLike | None = None) -> Fleet:
        from .verify import load_events

        plan_dir = Path(plan) if plan else None
        if plan_dir is not None and not plan_dir.is_dir():
            raise AuditLookupError(f"--plan {plan_dir}: no such folder")
        logs: list[PeerLog] = []
        names: dict[str, str] = {}
        for path in expand_logs(args):
            owner, events = load_events(path)
            logs.append(PeerLog(path, owner, events))
            for pid, name in _names_near(path, owner, plan_dir).items():
                names.setdefault(pid, name)
        owners = [log.owner for log in logs]
        dup = {o for o in owners if owners.count(o) > 1}
        if dup:
            raise AuditLookupError(f"two logs belong to the same peer {sorted(dup)[0]}: "
                                   f"{', '.join(str(log.path) for log in logs if log.owner in dup)}")
        return cls(logs, names)

    # --- display -------------------------------------------------------------------

    def name(self, peer_id: str | None) -> str:
        """The plan name of a peer, else a PeerId suffix that tells it apart."""
        if not peer_id:
            return "-"
        if peer_id in self.names:
            return self.names[peer_id]
        return ".." + peer_id[-8:]

    def label(self, peer_id: str | None) -> str:
        """Name and PeerId suffix, for places where both help ("1 (..uN5UNgJ)")."""
        if not peer_id:
            return "-"
        return f"{self.names[peer_id]} (..{peer_id[-8:]})" if peer_id in self.names else ".." + peer_id[-8:]

    # --- lookups -------------------------------------------------------------------

    def log_of(self, peer_id: str) -> PeerLog:
        for log in self.logs:
            if log.owner == peer_id:
                return log
        raise AuditLookupError(f"peer {self.label(peer_id)} is named but its log is not among the logs given")

    def known_peers(self) -> set[str]:
        peers = {log.owner for log in self.logs} | set(self.names)
        for log in self.logs:
            peers.update(e.counterpart for e in log.events if e.counterpart)
        return peers

    def resolve_peer(self, text: str) -> str:
        """A PeerId from a plan name, a log path, a whole PeerId or an unambiguous prefix or suffix."""
        text = text.strip()
        if not text:
            raise AuditLookupError("an empty peer name")
        for log in self.logs:
            if Path(text).exists() and Path(text).resolve() in (log.path.resolve(), log.path.resolve().parent.parent):
                return log.owner
        named = sorted(pid for pid, n in self.names.items() if n == text)
        if len(named) == 1:
            return named[0]
        peers = self.known_peers()
        if text in peers:
            return text
        core = text.removeprefix("..")
        found = sorted(p for p in peers if p.startswith(core) or p.endswith(core))
        if len(found) == 1:
            return found[0]
        if len(named) + len(found) > 1:
            raise AuditLookupError(_ambiguous("peer", text, sorted(set(named) | set(found)), self.label))
        names = ", ".join(sorted(set(self.names.values()))[:CANDIDATES_SHOWN])
        raise AuditLookupError(f"peer {text!r} is none of the {len(peers)} peers in these logs"
                               + (f" (plan names: {names})" if names else "")
                               + "; name one by plan name, PeerId prefix or suffix, or log path")

    def update_hashes(self) -> set[str]:
        """Every update or model hash the logs mention (events' update_hash, aggregation inputs, parents)."""
        out: set[str] = set()
        for log in self.logs:
            for e in log.events:
                if e.update_hash:
                    out.add(e.update_hash)
                for key in ("inputs", "parents"):
                    out.update(h for h in e.details.get(key, ()) if isinstance(h, str))
        return out

    def describe_hash(self, h: str) -> str:
        for log in self.logs:
            for e in log.events:
                if e.update_hash == h and e.kind in ("sent", "aggregated"):
                    what = "update" if e.kind == "sent" else "model"
                    return f"{short(h, 12)} ({what} of {self.name(log.owner)}, round {e.round})"
        return short(h, 12)

    def resolve_update(self, text: str) -> str:
        return resolve_prefix(text, self.update_hashes(), "update", self.describe_hash)

