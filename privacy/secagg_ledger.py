"""What a member did in each double-masking session it started (privacy.secagg): the ledger
that the peer persists (one provenance event per step, `LedgerEntry.to_record`) and rebuilds
after a restart (`MemberLedger.restore`), and the rule it enforces across restarts: one
session per (receiver, round) and none for an older round, one survivor set signed per
session, one reveal, and never b shares and s shares of the same member. Records are read as
hostile: anything but what `to_record` writes is SecAggError("bad_record").
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, replace

from gossip.errors import PeerIdError
from gossip.identity import check_peer_id

from .secagg import MAX_MEMBERS, MAX_ROUND, SecAggError

PHASES = ("advertised", "dealt", "masked", "consented", "revealed")
MAX_LEDGER_SESSIONS = 1 << 20  # a hostile record is refused before it costs memory
_HEX = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class LedgerEntry:
    """What this member did in one session: how far it went, in which session (the book's
    digest), the survivor set it signed, and the members whose s-key shares it revealed (it
    revealed b shares for exactly the survivors)."""

    receiver: str
    round: int
    phase: str = "advertised"
    book: bytes | None = None
    survivors: tuple[str, ...] | None = None
    dropped: tuple[str, ...] | None = None

    def to_record(self) -> dict:
        return {"receiver": self.receiver, "round": self.round, "phase": self.phase,
                "book": None if self.book is None else self.book.hex(),
                "survivors": None if self.survivors is None else list(self.survivors),
                "dropped": None if self.dropped is None else list(self.dropped)}

    @classmethod
    def from_record(cls, rec) -> LedgerEntry:
        """The entry in a record written by `to_record`; SecAggError("bad_record") for anything
        else (wrong keys or types, bad PeerIds, fields that do not fit the phase)."""
        if not isinstance(rec, dict) or set(rec) != {"receiver", "round", "phase", "book", "survivors", "dropped"}:
            raise _bad("a ledger entry has exactly the keys receiver, round, phase, book, survivors, dropped")
        receiver, rnd, phase = _peer(rec["receiver"]), rec["round"], rec["phase"]
        if isinstance(rnd, bool) or not isinstance(rnd, int) or not 0 <= rnd <= MAX_ROUND:
            raise _bad("round must be an integer in [0, 2**64)")
        if phase not in PHASES:
            raise _bad(f"phase must be one of {', '.join(PHASES)}")
        stage = PHASES.index(phase)
        book = rec["book"]
        if (book is None) != (stage < 1) or (book is not None and not (isinstance(book, str) and _HEX.fullmatch(book))):
            raise _bad("book must be 64 lowercase hex digits from phase dealt on, and null before")
        survivors, dropped = _peers(rec["survivors"], stage >= 3), _peers(rec["dropped"], stage >= 4)
        if survivors is not None and not survivors:
            raise _bad("an empty survivor set")
        if dropped is not None and survivors is not None and set(dropped) & set(survivors):  # both set from revealed on
            raise _bad("a member both survived and dropped")
        return cls(receiver, rnd, phase, None if book is None else bytes.fromhex(book), survivors, dropped)


def _bad(detail: str) -> SecAggError:
    return SecAggError("bad_record", (), detail)


def _peer(value) -> str:
    try:
        return check_peer_id(value)
    except PeerIdError:
        raise _bad(f"not a PeerId: {value!r:.80}") from None


def _peers(value, present: bool) -> tuple[str, ...] | None:
    if value is None and not present:
        return None
    if not present or not isinstance(value, list) or len(value) > MAX_MEMBERS:
        raise _bad(f"a member list (at most {MAX_MEMBERS}) is set exactly from the phase that fills it on")
    peers = [_peer(v) for v in value]
    if peers != sorted(set(peers)):
        raise _bad("a member list is sorted without repeats")
    return tuple(peers)


class MemberLedger:
    """Every session this member started (per receiver: the last round, and the entries kept),
    and the one rule that protects it across restarts: one survivor set signed and one reveal
    per session, b shares and s shares never for the same member."""

    def __init__(self):
        self._entries: dict[tuple[str, int], LedgerEntry] = {}
        self._last: dict[str, int] = {}

    def entry(self, receiver: str, round: int) -> LedgerEntry | None:
        return self._entries.get((receiver, round))

    def last_round(self, receiver: str) -> int | None:
        """The latest round this member started a session with `receiver` in (None: never)."""
        return self._last.get(receiver)

    def begin(self, receiver: str, round: int) -> LedgerEntry:
        last = self._last.get(receiver)
        if last is not None and round <= last:
            reason = "already_started" if round == last else "stale_round"
            raise SecAggError(reason, (), f"a session with {receiver:.16} was started for round {last}; "
                                          f"round {round} gets no new keys")
        return self._put(LedgerEntry(receiver, round))

    def advance(self, entry: LedgerEntry, phase: str, book: bytes | None = None) -> LedgerEntry:
        if PHASES.index(phase) < PHASES.index(entry.phase):
            return entry
        return self._put(replace(entry, phase=phase, book=entry.book if book is None else book))

    def consent(self, entry: LedgerEntry, survivors: tuple[str, ...]) -> LedgerEntry:
        """Record the one survivor set this member signs in the session."""
        if entry.survivors is not None:
            if entry.survivors != survivors:
                raise SecAggError("conflicting_survivors", (entry.receiver,),
                                  "asked to sign a second, different survivor set")
            return entry
        return self._put(replace(entry, phase="consented", survivors=survivors))

    def reveal(self, entry: LedgerEntry, survivors: tuple[str, ...], dropped: tuple[str, ...]) -> LedgerEntry:
        """Record a reveal: b shares for `survivors`, s shares for `dropped`; never both kinds
        for one member, never a second, different reveal."""
        if entry.survivors != survivors:
            raise SecAggError("conflicting_survivors", (entry.receiver,), "a reveal for a set this member did not sign")
        if set(survivors) & set(dropped):
            raise SecAggError("both_shares", (entry.receiver,), "b and s shares of the same member")
        if entry.dropped is not None:
            if entry.dropped != dropped:
                raise SecAggError("already_revealed", (entry.receiver,), "a second, different reveal")
            return entry
        return self._put(replace(entry, phase="revealed", dropped=dropped))

    def _put(self, new: LedgerEntry) -> LedgerEntry:
        key = (new.receiver, new.round)
        old = self._entries.get(key)
        if old is not None:
            _check_extends(old, new)
        self._entries[key] = new
        self._last[new.receiver] = max(new.round, self._last.get(new.receiver, -1))
        return new

    def forget_before(self, round: int) -> None:
        """Drop the entries of rounds before `round` (the last round per receiver is kept, so
        no older session can start again)."""
        self._entries = {k: e for k, e in self._entries.items() if e.round >= round}

    def to_record(self) -> dict:
        return {"v": 1, "last": [[r, n] for r, n in sorted(self._last.items())],
                "sessions": [self._entries[k].to_record() for k in sorted(self._entries)]}

    @classmethod
    def from_record(cls, rec) -> MemberLedger:
        """The ledger a `to_record` wrote; SecAggError("bad_record") for anything else."""
        if not isinstance(rec, dict) or set(rec) != {"v", "last", "sessions"} or rec["v"] != 1:
            raise _bad("a ledger record is {v: 1, last, sessions}")
        last, sessions = rec["last"], rec["sessions"]
        if not isinstance(last, list) or not isinstance(sessions, list) or len(sessions) > MAX_LEDGER_SESSIONS \
                or len(last) > MAX_LEDGER_SESSIONS:
            raise _bad(f"last and sessions are lists of at most {MAX_LEDGER_SESSIONS}")
        ledger = cls.restore(sessions)
        for item in last:
            if not isinstance(item, list) or len(item) != 2:
                raise _bad("last holds [receiver, round] pairs")
            receiver, rnd = _peer(item[0]), item[1]
            if isinstance(rnd, bool) or not isinstance(rnd, int) or not 0 <= rnd <= MAX_ROUND:
                raise _bad("a last round must be an integer in [0, 2**64)")
            if rnd < ledger._last.get(receiver, -1):
                raise _bad("a last round is older than a session of the same receiver")
            ledger._last[receiver] = rnd
        if len(ledger._last) != len(last):
            raise _bad("last names a receiver twice or misses one that has sessions")
        return ledger

    @classmethod
    def restore(cls, records: Iterable) -> MemberLedger:
        """The ledger from entry records in the order they were logged (each `s.record()`); a
        later record of a session must extend the earlier ones."""
        ledger = cls()
        for i, rec in enumerate(records):
            if i >= MAX_LEDGER_SESSIONS * len(PHASES):
                raise _bad("too many ledger records")
            ledger._put(LedgerEntry.from_record(rec))
        return ledger


def _check_extends(old: LedgerEntry, new: LedgerEntry) -> None:
    if PHASES.index(new.phase) < PHASES.index(old.phase):
        raise _bad(f"session {old.receiver:.16}/{old.round} goes back from {old.phase} to {new.phase}")
    for name in ("book", "survivors", "dropped"):
        before = getattr(old, name)
        if before is not None and getattr(new, name) != before:
            raise _bad(f"session {old.receiver:.16}/{old.round} changes its {name}")
