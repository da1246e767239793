"""The fleet as one peer knows it: the trust list (epoch 0) plus the admin's records since.

The admin key itself can change: a `rotate` record signed by the current key names its
successor (gossip.membership.check_rotation has the rules). The chain of admin keys is rebuilt
like the rest, from the log: replay starts at the first key the trust list names (its retired
keys, oldest first, then `admin`), each logged record verified against the key current at
that point, and the chain replayed must agree with the trust list's (one a prefix of the other).

Records are applied at once, logged as `membership` events (the verified log is the source of
truth at start) and cached (DATA_DIR/membership.msgpack, rewritten atomically);
on restart every stored record is verified again against the admin key, so the file is no
more trusted than the network. Pure bookkeeping: the peer decides what to do with a change
(new neighbours count from the next round; a revocation counts at once).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import msgpack

from gossip.files import FileReadError, read_limited
from gossip.membership import (
    MAGIC,
    MAX_EPOCH_STEP,
    MAX_RECORD,
    MembershipError,
    Record,
    check_rotation,
    open_record,
)

from ..errors import PeerError
from ..state import files
from ..state.provenance import EventKind, NewEvent
from .commands import Command, Forget, Log, Reject, Revoked, SetAllowed, Transmit

MAX_RECORDS = 10_000
log = logging.getLogger("gossipfl.peer")


class MembershipFileError(PeerError):
    """The stored membership records do not verify."""


@dataclass
class Offer:
    """What one incoming record did: applied (new epoch) or why not."""

    record: Record | None = None
    reason: str = ""  # "bad_membership" (unproven), "stale_membership" (proven, not newer), "" (a duplicate)
    detail: str = ""  # "retired_admin" (signed by a key rotated away), "refused_membership" (the admin's, breaks a rule)
    by: str | None = None  # who signed it, when proven

    @property
    def proven(self) -> bool:
        return self.by is not None


@dataclass
class Membership:
    own_id: str
    network: str
    admin: str | None
    trusted: set[str]  # shared with the verifier: changes count at once
    neighbours: dict[str, str | None]  # id -> address; applied by the peer at a round boundary
    path: Path | None = None
    epoch: int = 0
    revoked: set[str] = field(default_factory=set)
    records: list[bytes] = field(default_factory=list)
    revoked_at: dict[str, int] = field(default_factory=dict)
    retired: list[str] = field(default_factory=list)  # admin keys rotated away, oldest first
    retired_at: dict[str, int] = field(default_factory=dict)  # admin key -> the epoch it was rotated away

    @property
    def admins(self) -> list[str]:
        """Every admin key of this network so far, oldest first; the last one signs now."""
        return [*self.retired, *([self.admin] if self.admin else [])]

    def load(self, logged: Sequence[bytes] = ()) -> list[Record]:
        """Re-apply the records the verified provenance log holds (`logged`, the source of truth)
        and the cached file's, each verified again against the admin key, in epoch order. A record
        the log holds that no longer applies is an error (the admin key changed?); the file is a
        cache: a copy that is unreadable or holds a record that does not verify is set aside with a
        warning (the log has every record that was applied). The file is rewritten when it differs.
        Returns the file's records the log lacks (applied, killed before its event was logged): the
        caller logs them."""
        cached = self._cached()
        known = set(map(bytes, logged))
        configured = self.admins
        if configured:  # replay from the first admin key: the log's rotations lead to the others
            self.admin, self.retired = configured[0], []
        for data in logged:
            offer = self.offer(bytes(data), persist=False)
            if offer.record is None and offer.reason:
                raise MembershipFileError(f"a membership record in the provenance log does not apply ({offer.detail}); "
                                          "is trust.toml's admin key the one that signed it?")
        self._agree(configured)
        extra = []
        for data in sorted((d for d in cached if d not in known), key=_epoch):
            offer = self.offer(data, persist=False)
            if offer.record is not None:
                extra.append(offer.record)
            elif offer.reason == "bad_membership":
                log.warning("%s: a cached record does not verify (%s): ignored; the provenance log holds the "
                            "membership", self.path, offer.detail)
        if self.path is not None and (cached != self.records or not self.path.exists()) and self.records:
            self._save()
        return extra

    def _agree(self, configured: list[str]) -> None:
        """After replaying the log: the trust list may know of rotations the log lacks (set up
        again from the plan) and the log of rotations the trust list lacks (a gateway's copy of
        it is not rewritten); any other difference is an error."""
        replayed = self.admins
        if replayed == configured[:len(replayed)]:
            self.retired, self.admin = configured[:-1], configured[-1] if configured else None
        elif configured != replayed[:len(configured)]:
            raise MembershipFileError(f"the admin keys of the provenance log ({' -> '.join(replayed)}) are not the "
                                      f"ones the trust list names ({' -> '.join(configured)}); copy trust.toml from "
                                      "the plan again (its `admin` and `retired_admins`), and if it is the plan's, "
                                      "this peer applied a rotation the admin did not sign (a stolen key's): move "
                                      "data/ aside and start with --accept-rollback")

    def _cached(self) -> list[bytes]:
        """The records of the membership file ([] when there is none or it is unreadable)."""
        if self.path is None or not self.path.exists():
            return []
        try:
            raw = read_limited(self.path, MAX_RECORDS * (MAX_RECORD + 16), "membership file")
            stored = msgpack.unpackb(raw, raw=False, max_bin_len=MAX_RECORD, max_array_len=MAX_RECORDS,
                                     max_str_len=0, max_map_len=0, max_ext_len=0)
            if not isinstance(stored, list) or not all(isinstance(d, bytes) for d in stored):
                raise ValueError("not a list of records")
        except (FileReadError, ValueError, msgpack.UnpackException) as exc:
            log.warning("%s: unreadable (%s): ignored; rebuilt from the provenance log", self.path, exc)
            return []
        return stored

    @property
    def own_revocation(self) -> int | None:
        """The epoch at which this peer itself was revoked, if it was."""
        return self.revoked_at.get(self.own_id)

    def offer(self, data: bytes, persist: bool = True) -> Offer:
        if self.admin is None:
            return Offer(None, "bad_membership", "this network has no admin key (trust.toml `admin`)")
        try:
            record = open_record(data, admin=self.admin, network=self.network)
        except MembershipError as exc:
            old = self._retired_signer(data)
            if old is not None:
                at = self.retired_at.get(old)
                return Offer(None, "retired_admin", f"signed by the admin key {old}, rotated away"
                                                    f"{'' if at is None else f' at epoch {at}'}; the admin key is now "
                                                    f"{self.admin}", old)
            return Offer(None, "bad_membership", str(exc))
        if self.records and record.data == self.records[-1]:  # the latest record, back by gossip
            return Offer(None, "", "already applied")
        if record.epoch <= self.epoch:
            return Offer(None, "stale_membership", f"epoch {record.epoch}, this peer is at epoch {self.epoch}",
                         self.admin)
        if record.epoch > self.epoch + MAX_EPOCH_STEP:
            return Offer(None, "bad_membership", f"epoch {record.epoch} jumps more than {MAX_EPOCH_STEP} past this "
                                                 f"peer's epoch {self.epoch}")
        why = check_rotation(record, self.admins, self.trusted | self.revoked)
        if why is not None:
            return Offer(None, "refused_membership", why, self.admin)
        self._apply(record)
        self.records.append(record.data)
        if persist:
            self._save()
        return Offer(record)

    def _retired_signer(self, data: bytes) -> str | None:
        """The retired admin key that signed `data`, if one did (for a clear refusal)."""
        for key in reversed(self.retired):
            try:
                open_record(data, admin=key, network=self.network)
            except MembershipError:
                continue
            return key
        return None

    def _apply(self, r: Record) -> None:
        self.epoch = r.epoch
        if r.action == "rotate":
            assert self.admin is not None  # open_record verified it against the current key
            self.retired.append(self.admin)
            self.retired_at[self.admin] = r.epoch
            self.admin = r.peer
        elif r.action == "admit":
            self.trusted.add(r.peer)
            self.revoked.discard(r.peer)
            if r.peer == self.own_id:  # this peer was admitted: the record names its neighbours
                for nb in r.neighbours:
                    self.neighbours.setdefault(nb, None)
            elif self.own_id in r.neighbours:
                self.neighbours[r.peer] = r.addr or None
        else:
            self.trusted.discard(r.peer)
            self.revoked.add(r.peer)
            self.revoked_at[r.peer] = r.epoch
            self.neighbours.pop(r.peer, None)

    def _save(self) -> None:
        if self.path is None:
            return
        files.write_atomic(self.path, msgpack.packb(self.records[-MAX_RECORDS:], use_bin_type=True))


def _epoch(data: bytes) -> int:
    """A record's epoch before it is verified (order only; offer() checks everything)."""
    try:
        return int(msgpack.unpackb(msgpack.unpackb(data[len(MAGIC):], raw=False, max_map_len=2, max_array_len=4)["body"],
                                   raw=False, max_array_len=256, max_map_len=8)["epoch"])
    except Exception:
        return 0


def restore(membership: Membership, prov) -> None:
    """Rebuild `membership` from the peer's verified log (and its cache file), and log the cached
    records the log lacks (applied by a peer killed before it logged them)."""
    unlogged = membership.load(logged_records(prov.events(EventKind.MEMBERSHIP)))
    prov.append_many(NewEvent(EventKind.MEMBERSHIP, None, r.peer, r.record_id, {**r.summary(), "bytes": r.data.hex()})
                     for r in unlogged)


def logged_records(events) -> list[bytes]:
    """The admin's records carried by `membership` events (their `bytes`), in log order."""
    out = []
    for ev in events:
        raw = ev.details.get("bytes") if isinstance(ev.details, dict) else None
        if not isinstance(raw, str):
            continue
        try:
            out.append(bytes.fromhex(raw))
        except (TypeError, ValueError):
            continue
    return out


def allowed_peers(neighbours, admin: str | None) -> set[str]:
    """Who may connect to a peer's transport: its neighbours and the network's admin key."""
    return set(neighbours) | ({admin} if admin else set())


def on_record(membership: Membership, hint: str | None, data, round_: int, neighbours: list[str]) -> list[Command]:
    """An incoming membership record, as what the peer must do: apply it (at once), log it
    durably, drop a revoked peer's contributions, update who may connect, and pass it on (the
    epoch stops it coming back); or reject it (forged or malformed: unproven; an older epoch:
    proven, since the admin signed it, but stale); or nothing (an echo of a record applied)."""
    offer = membership.offer(bytes(data))
    r = offer.record
    if r is None and not offer.reason:
        return []
    if r is None:
        if offer.reason in ("retired_admin", "refused_membership"):
            log.warning("membership record refused (%s): %s", offer.reason, offer.detail)
        return [Reject(offer.reason, offer.detail, offer.by if offer.proven else hint, offer.proven)]
    log.info("membership epoch %d: %s %s", r.epoch, "rotate the admin key to" if r.action == "rotate" else r.action,
             r.peer)
    out: list[Command] = [Log(NewEvent(EventKind.MEMBERSHIP, round_, r.peer, r.record_id,
                                       {**r.summary(), "bytes": bytes(data).hex()}), durable=True)]
    if r.action == "revoke" and r.peer == membership.own_id:
        return [*out, Revoked(r.epoch)]
    if r.action == "revoke":
        out.append(Forget(r.peer))
    out.append(SetAllowed(frozenset(allowed_peers(membership.neighbours, membership.admin))))
    out.append(Transmit(tuple(nb for nb in neighbours if nb != hint), bytes(data)))  # the revoked one too
    return out


def stored_membership(own_id: str, network: str, trust, neighbours: dict[str, str | None],
                      data_dir: Path) -> Membership:
    """The fleet as a peer starts into it: the trust list and its configured neighbours with
    the admin's records its provenance log and membership file hold applied (each verified
    again). Read only, before the data folder is locked (the log's chain is verified when the
    peer opens it; the records carry the admin's signature): the running peer keeps its own."""
    view = Membership(own_id, network, getattr(trust, "admin", None), set(trust.peers), dict(neighbours),
                      None, retired=list(getattr(trust, "retired", ())))
    cache = Path(data_dir) / "membership.msgpack"
    view.path = cache
    try:
        records = view._cached()
    finally:
        view.path = None
    try:
        view.load([*logged_records(_peek_membership(Path(data_dir) / "provenance.db")), *records])
    except MembershipFileError:
        pass  # the running peer says why, once its log is open
    return view


def _peek_membership(db: Path) -> list:
    """The log's `membership` events, read without opening it for writing ([] if unreadable)."""
    from ..state.provenance import ProvenanceError, connect, iter_events, row_to_event

    if not db.is_file() or db.is_symlink():
        return []
    try:
        con = connect(db)
    except ProvenanceError:
        return []
    try:
        return [row_to_event(r) for r in iter_events(con, "WHERE kind = ?", (EventKind.MEMBERSHIP.value,))]
    except sqlite3.DatabaseError:
        return []
    finally:
        con.close()
