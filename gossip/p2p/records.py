"""Signed address records, so a gateway whose address changed is found again (pure; files only
in SeqCounter and AddressBook.save/load).

A record is libp2p's signed peer record (an Envelope in the "libp2p-peer-record" domain
around a PeerRecord: PeerId, addresses, seq), signed with the peer's own key. py-libp2p's
own consumers are not enough: `consume_envelope` checks the signature but not that the
signer is the peer the record names (a record signed by S naming A passes), and the
peerstore's `consume_peer_record` checks the signer but not the signature, accepts an equal
seq and replaces every address. `open_record` checks, cheapest first: the size, the signer's
key is the expected PeerId's key (before any signature is verified), the signature in the
record domain, the named PeerId, a seq strictly above the last one accepted, and at most
MAX_ADDRS parsable addresses.

Our own seq is `max(clock in ns, last + 1)`, persisted before a record is sealed
(SeqCounter): a gateway whose clock restarts in 1970 still publishes newer records.

AddressBook: where to dial each neighbour: the addresses of its newest verified record, then
the address its config names. It never relies on py-libp2p's peerstore (identify rewrites it
with a peer's listen addresses, a NATed gateway's private ones).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import multiaddr

from ..errors import GossipError
from ..files import FileReadError, read_limited
from ..identity import Identity

DOMAIN = "libp2p-peer-record"
MAX_RECORD = 4096
MAX_ADDRS = 16
MAX_BOOK = 1 << 20  # bytes of a saved address book


class RecordRefused(GossipError):
    """An address record failed a check; the message says which."""


class StaleRecord(RecordRefused):
    """A valid record that is not newer than the one held (a repeated or reordered push)."""


@dataclass(frozen=True)
class AddressRecord:
    peer_id: str
    seq: int
    addrs: tuple[str, ...]
    envelope: bytes  # the signed bytes, to pass on or keep


def seal(identity: Identity, addrs: list[str], seq: int) -> bytes:
    """The signed envelope of `addrs` (multiaddrs without /p2p/<own id>) at `seq`."""
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.peer.envelope import seal_record
    from libp2p.peer.id import ID
    from libp2p.peer.peer_record import PeerRecord

    if len(addrs) > MAX_ADDRS:
        raise ValueError(f"at most {MAX_ADDRS} addresses in a record, got {len(addrs)}")
    key = create_new_key_pair(identity.seed)
    record = PeerRecord(ID.from_base58(identity.peer_id), [multiaddr.Multiaddr(a) for a in addrs], seq)
    data = seal_record(record, key.private_key).marshal_envelope()
    if len(data) > MAX_RECORD:
        raise ValueError(f"the record is {len(data)} bytes, more than {MAX_RECORD}: fewer or shorter addresses")
    return data


def open_record(data: bytes, expected: str, last_seq: int | None = None) -> AddressRecord:
    """The verified record of `expected` (a PeerId) in `data`, newer than `last_seq`."""
    from libp2p.peer.envelope import unmarshal_envelope
    from libp2p.peer.id import ID

    if len(data) > MAX_RECORD:
        raise RecordRefused(f"a record of {len(data)} bytes (limit {MAX_RECORD})")
    try:
        env = unmarshal_envelope(bytes(data))
        signer = ID.from_pubkey(env.public_key).to_base58()
    except Exception as exc:
        raise RecordRefused(f"not a signed envelope ({type(exc).__name__})") from None
    if signer != expected:
        raise RecordRefused(f"signed by {signer}, not by {expected}")
    try:
        env.validate(DOMAIN)
    except Exception:
        raise RecordRefused(f"the signature of {expected}'s record does not verify") from None
    try:
        record = env.record()
        named = record.peer_id.to_base58()
        addrs = [str(a) for a in record.addrs]
    except Exception as exc:
        raise RecordRefused(f"{expected}'s record does not decode ({type(exc).__name__})") from None
    if named != expected:
        raise RecordRefused(f"{expected} signed a record naming {named}")
    if last_seq is not None and record.seq <= last_seq:
        raise StaleRecord(f"{expected}'s record has seq {record.seq}, not above {last_seq}")
    if len(addrs) > MAX_ADDRS:
        raise RecordRefused(f"{expected}'s record has {len(addrs)} addresses (limit {MAX_ADDRS})")
    return AddressRecord(expected, int(record.seq), tuple(addrs), bytes(data))


class SeqCounter:
    """Our records' seq: `max(clock_ns, last + 1)`, written to `path` (when given) before use."""

    def __init__(self, path: str | os.PathLike | None, clock: Callable[[], int] = time.time_ns):
        self.path = Path(path) if path is not None else None
        self.clock = clock
        self.last = 0
        if self.path is not None and self.path.exists():
            try:
                self.last = int(read_limited(self.path, 64, "record sequence file").decode().strip())
            except (FileReadError, ValueError, UnicodeDecodeError):
                self.last = 0  # unreadable: the clock and +1 still order our records

    def next(self) -> int:
        seq = max(int(self.clock()), self.last + 1)
        if self.path is not None:
            tmp = self.path.with_name(self.path.name + ".tmp")
            with open(tmp, "w") as f:
                f.write(f"{seq}\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        self.last = seq
        return seq


def split_addrs(addrs) -> tuple[list[str], list[tuple[str, str]]]:
    """Direct TCP addresses, and (relay PeerId, relay address) pairs of circuit addresses."""
    direct, circuits = [], []
    for a in addrs:
        text = str(a)
        if "/p2p-circuit" in text:
            relay_part = text.split("/p2p-circuit")[0]
            if "/p2p/" in relay_part:
                base, relay = relay_part.rsplit("/p2p/", 1)
                circuits.append((relay, base))
        elif "/tcp/" in text:
            direct.append(text.split("/p2p/")[0])
    return direct, circuits


def hosts_of(addrs) -> set[str]:
    """The IPs of the direct addresses among `addrs` (/ip4/X/tcp/... or /ip6/X/tcp/...)."""
    return {a.split("/")[2] for a in split_addrs(addrs)[0] if a.startswith(("/ip4/", "/ip6/"))}


def moved_from(previous: AddressRecord | None, record: AddressRecord) -> set[str]:
    """The IPs a neighbour's previous record named and its newer one no longer does: it left
    them (a new DHCP lease, a new cellular session), and a connection we hold to one of them
    is dead without knowing it."""
    return hosts_of(previous.addrs) - hosts_of(record.addrs) if previous is not None else set()


class AddressBook:
    """Per neighbour: its newest verified record and its configured address (pure)."""

    def __init__(self) -> None:
        self.records: dict[str, AddressRecord] = {}
        self.configured: dict[str, str] = {}
        self.neighbours: set[str] = set()

    def configure(self, peer_id: str, addr: str | None) -> None:
        """A neighbour and the address its config names (None: none, its records only)."""
        self.neighbours.add(peer_id)
        if addr:
            self.configured[peer_id] = addr.split("/p2p/")[0] if "/p2p-circuit" not in addr else addr
        else:
            self.configured.pop(peer_id, None)

    def forget(self, peer_id: str) -> None:
        self.neighbours.discard(peer_id)
        self.configured.pop(peer_id, None)
        self.records.pop(peer_id, None)

    def last_seq(self, peer_id: str) -> int | None:
        record = self.records.get(peer_id)
        return record.seq if record is not None else None

    def learn(self, data: bytes, peer_id: str) -> AddressRecord | None:
        """Verify `data` as `peer_id`'s record newer than the one held, and keep it; None when
        it is the very record held (pushed again on another connection)."""
        held = self.records.get(peer_id)
        if held is not None and held.envelope == bytes(data):
            return None
        record = open_record(data, peer_id, self.last_seq(peer_id))
        self.records[peer_id] = record
        return record

    def direct(self, peer_id: str) -> list[str]:
        """Direct addresses to dial, newest record first, then the configured one."""
        record = self.records.get(peer_id)
        out = split_addrs(record.addrs)[0] if record is not None else []
        configured = split_addrs([self.configured.get(peer_id, "")])[0]
        return out + [a for a in configured if a not in out]

    def relays(self, peer_id: str) -> list[str]:
        """Relay PeerIds the neighbour's record says it reserved on."""
        record = self.records.get(peer_id)
        return [r for r, _ in split_addrs(record.addrs)[1]] if record is not None else []

    def save(self, path: str | os.PathLike) -> None:
        data = {pid: r.envelope.hex() for pid, r in self.records.items()}
        tmp = Path(path).with_name(Path(path).name + ".tmp")
        tmp.write_text(json.dumps(data, sort_keys=True))
        os.replace(tmp, path)

    def load(self, path: str | os.PathLike, neighbours) -> int:
        """Re-verify the records saved at `path` for these neighbours; returns how many were kept.
        A missing or damaged file keeps nothing (records are learnt again on connect)."""
        try:
            saved = json.loads(read_limited(path, MAX_BOOK, "address book").decode())
        except (FileReadError, ValueError, UnicodeDecodeError):
            return 0
        kept = 0
        for pid in neighbours:
            raw = saved.get(pid) if isinstance(saved, dict) else None
            if not isinstance(raw, str):
                continue
            try:
                self.learn(bytes.fromhex(raw), pid)
                kept += 1
            except (ValueError, RecordRefused):
                continue
        return kept
