"""The provenance log: an append-only, hash-chained, signed record of what one peer did.

One SQLite database per peer (WAL, synchronous=FULL). Each event's hash covers the
previous event's hash, so editing, deleting or reordering any row breaks the chain;
each hash is signed by the peer's key; and a signed `head` (last seq and hash) is
updated in the same transaction, so cutting events off the end is caught too.
A `received` event keeps the sender's signed header, so a third party can check that
the sender really signed that update without anyone trusting this peer.

A log is born whole: it is built under a temporary name with its meta and a signed
genesis head (seq 0) and renamed into place, so every log this code wrote has a head
from its first moment. Opening a log checks its whole chain against that head (peer.state.chain:
one SHA-256 per event) and refuses a log that is truncated, cut, edited anywhere, re-signed or not
a log at all, naming the first event that does not fit: what start-up then reads (the last
checkpoint, privacy and membership events) is what the peer wrote.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from gossip.identity import Identity, verify_signature

from ..errors import ProvenanceError, TransientError
from . import files
from .chain import (  # noqa: F401 (the log's primitives, imported from here by the audit and tests)
    EVENT_DOMAIN,
    FORMAT,
    GENESIS,
    HEAD_DOMAIN,
    ChainError,
    event_hash,
    head_message,
    read_head,
    signed_head,
    verify_chain,
)

MAX_DETAILS_DEPTH = 32  # containers inside containers in an event's details


class EventKind(StrEnum):
    """What a provenance event records."""

    STARTED = "started"
    TRAINED = "trained"
    SENT = "sent"
    RECEIVED = "received"
    REJECTED = "rejected"
    AGGREGATED = "aggregated"
    CHECKPOINT = "checkpoint"
    STOPPED = "stopped"
    SKIPPED = "skipped"
    RATE_LIMITED = "rate_limited"
    DIVERGED = "diverged"  # the model went non-finite; the peer returned to its last good checkpoint
    MEMBERSHIP = "membership"  # an admin-signed membership record was applied (admit or revoke)
    PRIVACY = "privacy"  # a differentially private release was accounted (or the budget ran out)
    SECAGG = "secagg"  # secure_mean: a step of a double-masking session (who took part, who dropped, why it failed)
    SECAGG_LEDGER = "secagg_ledger"  # secure_mean: this member's ledger entry for a session, logged before it sends
    # single masking (before double masking): no longer written, still read in older logs
    REVEAL_REQUESTED = "reveal_requested"
    REVEALED = "revealed"


KINDS = tuple(k.value for k in EventKind)


class BrokenLogError(ProvenanceError):
    """A provenance log failed its check on open: appending would hide the break."""


@dataclass(frozen=True)
class NewEvent:
    """An event to append: the log adds seq, time, prev, hash and signature."""

    kind: EventKind
    round: int | None = None
    counterpart: str | None = None
    update_hash: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        try:
            object.__setattr__(self, "kind", EventKind(self.kind))
        except ValueError:
            raise ValueError(f"unknown provenance event kind {self.kind!r}") from None


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
        """Plain JSON values (non-finite numbers spelled as strings)."""
        return {"seq": self.seq, "ts": json_safe(self.ts), "kind": self.kind, "round": self.round,
                "counterpart": self.counterpart, "update_hash": self.update_hash,
                "details": json_safe(self.details), "prev": self.prev, "hash": self.hash, "sig": self.sig.hex()}


def json_safe(value: Any, depth: int = 0) -> Any:
    """`value` with non-finite floats as "NaN"/"Infinity"/"-Infinity" and tuples as lists;
    ValueError for more than MAX_DETAILS_DEPTH nested containers (the outermost counts)."""
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, (dict, list, tuple)):
        if depth >= MAX_DETAILS_DEPTH:
            raise ValueError(f"details nest deeper than {MAX_DETAILS_DEPTH} levels")
        if isinstance(value, dict):
            return {k: json_safe(v, depth + 1) for k, v in value.items()}
        return [json_safe(v, depth + 1) for v in value]
    return value


def details_text(details: Mapping[str, Any]) -> str:
    """The canonical JSON of an event's details (what the event hash covers)."""
    return json.dumps(json_safe(dict(details)), sort_keys=True, separators=(",", ":"), allow_nan=False)


def parse_details(text: str) -> Any:
    """Details JSON as stored: NaN/Infinity literals become their string spelling; ValueError
    for invalid JSON, a non-object or nesting past MAX_DETAILS_DEPTH (never RecursionError)."""
    if text.count("[") + text.count("{") > MAX_DETAILS_DEPTH and _nesting(text) > MAX_DETAILS_DEPTH:
        raise ValueError(f"details nest deeper than {MAX_DETAILS_DEPTH} levels")
    details = json.loads(text, parse_constant=str)
    if not isinstance(details, dict):
        raise ValueError("details are not a JSON object")
    return details


def _nesting(text: str) -> int:
    """Deepest bracket nesting outside strings, without recursion (an upper bound for JSON)."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


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

_COLUMNS = "seq, ts, kind, round, counterpart, update_hash, details, prev, hash, sig"


def connect(path: str | os.PathLike, create: bool = False) -> sqlite3.Connection:
    """Open a provenance database; typed errors for a missing file or something else."""
    path = Path(path)
    if not create and not path.is_file():
        raise ProvenanceError(f"{path}: no such provenance database")
    try:
        con = sqlite3.connect(f"file:{path}?mode={'rwc' if create else 'rw'}&nofollow=1", uri=True,
                              isolation_level=None, timeout=30, check_same_thread=False)  # written by the journal's thread
        con.execute("PRAGMA journal_mode=WAL")
    except sqlite3.DatabaseError as exc:
        if _disk_trouble(exc):  # the WAL and its index could not be made: a full disk, not a bad file
            raise TransientError(f"cannot open the provenance log {path}: {exc}; the peer stops and is restarted "
                                 "later (free space in its data folder)") from None
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
        parsed = parse_details(details) if isinstance(details, str) else {"_raw": repr(details)[:200]}
    except ValueError as exc:  # json.JSONDecodeError is a ValueError
        parsed = {"_unparseable": str(exc)}
    return Event(seq, ts, kind, rnd, cp, uh, parsed, prev, h, sig if isinstance(sig, bytes) else b"")


def iter_events(con: sqlite3.Connection, where: str = "", args: tuple = ()) -> Iterator[tuple]:
    yield from con.execute(f"SELECT {_COLUMNS} FROM events {where} ORDER BY seq", args)


def _create(path: Path, identity: Identity, network: str) -> None:
    """Build a new log under a temporary name (meta and a signed genesis head) and rename it
    into place: a crash leaves no log or a whole one, never an empty file."""
    tmp = path.with_name(path.name + ".new")
    for side in ("-wal", "-shm"):
        Path(f"{tmp}{side}").unlink(missing_ok=True)  # a link is removed, never followed
    os.close(files.open_fresh(tmp))  # empty, 0600, not through a link: SQLite makes it a database
    try:
        con = connect(tmp, create=True)
        try:
            con.execute("PRAGMA synchronous=FULL")
            con.executescript(_SCHEMA)
            con.execute("BEGIN IMMEDIATE")
            con.executemany("INSERT INTO meta VALUES (?, ?)", [
                ("format", FORMAT), ("peer_id", identity.peer_id), ("network", network), ("created", time.time()),
                ("head", signed_head(identity, 0, GENESIS))])
            con.execute("COMMIT")
        finally:
            con.close()  # the last connection checkpoints the WAL into the file and removes it
    except (ProvenanceError, sqlite3.OperationalError) as exc:
        tmp.unlink(missing_ok=True)
        if _disk_trouble(exc):
            raise TransientError(f"cannot create the provenance log {path}: {_plain(exc)}; the peer stops and is "
                                 "restarted later (free space in its data folder)") from None
        raise
    files.replace(tmp, path)


def _disk_trouble(exc: BaseException) -> bool:
    """SQLite's words for a full disk, a quota or a failing device (transient: restart later)."""
    text = str(exc).lower()
    return any(w in text for w in ("disk is full", "disk i/o error", "database or disk is full", "no space",
                                   "readonly database", "unable to open database file"))


def _plain(exc: BaseException) -> str:
    return str(exc).rsplit("(", 1)[-1].rstrip(")") if "(" in str(exc) else str(exc)


def _where(exc: ChainError) -> str:
    if exc.seq is None:
        return exc.problem
    return f"event {exc.seq}" + (f" ({exc.kind})" if exc.kind else "") + f": {exc.problem}"


class ProvenanceLog:
    """Appends signed events for one peer. Each append is one SQLite transaction.

    Opening creates the log if there is no file, and otherwise refuses (BrokenLogError)
    a file that is not this peer's intact log: appending after a cut or a forged head
    would make the break look like history."""

    def __init__(self, path: str | os.PathLike, identity: Identity, network: str = ""):
        self.path = Path(path)
        self.identity = identity
        files.make_dir(self.path.parent)
        if not self.path.exists() and not self.path.is_symlink():
            _create(self.path, identity, network)
        elif self.path.is_symlink() or not self.path.is_file():
            raise self._refuse("it is not a regular file (a symbolic link, a directory or a device)")
        elif self.path.stat().st_size == 0:
            raise self._refuse("it is empty (0 bytes), and a log is never created empty: it was truncated")
        for side in ("-wal", "-shm"):  # SQLite opens these beside the log itself
            files.refuse_link(f"{self.path}{side}")
        os.chmod(self.path, files.MODE)  # a regular file (checked above); SQLite's side files take its mode
        try:
            self.con = connect(self.path)
        except ProvenanceError as exc:
            raise self._refuse(str(exc).removeprefix(f"{self.path}: ")) from None
        try:
            self.con.execute("PRAGMA synchronous=FULL")
            try:
                meta = read_meta(self.con, self.path)
            except ProvenanceError as exc:
                raise self._refuse(str(exc).removeprefix(f"{self.path}: ")) from None
            if meta["peer_id"] != identity.peer_id:
                raise ProvenanceError(f"{self.path} belongs to peer {meta['peer_id']}, not {identity.peer_id}")
            try:
                end = verify_chain(self.con, identity.peer_id, meta.get("head"))
            except ChainError as exc:
                raise self._refuse(_where(exc)) from None
            except sqlite3.DatabaseError as exc:
                raise self._refuse(f"unreadable ({exc})") from None
            self._seq, self._prev = end.seq, end.hash
        except BaseException:
            self.con.close()
            raise

    def _refuse(self, problem: str) -> BrokenLogError:
        return BrokenLogError(
            f"the provenance log {self.path} is broken: {problem}. `gossipfl audit verify {self.path}` shows "
            "it; to start a new chain deliberately, move the log and the checkpoint beside it aside")

    @contextmanager
    def _tx(self) -> Iterator[None]:
        self.con.execute("BEGIN IMMEDIATE")
        try:
            yield
            self.con.execute("COMMIT")
        except BaseException:
            if self.con.in_transaction:  # a COMMIT the disk refused leaves it open: nothing of it stays
                self.con.execute("ROLLBACK")
            raise

    def append(self, kind: EventKind | str, round_: int | None = None, counterpart: str | None = None,
               update_hash: str | None = None, details: Mapping[str, Any] | None = None) -> int:
        return self.append_many([NewEvent(EventKind(kind), round_, counterpart, update_hash, details or {})])

    def append_many(self, events: Iterable[NewEvent | tuple]) -> int:
        """Append events atomically (durable when this returns); returns the last seq.
        Takes NewEvent, or (kind, round, counterpart, update_hash, details) tuples."""
        rows = []
        seq, prev = self._seq, self._prev
        pid = self.identity.peer_id
        for ev in events:
            if not isinstance(ev, NewEvent):
                ev = NewEvent(*ev)
            seq += 1
            ts = time.time()
            text = details_text(ev.details or {})
            kind = ev.kind.value
            h = event_hash(pid, seq, ts, kind, ev.round, ev.counterpart, ev.update_hash, text, prev)
            rows.append((seq, ts, kind, ev.round, ev.counterpart, ev.update_hash, text, prev, h,
                         self.identity.sign(bytes.fromhex(h))))
            prev = h
        if not rows:
            return self._seq
        try:
            with self._tx():
                self.con.executemany("INSERT INTO events VALUES (?,?,?,?,?,?,?,?,?,?)", rows)
                self.con.execute("INSERT OR REPLACE INTO meta VALUES ('head', ?)",
                                 (signed_head(self.identity, seq, prev),))
        except sqlite3.OperationalError as exc:
            if not _disk_trouble(exc):
                raise
            raise TransientError(f"cannot append to the provenance log {self.path}: {exc}; nothing was "
                                 "half-written; the peer stops and is restarted later (free space in its data "
                                 "folder)") from None
        self._seq, self._prev = seq, prev
        return seq

    def last_event(self, kind: EventKind | str) -> Event | None:
        """The latest event of `kind` (reads back from the end: O(events since it))."""
        row = self.con.execute(f"SELECT {_COLUMNS} FROM events WHERE kind = ? ORDER BY seq DESC LIMIT 1",
                               (EventKind(kind).value,)).fetchone()
        return self._checked(row) if row else None

    def _checked(self, row) -> Event:
        """An event read back for start-up, its hash and signature checked again (the chain was
        verified on open; this catches a row changed since, under the lock)."""
        ev = row_to_event(row)
        seq, ts, kind, rnd, cp, uh, details, prev, h, sig = row
        pid = self.identity.peer_id
        if not isinstance(details, str) or event_hash(pid, seq, ts, kind, rnd, cp, uh, details, prev) != h \
                or not verify_signature(pid, ev.sig, bytes.fromhex(h)):
            raise self._refuse(f"event {seq} ({kind}): its content does not match its hash or signature (altered)")
        return ev

    def events(self, kind: str | None = None) -> list[Event]:
        where, args = ("WHERE kind = ?", (kind,)) if kind else ("", ())
        return [row_to_event(r) for r in iter_events(self.con, where, args)]

    def close(self) -> None:
        self.con.close()
