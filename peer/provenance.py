"""The provenance log: an append-only, hash-chained, signed record of what one peer did.

One SQLite database per peer (WAL, synchronous=FULL). Each event's hash covers the
previous event's hash, so editing, deleting or reordering any row breaks the chain;
each hash is signed by the peer's key; and a signed `head` (last seq and hash) is
updated in the same transaction, so cutting events off the end is caught too.
A `received` event keeps the sender's signed header, so a third party can check that
the sender really signed that update without anyone trusting this peer.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack

from gossip.identity import Identity

from .errors import ProvenanceError

FORMAT = "gossipfl-provenance/1"
EVENT_DOMAIN = b"gossipfl/event/v1\x00"
HEAD_DOMAIN = b"gossipfl/head/v1\x00"
GENESIS = "0" * 64
KINDS = ("started", "trained", "sent", "received", "rejected", "aggregated", "checkpoint", "stopped",
         "skipped", "rate_limited")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    kind TEXT NOT NULL,
    round INTEGER,
    counterpart TEXT,
    update_hash TEXT,
    details TEXT NOT NULL,
    prev TEXT NOT NULL,
    hash TEXT NOT NULL,
    sig BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS events_update ON events(update_hash);
"""


@dataclass(frozen=True)
class Event:
    seq: int
    ts: float
    kind: str
    round: int | None
    counterpart: str | None
    update_hash: str | None
    details: dict[str, Any]
    prev: str
    hash: str
    sig: bytes

    def to_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "ts": self.ts, "kind": self.kind, "round": self.round,
                "counterpart": self.counterpart, "update_hash": self.update_hash,
                "details": self.details, "prev": self.prev, "hash": self.hash, "sig": self.sig.hex()}


def details_text(details: dict[str, Any]) -> str:
    return json.dumps(details, sort_keys=True, separators=(",", ":"), allow_nan=False)


def event_hash(peer_id: str, seq: int, ts: float, kind: str, round_: int | None,
               counterpart: str | None, update_hash: str | None, details: str, prev: str) -> str:
    body = msgpack.packb([FORMAT, peer_id, seq, ts, kind, round_, counterpart, update_hash, details, prev],
                         use_bin_type=True)
    return hashlib.sha256(EVENT_DOMAIN + body).hexdigest()


def head_message(seq: int, hash_: str) -> bytes:
    return HEAD_DOMAIN + msgpack.packb([seq, hash_])


def connect(path: str | os.PathLike, create: bool = False) -> sqlite3.Connection:
    """Open a provenance database; typed errors for a missing file or something else."""
    path = Path(path)
    if not create and not path.is_file():
        raise ProvenanceError(f"{path}: no such provenance database")
    try:
        con = sqlite3.connect(f"file:{path}?mode={'rwc' if create else 'rw'}", uri=True,
                              isolation_level=None, timeout=30)
        con.execute("PRAGMA journal_mode=WAL")
    except sqlite3.DatabaseError as exc:
        raise ProvenanceError(f"{path}: not a provenance database ({exc})") from None
    return con


def read_meta(con: sqlite3.Connection, path) -> dict[str, Any]:
    try:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not {"meta", "events"} <= tables:
            raise ProvenanceError(f"{path}: not a gossipfl provenance log (tables {sorted(tables)})")
        meta = {k: v for k, v in con.execute("SELECT key, value FROM meta")}
    except sqlite3.DatabaseError as exc:
        raise ProvenanceError(f"{path}: not a provenance database ({exc})") from None
    if meta.get("format") != FORMAT or not isinstance(meta.get("peer_id"), str):
        raise ProvenanceError(f"{path}: foreign provenance format {meta.get('format')!r}")
    return meta


def row_to_event(row) -> Event:
    seq, ts, kind, rnd, cp, uh, details, prev, h, sig = row
    try:
        parsed = json.loads(details) if isinstance(details, str) else {"_raw": repr(details)}
    except json.JSONDecodeError:
        parsed = {"_unparseable": details}
    return Event(seq, ts, kind, rnd, cp, uh, parsed, prev, h, sig if isinstance(sig, bytes) else b"")


def iter_events(con: sqlite3.Connection, where: str = "", args: tuple = ()) -> Iterator[tuple]:
    yield from con.execute(
        "SELECT seq, ts, kind, round, counterpart, update_hash, details, prev, hash, sig FROM events "
        f"{where} ORDER BY seq", args)


class ProvenanceLog:
    """Appends signed events for one peer. Each append is one SQLite transaction."""

    def __init__(self, path: str | os.PathLike, identity: Identity, network: str = ""):
        self.path = Path(path)
        self.identity = identity
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.con = connect(self.path, create=True)
        self.con.execute("PRAGMA synchronous=FULL")
        self.con.executescript(_SCHEMA)
        meta = {k: v for k, v in self.con.execute("SELECT key, value FROM meta")}
        if not meta:
            with self._tx():
                self.con.executemany("INSERT INTO meta VALUES (?, ?)", [
                    ("format", FORMAT), ("peer_id", identity.peer_id), ("network", network),
                    ("created", time.time())])
        elif meta.get("peer_id") != identity.peer_id:
            raise ProvenanceError(f"{self.path} belongs to peer {meta.get('peer_id')}, not {identity.peer_id}")
        row = self.con.execute("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1").fetchone()
        self._seq, self._prev = (row[0], row[1]) if row else (0, GENESIS)

    def _tx(self):
        con = self.con

        class _Tx:
            def __enter__(self_inner):
                con.execute("BEGIN IMMEDIATE")

            def __exit__(self_inner, exc_type, exc, tb):
                con.execute("COMMIT" if exc_type is None else "ROLLBACK")
                return False

        return _Tx()

    def append(self, kind: str, round_: int | None = None, counterpart: str | None = None,
               update_hash: str | None = None, details: dict[str, Any] | None = None) -> int:
        return self.append_many([(kind, round_, counterpart, update_hash, details or {})])

    def append_many(self, events: Iterable[tuple]) -> int:
        """Append (kind, round, counterpart, update_hash, details) tuples atomically; returns last seq."""
        rows = []
        seq, prev = self._seq, self._prev
        pid = self.identity.peer_id
        for kind, rnd, cp, uh, details in events:
            if kind not in KINDS:
                raise ValueError(f"unknown provenance event kind {kind!r}")
            seq += 1
            ts = time.time()
            text = details_text(details or {})
            h = event_hash(pid, seq, ts, kind, rnd, cp, uh, text, prev)
            rows.append((seq, ts, kind, rnd, cp, uh, text, prev, h, self.identity.sign(bytes.fromhex(h))))
            prev = h
        if not rows:
            return self._seq
        head = msgpack.packb([seq, prev, self.identity.sign(head_message(seq, prev))], use_bin_type=True)
        with self._tx():
            self.con.executemany("INSERT INTO events VALUES (?,?,?,?,?,?,?,?,?,?)", rows)
            self.con.execute("INSERT OR REPLACE INTO meta VALUES ('head', ?)", (head,))
        self._seq, self._prev = seq, prev
        return seq

    @property
    def last_seq(self) -> int:
        return self._seq

    def events(self, kind: str | None = None) -> list[Event]:
        where, args = ("WHERE kind = ?", (kind,)) if kind else ("", ())
        return [row_to_event(r) for r in iter_events(self.con, where, args)]

    def close(self) -> None:
        self.con.close()
