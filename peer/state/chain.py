"""The check a provenance log passes before a peer appends to it or believes it: the WHOLE hash
chain, from the genesis to the signed head.

Every event's hash covers its content and the previous event's hash, and the head (last seq and
hash) is signed with the peer's key, so re-hashing every row and comparing the end with the signed
head proves every row is what the peer wrote: someone who can write the data folder but lacks the
key can edit, delete, reorder or insert nothing (deep in the log or at its end) without this
check naming the first event that no longer fits. It costs one SHA-256 of a small msgpack body per
event (bench/chain_verify.py measures it; the README states the figure) and no signature checks
but the head's: the per-event signatures add nothing the signed head does not already prove and
are `gossipfl audit verify`'s to check (with every stored sender header).

What it cannot see is a whole older log swapped in (an intact chain, an older signed head): the
peer's neighbours witness that (README, "A peer's past").
"""

from __future__ import annotations

import hashlib
import sqlite3
from dataclasses import dataclass
from typing import Any

import msgpack

from gossip.identity import Identity, verify_signature

from ..errors import ProvenanceError

FORMAT = "gossipfl-provenance/1"
EVENT_DOMAIN = b"gossipfl/event/v1\x00"
HEAD_DOMAIN = b"gossipfl/head/v1\x00"
GENESIS = "0" * 64


def event_hash(peer_id: str, seq: int, ts: float, kind: str, round_: int | None,
               counterpart: str | None, update_hash: str | None, details: str, prev: str) -> str:
    body = msgpack.packb([FORMAT, peer_id, seq, ts, kind, round_, counterpart, update_hash, details, prev],
                         use_bin_type=True)
    return hashlib.sha256(EVENT_DOMAIN + body).hexdigest()


def head_message(seq: int, hash_: str) -> bytes:
    return HEAD_DOMAIN + msgpack.packb([seq, hash_])


def signed_head(identity: Identity, seq: int, hash_: str) -> bytes:
    """The head row's value: [seq, hash, signature of head_message(seq, hash)]."""
    return msgpack.packb([seq, hash_, identity.sign(head_message(seq, hash_))], use_bin_type=True)


def read_head(raw: Any) -> tuple[int, str, bytes] | None:
    """(seq, hash, signature) of a stored head, None if it is not one."""
    try:
        seq, hash_, sig = msgpack.unpackb(raw, raw=False, max_bin_len=256, max_str_len=256, max_array_len=3)
    except Exception:
        return None
    if type(seq) is not int or not isinstance(hash_, str) or not isinstance(sig, bytes):
        return None
    return seq, hash_, sig


_ROWS = "SELECT seq, ts, kind, round, counterpart, update_hash, details, prev, hash, sig FROM events ORDER BY seq"


class ChainError(ProvenanceError):
    """The log's chain breaks at `seq` (the first event that does not fit; None: the head itself)."""

    def __init__(self, problem: str, seq: int | None = None, kind: str | None = None):
        super().__init__(problem)
        self.problem, self.seq, self.kind = problem, seq, kind


@dataclass(frozen=True)
class Verified:
    """An intact chain: its last event (0 and the genesis hash for a log without events)."""

    seq: int
    hash: str


def verify_chain(con: sqlite3.Connection, peer_id: str, head: Any) -> Verified:
    """Re-hash every event in order and compare the end with the signed head; ChainError naming
    the first event that does not fit (or the head) otherwise."""
    parsed = read_head(head)
    if parsed is None:
        raise ChainError("the signed head is missing" if head is None else "the signed head is unreadable")
    head_seq, head_hash, head_sig = parsed
    if not verify_signature(peer_id, head_sig, head_message(head_seq, head_hash)):
        raise ChainError("the signed head's signature does not verify with this peer's key")
    seq, prev, kind = 0, GENESIS, None
    for row in con.execute(_ROWS):
        seq_, ts, kind, rnd, cp, uh, details, prev_field, h, sig = row
        if seq_ != seq + 1:
            raise ChainError(f"the sequence jumps from {seq} to {seq_!r:.20} (events deleted or reordered)",
                             seq_ if type(seq_) is int else seq + 1, _kind(kind))
        seq = seq_
        if not isinstance(details, str) or not isinstance(h, str) or not isinstance(sig, bytes) or len(sig) != 64:
            raise ChainError("a field has the wrong type (altered)", seq, _kind(kind))
        if prev_field != prev:
            raise ChainError("it does not follow the event before it (an event deleted or altered)", seq, _kind(kind))
        if event_hash(peer_id, seq, ts, kind, rnd, cp, uh, details, prev) != h:
            raise ChainError("its hash does not match its content (altered)", seq, _kind(kind))
        if seq > head_seq:
            raise ChainError(f"it lies past the signed head (event {head_seq}): events added", seq, _kind(kind))
        prev = h
    if seq and not verify_signature(peer_id, sig, bytes.fromhex(prev)):  # the newest, which no later hash covers
        raise ChainError("its signature does not verify with this peer's key", seq, _kind(kind))
    if (seq, prev) != (head_seq, head_hash):
        if seq < head_seq:
            raise ChainError(f"the signed head names event {head_seq} but the log ends at event {seq} "
                             "(events cut off the end)", seq + 1, None)
        raise ChainError(f"the log's last event {seq} is not the one the signed head names (altered)", seq, _kind(kind))
    return Verified(seq, prev)


def _kind(kind: Any) -> str:
    return kind if isinstance(kind, str) and len(kind) <= 40 else repr(kind)[:40]
