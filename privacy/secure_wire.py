"""The messages of secure aggregation's drop-out step, and the bytes of a masked contribution.

Two small signed messages, each MAGIC followed by one msgpack map with a fixed key order and
every value in its one canonical encoding (read with gossip.msgpack_canonical's strict cursor):

    RevealRequest  (receiver i -> each delivered member j)      MAGIC_REQUEST = b"GFLR\\x01"
        net str <= 128 B | sender str (i) | round uint | delivered array of PeerIds (sorted,
        distinct) | missing array of PeerIds (sorted, distinct) | sig bin 64
    Reveal         (member j -> receiver i)                      MAGIC_REVEAL = b"GFLS\\x01"
        net str <= 128 B | sender str (j) | to str (i) | round uint |
        seeds array of [PeerId k, bin 32] (sorted by k, distinct) | sig bin 64

The signature is the sender's Ed25519 over SHA-256(DOMAIN | the map of every field but sig),
that map being the message's own bytes under a map header one entry shorter (as in
gossip.envelope). Messages are at most MAX_MESSAGE bytes and name at most MAX_MEMBERS peers.
`parse_*` checks structure only and raises SecureWireError; `verify` checks network, sender and
signature. The magics differ from an envelope's first byte (a msgpack map, 0x8e) and from a
membership record's (b"GFLM"), so `kind_of` sorts the inbox with a 5-byte compare.

A masked contribution travels in an ordinary signed update envelope (kind "masked", as the
peer decides) whose payload is `contribution_bytes`: a 32-byte context tag
SHA-256(DOMAIN | net | sender | receiver | round), the sender's commitments (one 32-byte hash
per other member of the group, in sorted order), then the masked uint32 vector; 8 * |G| + d
little-endian words in total. The envelope signs the payload, so the tag binds the sender's
signature to its receiver: a receiver that forwards j's contribution to another receiver is
caught by the tag ("wrong_context") instead of making the pair check blame j.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field

import msgpack
import numpy as np

from gossip.envelope import MAX_NETWORK_ID_LEN, canonical
from gossip.errors import GossipError, PeerIdError
from gossip.identity import MAX_PEER_ID_LEN, Identity, check_peer_id, verify_signature
from gossip.msgpack_canonical import Cursor, Malformed, NonCanonical

from .secure import COMMITMENT_LEN, MAX_ROUND, SEED_LEN, Contribution, length_prefixed

MAGIC_REQUEST = b"GFLR\x01"
MAGIC_REVEAL = b"GFLS\x01"
DOMAIN_REQUEST = b"gossipfl/secagg/reveal-request/v1\x00"
DOMAIN_REVEAL = b"gossipfl/secagg/reveal/v1\x00"
DOMAIN_CONTRIBUTION = b"gossipfl/secagg/contribution/v1\x00"
MAX_MEMBERS = 256  # as many as a membership record's neighbours
MAX_MESSAGE = 32 * 1024  # a request or reveal naming MAX_MEMBERS peers fits
SIG_LEN = 64
REQUEST_FIELDS = ("net", "sender", "round", "delivered", "missing")
REVEAL_FIELDS = ("net", "sender", "to", "round", "seeds")
_KEYS = {name: msgpack.packb(name) for name in (*REQUEST_FIELDS, *REVEAL_FIELDS, "sig")}


class SecureWireError(GossipError):
    """A reveal request or reveal is malformed, not canonical, too big, for another network,
    from an untrusted sender, or not signed by it. `reason` is a short code for logs."""

    def __init__(self, reason: str, message: str):
        self.reason = reason
        super().__init__(message)


@dataclass(frozen=True)
class RevealRequest:
    """Receiver `sender` asks, for `round`, the members in `delivered` to reveal their pair
    seeds towards those in `missing`. Parsed, not yet trusted until `verify`."""

    net: str
    sender: str
    round: int
    delivered: tuple[str, ...]
    missing: tuple[str, ...]
    sig: bytes = field(repr=False)
    digest: bytes = field(repr=False)  # what the signature covers; the message's identity


@dataclass(frozen=True)
class Reveal:
    """Member `sender` reveals to receiver `to` its pair seeds of `round`, one per missing member."""

    net: str
    sender: str
    to: str
    round: int
    seeds: tuple[tuple[str, bytes], ...]
    sig: bytes = field(repr=False)
    digest: bytes = field(repr=False)

    def seed_map(self) -> dict[str, bytes]:
        return dict(self.seeds)


def kind_of(data) -> str | None:
    """"reveal_request", "reveal", or None for anything else (updates, membership records)."""
    head = bytes(data[: len(MAGIC_REQUEST)])
    return "reveal_request" if head == MAGIC_REQUEST else "reveal" if head == MAGIC_REVEAL else None


# --- writing --------------------------------------------------------------------------------


def _seal(identity: Identity, magic: bytes, domain: bytes, body: dict, parse) -> bytes:
    signed = canonical(body)
    sig = identity.sign(hashlib.sha256(domain + signed).digest())
    data = magic + canonical({**body, "sig": sig})
    parse(data)  # refuse to send what a peer would refuse to read
    return data


def encode_request(identity: Identity, *, net: str, round: int, delivered: Iterable[str],
                   missing: Iterable[str]) -> bytes:
    """The receiver's signed request (delivered and missing are sorted here)."""
    body = {"net": str(net), "sender": identity.peer_id, "round": int(round),
            "delivered": sorted(delivered), "missing": sorted(missing)}
    return _seal(identity, MAGIC_REQUEST, DOMAIN_REQUEST, body, parse_request)


def encode_reveal(identity: Identity, *, net: str, to: str, round: int, seeds: Mapping[str, bytes]) -> bytes:
    """A member's signed reveal of its seeds towards the missing members (keys of `seeds`)."""
    body = {"net": str(net), "sender": identity.peer_id, "to": str(to), "round": int(round),
            "seeds": [[k, bytes(seeds[k])] for k in sorted(seeds)]}
    return _seal(identity, MAGIC_REVEAL, DOMAIN_REVEAL, body, parse_reveal)


# --- reading --------------------------------------------------------------------------------


def _key(cur: Cursor, name: str) -> None:
    if not cur.literal(_KEYS[name]):
        found = cur.short_str()
        raise (NonCanonical if found in _KEYS else Malformed)(f"field {name!r} expected, found {found!r}")


def _peer(cur: Cursor, what: str) -> str:
    pid = cur.str(what, MAX_PEER_ID_LEN)
    try:
        return check_peer_id(pid)
    except PeerIdError as exc:
        raise Malformed(f"{what}: {exc}") from None


def _round(cur: Cursor) -> int:
    r = cur.uint("round")
    if r > MAX_ROUND:
        raise Malformed("round must be < 2**64")
    return r


def _sorted_distinct(items: list[str], what: str) -> tuple[str, ...]:
    if len(set(items)) != len(items):
        raise Malformed(f"{what} lists a peer twice")
    if items != sorted(items):
        raise NonCanonical(f"{what} is not sorted")
    return tuple(items)


def _peers(cur: Cursor, what: str) -> tuple[str, ...]:
    n = cur.array_header(what, MAX_MEMBERS)
    return _sorted_distinct([_peer(cur, f"a peer in {what}") for _ in range(n)], what)


def _read(data, magic: bytes, max_size: int, fields: tuple[str, ...], read_fields) -> tuple:
    """Run `read_fields(cursor)` over the map after `magic`; returns (its result, sig, digest input)."""
    try:
        view = memoryview(data).cast("B")
    except TypeError as exc:
        raise SecureWireError("malformed", f"not a byte buffer: {exc}") from None
    what = "reveal request" if magic == MAGIC_REQUEST else "reveal"
    if len(view) > min(max_size, MAX_MESSAGE):
        raise SecureWireError("oversize", f"{what} of {len(view)} bytes > {min(max_size, MAX_MESSAGE)}")
    if bytes(view[: len(magic)]) != magic:
        raise SecureWireError("malformed", f"not a {what} (magic)")
    cur = Cursor(view, len(magic))
    try:
        count, shortest = cur.map_header(what)
        if count != len(fields) + 1:
            raise Malformed(f"a {what} has {len(fields) + 1} fields, this one {count}")
        if not shortest:
            raise NonCanonical(f"the {what}'s map header is wider than needed")
        start = cur.pos
        result = read_fields(cur)
        end = cur.pos
        _key(cur, "sig")
        sig = bytes(cur.bin("sig", SIG_LEN))
        if not cur.at_end():
            raise Malformed(f"{len(view) - cur.pos} bytes after the {what}")
    except NonCanonical as exc:
        raise SecureWireError("non_canonical", f"{what}: {exc}") from None
    except Malformed as exc:
        raise SecureWireError("malformed", f"{what}: {exc}") from None
    signed = bytes([0x80 | len(fields)]) + bytes(view[start:end])
    return result, sig, signed


def parse_request(data, max_size: int = MAX_MESSAGE) -> RevealRequest:
    """The request in `data` if it is well formed and canonical (not yet authenticated)."""

    def fields(cur: Cursor):
        _key(cur, "net")
        net = cur.str("net", MAX_NETWORK_ID_LEN)
        _key(cur, "sender")
        sender = _peer(cur, "sender")
        _key(cur, "round")
        rnd = _round(cur)
        _key(cur, "delivered")
        delivered = _peers(cur, "delivered")
        _key(cur, "missing")
        missing = _peers(cur, "missing")
        return net, sender, rnd, delivered, missing

    (net, sender, rnd, delivered, missing), sig, signed = _read(data, MAGIC_REQUEST, max_size, REQUEST_FIELDS, fields)
    if len(delivered) + len(missing) > MAX_MEMBERS:
        raise SecureWireError("malformed", f"reveal request names more than {MAX_MEMBERS} members")
    if set(delivered) & set(missing):
        raise SecureWireError("malformed", "reveal request names a member both delivered and missing")
    digest = hashlib.sha256(DOMAIN_REQUEST + signed).digest()
    return RevealRequest(net, sender, rnd, delivered, missing, sig, digest)


def parse_reveal(data, max_size: int = MAX_MESSAGE) -> Reveal:
    """The reveal in `data` if it is well formed and canonical (not yet authenticated)."""

    def fields(cur: Cursor):
        _key(cur, "net")
        net = cur.str("net", MAX_NETWORK_ID_LEN)
        _key(cur, "sender")
        sender = _peer(cur, "sender")
        _key(cur, "to")
        to = _peer(cur, "to")
        _key(cur, "round")
        rnd = _round(cur)
        _key(cur, "seeds")
        pairs = []
        for _ in range(cur.array_header("seeds", MAX_MEMBERS)):
            if cur.array_header("a seed entry", 2) != 2:
                raise Malformed("a seed entry is [PeerId, seed]")
            pairs.append((_peer(cur, "a seed's peer"), bytes(cur.bin("a seed", SEED_LEN))))
        _sorted_distinct([k for k, _ in pairs], "seeds")
        return net, sender, to, rnd, tuple(pairs)

    (net, sender, to, rnd, seeds), sig, signed = _read(data, MAGIC_REVEAL, max_size, REVEAL_FIELDS, fields)
    digest = hashlib.sha256(DOMAIN_REVEAL + signed).digest()
    return Reveal(net, sender, to, rnd, seeds, sig, digest)


def verify(msg: RevealRequest | Reveal, *, network: str, trusted: Collection[str], me: str | None = None):
    """`msg` itself if it is for `network`, its sender is in `trusted` and signed it, and (a
    Reveal, when `me` is given) it is addressed to `me`."""
    if msg.net != network:
        raise SecureWireError("wrong_network", f"message for network {msg.net!r:.60}, this is {network!r}")
    if msg.sender not in trusted:
        raise SecureWireError("untrusted_sender", f"sender {msg.sender:.16} is not trusted")
    if me is not None and isinstance(msg, Reveal) and msg.to != me:
        raise SecureWireError("wrong_receiver", f"reveal addressed to {msg.to:.16}, not to this peer")
    if not verify_signature(msg.sender, msg.sig, msg.digest):
        raise SecureWireError("bad_signature", f"not signed by its sender {msg.sender:.16}")
    return msg


# --- a masked contribution as an envelope payload -------------------------------------------


def _context(net: str, sender: str, receiver: str, round: int) -> bytes:
    """Binds a contribution's bytes (and so the sender's envelope signature) to its receiver:
    forwarded to another receiver it is refused by name instead of framing an honest pair."""
    parts = b"".join(length_prefixed(part) for part in (net, sender, receiver))
    return hashlib.sha256(DOMAIN_CONTRIBUTION + parts + int(round).to_bytes(8, "big")).digest()


def contribution_words(d: int, group_size: int) -> int:
    """The envelope's `n` for a masked contribution of d values in a group of group_size:
    a context tag and group_size - 1 commitments (8 words each), then the d masked values."""
    return 8 * group_size + d


def contribution_bytes(c: Contribution, *, net: str, sender: str, receiver: str, round: int) -> bytes:
    """The envelope payload: context tag, commitments (sorted by member), the masked vector;
    little-endian throughout."""
    head = _context(net, sender, receiver, round) + b"".join(c.commitments[k] for k in sorted(c.commitments))
    return head + np.asarray(c.payload, dtype="<u4").tobytes()


def contribution_from_bytes(buf, *, net: str, sender: str, receiver: str, round: int,
                            group: Iterable[str]) -> Contribution:
    """The Contribution in an envelope payload that `sender` signed for `receiver` (this peer),
    `round` and `net`; the vector is a read-only view on `buf`. SecureWireError
    ("wrong_context") if it was made for another receiver, round or network, ("malformed") if
    its size does not fit the group."""
    others = sorted(k for k in group if k != sender)
    view = memoryview(buf).cast("B")
    head = COMMITMENT_LEN * (1 + len(others))
    if len(view) < head or (len(view) - head) % 4:
        raise SecureWireError("malformed", f"a masked contribution of {len(view)} bytes does not fit a "
                                           f"tag, {len(others)} commitments and uint32 values")
    if bytes(view[:COMMITMENT_LEN]) != _context(net, sender, receiver, round):
        raise SecureWireError("wrong_context", f"masked contribution of {sender:.16} was made for another "
                                               f"receiver, round or network")
    commitments = {k: bytes(view[(i + 1) * COMMITMENT_LEN:(i + 2) * COMMITMENT_LEN]) for i, k in enumerate(others)}
    payload = np.frombuffer(view, dtype="<u4", offset=head).view(np.uint32)
    return Contribution(payload, commitments)
