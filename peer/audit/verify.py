"""Auditing provenance logs: verify chains and signatures, query, export, trace lineage."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import sqlite3
from dataclasses import dataclass, field
from typing import Any

import msgpack

from gossip.identity import PeerIdError, check_peer_id, verify_signature

from ..errors import ProvenanceError
from ..state.provenance import (
    GENESIS,
    KINDS,
    Event,
    EventKind,
    connect,
    details_text,
    event_hash,
    head_message,
    iter_events,
    parse_details,
    read_head,
    read_meta,
    row_to_event,
)

# gossip.envelope.DOMAIN, spelled here because importing gossip.envelope loads torch (its codecs)
# and auditing needs no model; tests/test_audit_queries.py pins the two to each other.
ENVELOPE_DOMAIN = b"gossipfl/envelope/v1\x00"


@dataclass
class Verdict:
    """What `audit verify` found: OK (events, all valid), EMPTY (a valid log with no events:
    nothing to vouch for, so not OK) or BROKEN (the first bad event and why)."""

    path: str
    peer_id: str
    events: int
    status: str = "OK"
    first_bad: int | None = None
    problem: str = ""
    received_headers: int = 0

    @property
    def ok(self) -> bool:
        return self.status == "OK"

    def line(self) -> str:
        if self.status == "OK":
            return (f"OK      {self.path}: {self.events} events, chain and signatures valid, "
                    f"{self.received_headers} sender headers re-verified (peer {self.peer_id})")
        if self.status == "EMPTY":
            return f"EMPTY   {self.path}: 0 events, nothing to vouch for ({self.problem}; peer {self.peer_id})"
        return f"BROKEN  {self.path}: event {self.first_bad}: {self.problem}"


def _check_received(ev_details: dict, counterpart: str | None, update_hash: str | None) -> str | None:
    """Re-verify a stored sender header; returns a problem or None."""
    try:
        header = bytes.fromhex(ev_details["header"])
        sig = bytes.fromhex(ev_details["sig"])
    except (KeyError, TypeError, ValueError):
        return "received event lacks the sender's signed header"
    digest = hashlib.sha256(ENVELOPE_DOMAIN + header).digest()
    if update_hash != digest.hex():
        return "update hash does not match the stored sender header"
    try:
        fields = msgpack.unpackb(header, raw=False, max_bin_len=1 << 16, max_array_len=1024)
    except Exception:
        return "stored sender header does not decode"
    sender = fields.get("sender") if isinstance(fields, dict) else None
    if sender != counterpart:
        return "stored header's sender differs from the event's counterpart"
    if not isinstance(sender, str) or not verify_signature(sender, sig, digest):  # None: no sender to verify
        return "sender's signature on the stored header does not verify"
    return None


def _check_event(peer_id: str, row: tuple, prev: str, expected: int) -> str | None:
    """The problem with one stored event given the previous event's hash, or None."""
    seq, ts, kind, rnd, cp, uh, details, prev_field, h, sig = row
    if seq != expected:
        return f"sequence jumps from {expected - 1} to {seq} (events deleted or reordered)"
    if not isinstance(details, str) or not isinstance(sig, bytes) or not isinstance(h, str):
        return "a field has the wrong type"
    if prev_field != prev:
        return "prev does not match the previous event's hash"
    try:
        parsed = parse_details(details)
        canonical = details_text(parsed)
    except ValueError as exc:  # invalid JSON, not an object, nested too deeply
        return f"details are not valid: {exc}"
    if canonical != details:
        return "details are not in canonical form"
    if event_hash(peer_id, seq, ts, kind, rnd, cp, uh, details, prev) != h:
        return "hash does not match the event's content (altered)"
    if not verify_signature(peer_id, sig, bytes.fromhex(h)):
        return "signature does not verify with the owner's key"
    if kind not in KINDS:
        return f"unknown kind {kind!r}"
    if kind == EventKind.RECEIVED:
        return _check_received(parsed, cp, uh)
    return None


def verify_log(path: str | os.PathLike) -> Verdict:
    """Check every link, every event signature, every stored sender header, and the head."""
    con = connect(path)
    try:
        meta = read_meta(con, path)
        peer_id = meta["peer_id"]
        try:
            check_peer_id(peer_id)
        except PeerIdError as exc:
            raise ProvenanceError(f"{path}: owner is not a PeerId ({exc})") from None
        verdict = Verdict(str(path), peer_id, 0)
        prev, expected = GENESIS, 1

        def broken(seq, problem):
            verdict.status, verdict.first_bad, verdict.problem = "BROKEN", seq, problem
            return verdict

        try:
            for row in iter_events(con):
                problem = _check_event(peer_id, row, prev, expected)
                if problem:
                    return broken(row[0], problem)
                verdict.received_headers += row[2] == EventKind.RECEIVED
                prev, expected = row[8], expected + 1
                verdict.events += 1
        except sqlite3.DatabaseError as exc:
            return broken(None, f"database unreadable: {exc}")
        head = meta.get("head")
        parsed = read_head(head)
        if parsed is None:  # a log has a signed head from its creation on (seq 0 at genesis)
            return broken(expected, "the signed head is unreadable" if head is not None else
                          "the signed head is missing (deleted, with any events after it?)")
        head_seq, head_hash, head_sig = parsed
        if not verify_signature(peer_id, head_sig, head_message(head_seq, head_hash)):
            return broken(head_seq, "the head's signature does not verify")
        if head_seq != verdict.events or head_hash != prev:
            return broken(expected if head_seq > verdict.events else head_seq,
                          f"the signed head names event {head_seq} but the log ends at {verdict.events} "
                          "(events cut off the end, or the log rolled back)")
        if verdict.events == 0:
            verdict.status, verdict.problem = "EMPTY", "signed head at genesis"
        return verdict
    finally:
        con.close()


def load_events(path, *, round_: int | None = None, kind: str | None = None,
                peer: str | None = None) -> tuple[str, list[Event]]:
    con = connect(path)
    try:
        meta = read_meta(con, path)
        clauses, args = [], []
        for col, val in (("round", round_), ("kind", kind), ("counterpart", peer)):
            if val is not None:
                clauses.append(f"{col} = ?")
                args.append(val)
        where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
        try:
            return meta["peer_id"], [row_to_event(r) for r in iter_events(con, where, tuple(args))]
        except sqlite3.DatabaseError as exc:
            raise ProvenanceError(f"{path}: unreadable ({exc})") from None
    finally:
        con.close()


def export(path, fmt: str) -> str:
    """The whole log as JSON lines or CSV text."""
    peer_id, events = load_events(path)
    if fmt == "jsonl":
        return "".join(json.dumps({"peer": peer_id, **e.to_dict()}) + "\n" for e in events)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["peer", "seq", "ts", "kind", "round", "counterpart", "update_hash", "details", "prev",
                    "hash", "sig"])
        for e in events:
            d = e.to_dict()
            w.writerow([peer_id, e.seq, e.ts, e.kind, e.round, e.counterpart, e.update_hash,
                        details_text(e.details), e.prev, e.hash, d["sig"]])
        return buf.getvalue()
    raise ProvenanceError(f"unknown export format {fmt!r}; use jsonl or csv")


# --- lineage ---------------------------------------------------------------------------


@dataclass
class Lineage:
    """Where one update came from and where it went, from the logs at hand."""

    update: str
    sender: str | None = None
    round: int | None = None
    inputs: list[Lineage] = field(default_factory=list)
    fed: list[dict[str, Any]] = field(default_factory=list)  # {peer, round, next_update: Lineage|None}
    seen_in: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"update": self.update, "sender": self.sender, "round": self.round,
                "seen_in": self.seen_in, "inputs": [i.to_dict() for i in self.inputs],
                "fed": [{"peer": f["peer"], "round": f["round"],
                         "next_update": f["next"].to_dict() if f["next"] else None} for f in self.fed]}


class LineageIndex:
    def __init__(self, paths):
        self.sent: dict[str, tuple[str, int | None, list[str]]] = {}
        self.consumers: dict[str, list[tuple[str, int | None]]] = {}
        self.next_sent: dict[tuple[str, int | None], str] = {}
        self.seen_in: dict[str, set[str]] = {}
        for path in paths:
            peer_id, events = load_events(path)
            for e in events:
                if e.update_hash:
                    self.seen_in.setdefault(e.update_hash, set()).add(peer_id)
                if e.kind == "sent" and e.update_hash:
                    parents = [p for p in e.details.get("parents", []) if isinstance(p, str)]
                    self.sent[e.update_hash] = (peer_id, e.round, parents)
                    self.next_sent[(peer_id, e.round)] = e.update_hash
                elif e.kind == "aggregated":
                    for h in e.details.get("inputs", []):
                        if isinstance(h, str):
                            self.consumers.setdefault(h, []).append((peer_id, e.round))

    def backward(self, update: str, depth: int) -> Lineage:
        node = Lineage(update, seen_in=sorted(self.seen_in.get(update, ())))
        if update in self.sent:
            node.sender, node.round, parents = self.sent[update]
            if depth > 0:
                node.inputs = [self.backward(p, depth - 1) for p in parents]
        return node

    def forward(self, update: str, depth: int) -> Lineage:
        node = self.backward(update, 0)
        for peer, rnd in sorted(set(self.consumers.get(update, [])), key=lambda x: (x[1], x[0])):
            nxt = self.next_sent.get((peer, rnd + 1)) if rnd is not None else None
            node.fed.append({"peer": peer, "round": rnd,
                             "next": self.forward(nxt, depth - 1) if (nxt and depth > 1) else (
                                 self.backward(nxt, 0) if nxt else None)})
        return node


def trace(update: str, paths, depth: int = 3) -> Lineage:
    """The update's inputs `depth` rounds back and the aggregations it fed `depth` rounds on
    (`update`: any unambiguous prefix; the picture of the same lineage is peer.audit.lineage's)."""
    from .fleet import Fleet

    update = Fleet.load(paths).resolve_update(update)
    index = LineageIndex(paths)
    back = index.backward(update, depth)
    back.fed = index.forward(update, depth).fed
    return back
