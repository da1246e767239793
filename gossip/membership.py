"""Membership records: the network admin's signed word on who belongs to the fleet.

The trust list a plan writes is epoch 0. Afterwards the admin key (made by the plan, kept off
the gateways) signs records with increasing epochs: `admit` a PeerId (its address, and which
peers take it as a neighbour), `revoke` one, or `rotate` to a successor admin key (the record's
`peer`): from then on only the successor signs, and records of the key rotated away are refused
(`check_rotation` below has the rules; README "If the admin key is stolen" says why). On the wire a record is MAGIC followed by a
msgpack map {"body": bin, "sig": bin}; `body` is the canonical msgpack of the record's fields
and the Ed25519 signature covers SHA-256(DOMAIN + body). Like envelopes, a record has exactly
one byte string: anything else is refused, and so is anything not signed by the admin.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

import msgpack

from .errors import GossipError, PeerIdError
from .identity import MAX_PEER_ID_LEN, Identity, check_peer_id, verify_signature

MAGIC = b"GFLM\x01"  # never the first bytes of an envelope (a msgpack map starts 0x8e)
DOMAIN = b"gossipfl/membership/v1\x00"
MAX_RECORD = 16 * 1024
MAX_NEIGHBOURS = 256
MAX_ADDR = 256
ACTIONS = ("admit", "revoke", "rotate")
# how far one record may move a peer's epoch: a stolen admin key that signs epoch 2**63 - 1
# would otherwise leave no epoch for any record after it (the admin's own tool steps by 1)
MAX_EPOCH_STEP = 1000
_FIELDS = ("action", "addr", "epoch", "neighbours", "net", "peer", "ts")


class MembershipError(GossipError):
    """A record is malformed, not canonical, for another network, or not signed by the admin."""


@dataclass(frozen=True)
class Record:
    network: str
    epoch: int
    action: str
    peer: str
    addr: str  # "" when none (revocations, or MQTT fleets)
    neighbours: tuple[str, ...]  # who takes the admitted peer as a neighbour
    ts: float
    data: bytes  # the signed bytes, as sent and as stored

    @property
    def record_id(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    def summary(self) -> dict:
        return {"epoch": self.epoch, "action": self.action, "peer": self.peer, "addr": self.addr,
                "neighbours": list(self.neighbours), "record": self.record_id}


def is_record(data: bytes | bytearray | memoryview) -> bool:
    return bytes(data[: len(MAGIC)]) == MAGIC


def _body(network: str, epoch: int, action: str, peer: str, addr: str, neighbours: Iterable[str],
          ts: float) -> bytes:
    doc = {"action": action, "addr": addr, "epoch": epoch, "neighbours": list(neighbours), "net": network,
           "peer": peer, "ts": float(ts)}
    return msgpack.packb(doc, use_bin_type=True)


def seal_record(admin: Identity, *, network: str, epoch: int, action: str, peer: str, addr: str = "",
                neighbours: Iterable[str] = (), ts: float | None = None) -> bytes:
    """Sign a record with the admin key; checked as strictly as open_record checks it."""
    body = _body(network, int(epoch), action, peer, addr or "", tuple(neighbours), time.time() if ts is None else ts)
    sig = admin.sign(hashlib.sha256(DOMAIN + body).digest())
    data = MAGIC + msgpack.packb({"body": body, "sig": sig}, use_bin_type=True)
    _decode(data)  # refuse to sign what a peer would refuse to read
    return data


def open_record(data: bytes | bytearray | memoryview, *, admin: str, network: str) -> Record:
    """The record in `data` if it is well formed, canonical, for `network` and signed by `admin`."""
    record, body, sig = _decode(data)
    if record.network != network:
        raise MembershipError(f"record for network {record.network!r:.60}, this is {network!r}")
    if not verify_signature(admin, sig, hashlib.sha256(DOMAIN + body).digest()):
        raise MembershipError("record is not signed by this network's admin key")
    return record


def _decode(data: bytes | bytearray | memoryview) -> tuple[Record, bytes, bytes]:
    data = bytes(data)
    if len(data) > MAX_RECORD:
        raise MembershipError(f"record of {len(data)} bytes > {MAX_RECORD}")
    if not is_record(data):
        raise MembershipError("not a membership record")
    try:
        outer = msgpack.unpackb(data[len(MAGIC):], raw=False, max_bin_len=MAX_RECORD, max_str_len=64,
                                max_array_len=4, max_map_len=2, max_ext_len=0)
        if not isinstance(outer, dict) or set(outer) != {"body", "sig"}:
            raise MembershipError("a record is a map of exactly body and sig")
        body, sig = outer["body"], outer["sig"]
        if not isinstance(body, bytes) or not isinstance(sig, bytes) or len(sig) != 64:
            raise MembershipError("body must be bytes and sig 64 bytes")
        doc = msgpack.unpackb(body, raw=False, max_bin_len=0, max_str_len=MAX_ADDR,
                              max_array_len=MAX_NEIGHBOURS, max_map_len=len(_FIELDS), max_ext_len=0)
    except MembershipError:
        raise
    except Exception as exc:  # msgpack raises many types for hostile input
        raise MembershipError(f"record does not decode: {type(exc).__name__}") from None
    if not isinstance(doc, dict) or tuple(sorted(doc)) != _FIELDS:
        raise MembershipError(f"record fields must be {', '.join(_FIELDS)}")
    record = _typed(doc, data)
    canonical = _body(record.network, record.epoch, record.action, record.peer, record.addr, record.neighbours,
                      record.ts)
    if canonical != body or msgpack.packb({"body": body, "sig": sig}, use_bin_type=True) != data[len(MAGIC):]:
        raise MembershipError("record is not in its canonical encoding")
    return record, body, sig


def _typed(doc: dict, data: bytes) -> Record:
    action, addr, epoch, nbrs, net, peer, ts = (doc[k] for k in _FIELDS)
    if action not in ACTIONS:
        raise MembershipError(f"action must be one of {ACTIONS}, got {action!r:.20}")
    if not isinstance(epoch, int) or isinstance(epoch, bool) or not 1 <= epoch < 2**63:
        raise MembershipError("epoch must be an integer >= 1")
    if not isinstance(net, str) or not net or not isinstance(addr, str) or len(addr) > MAX_ADDR:
        raise MembershipError("net must be a non-empty string and addr a string")
    if not isinstance(ts, float) or not math.isfinite(ts):
        raise MembershipError("ts must be a finite float")
    if not isinstance(nbrs, list) or not all(isinstance(n, str) for n in nbrs) or len(set(nbrs)) != len(nbrs):
        raise MembershipError("neighbours must be a list of distinct PeerIds")
    try:
        for pid in [peer, *nbrs]:
            if not isinstance(pid, str) or len(pid) > MAX_PEER_ID_LEN:
                raise PeerIdError("not a PeerId")
            check_peer_id(pid)
    except PeerIdError as exc:
        raise MembershipError(f"record names an invalid PeerId: {exc}") from None
    if action in ("revoke", "rotate") and (nbrs or addr):
        raise MembershipError(f"a {'revocation' if action == 'revoke' else 'rotation'} carries no address or "
                              "neighbours")
    return Record(net, epoch, action, peer, addr, tuple(nbrs), ts, data)


def check_rotation(record: Record, admins: Sequence[str], members: Collection[str]) -> str | None:
    """Why a peer whose admin keys so far are `admins` (oldest first; the last one signs now)
    must refuse `record` for what it names, or None. Pure; the signature, the network and the
    epoch are checked before (open_record, the peer's epoch rules). The rules:
    - only the current key rotates (the signature check), and a rotation is final: a key
      rotated away never signs again, not even another rotation (its records are refused as
      `retired_admin`), so the holder of a stolen key cannot take back a rotation it lost;
    - the successor is a key never used as this network's admin (no rotating back to a retired
      key, which a thief may hold) and not a gateway's (`members`: trusted or revoked PeerIds;
      the admin key is kept apart from the gateways);
    - no record admits an admin key, current or retired, as a gateway."""
    if record.action == "rotate":
        if record.peer in admins:
            return f"rotation to {record.peer}, which is {'the current' if record.peer == admins[-1] else 'a retired'} " \
                   "admin key of this network (a successor must be a fresh key)"
        if record.peer in members:
            return f"rotation to {record.peer}, a gateway's key (the admin key is kept apart from the gateways)"
    elif record.action == "admit" and record.peer in admins:
        return f"admits {record.peer}, an admin key of this network, as a gateway"
    return None
