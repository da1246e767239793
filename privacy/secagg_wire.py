"""The messages of double-masking secure aggregation (privacy.secagg), signed and canonical.

Each message is a 5-byte magic and one msgpack map with a fixed key order, every value in its one
canonical encoding, read by gossip.msgpack_canonical's strict cursor (it stops at the first
deviating byte). The last field is `sig`: the sender's Ed25519 signature over
SHA-256(domain of the kind | the map of every other field), that map being the message's own
bytes under a map header one entry shorter. Lists of rows are sorted by their first element (a
PeerId) without repeats. Every message names network, sender and round; member -> receiver
messages and FORWARD name the addressee `to`; from the book on, `book` is the session id (the
BOOK's digest).

    kind       from -> to          fields (then sig)
    ADVERT     j -> i     GFSA\\x01  net sender to round c_pub s_pub
    BOOK       i -> U1    GFSB\\x01  net sender round threshold recv_pub entries[[j, c_pub, s_pub, sig_j]]
    DEAL       j -> i     GFSD\\x01  net sender to round book secret commits[[k, cb, cs]] boxes[[k, ct, sig_j]]
    FORWARD    i -> k     GFSF\\x01  net sender to round book boxes[[j, cb, cs, ct, sig_j]]
    SURVIVORS  i -> U     GFSU\\x01  net sender round book survivors[k]
    CONSENT    k -> i     GFSC\\x01  net sender to round book survivors[k]
    PROOF      i -> U4    GFSP\\x01  net sender round book survivors[k] consents[[k, sig_k]]
    REVEAL     k -> i     GFSR\\x01  net sender to round book b_shares[[j, ct]] s_shares[[j, ct]]

A book entry's sig_j is j's ADVERT signature; a proof's sig_k is k's CONSENT signature: both are
checked by rebuilding the signed map (`advert_digest`, `consent_digest`). A box is signed by its
dealer over (network, receiver, round, book, dealer, holder, cb, cs, ct) (`box_digest`), so
the holder can tell a tampering receiver (bad signature) from a cheating dealer (a box that
does not decrypt or match its commitments). A box that opens needs no signature check: it is
sealed under a key only its dealer and holder can derive (from the dealer's signed c_pub),
with cb and cs as associated data; the signature is checked to blame, when one does not.

`parse(data, n)` checks the size against the largest message of its kind for a group of n
(`limit`; the shares' sizes do not depend on t) before reading, then the structure; it never
checks a signature. The sessions check network, sender, addressee, round and session first,
then the signature (`signed_by_sender`), and only then do any expensive work.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, fields
from functools import lru_cache
from typing import Any, ClassVar, NamedTuple

import msgpack

from gossip.envelope import MAX_NETWORK_ID_LEN, canonical
from gossip.errors import PeerIdError
from gossip.identity import MAX_PEER_ID_LEN, Identity, check_peer_id, verify_signature
from gossip.msgpack_canonical import Cursor, Malformed, NonCanonical

from .secagg import HASH_LEN, KEY_LEN, MAX_MEMBERS, MAX_ROUND, SIG_LEN, SecAggError
from .shamir import SHARE_LEN

AEAD_TAG = 16
BOX_LEN = 2 * SHARE_LEN + AEAD_TAG  # a holder's two shares, encrypted
SEALED_SHARE_LEN = SHARE_LEN + AEAD_TAG  # one revealed share, encrypted to the receiver
MAGIC_LEN = 5
_PREFIX = b"GFS"
DOMAIN_BOX = b"gossipfl/secagg2/box\x00"


# --- rows and messages ----------------------------------------------------------------------


class BookEntry(NamedTuple):
    member: str
    c_pub: bytes
    s_pub: bytes
    sig: bytes  # the member's ADVERT signature


class Commit(NamedTuple):
    holder: str
    cb: bytes  # commitment to the holder's share of b
    cs: bytes  # commitment to the holder's share of s's key


class Box(NamedTuple):
    holder: str
    ct: bytes
    sig: bytes  # the dealer's signature of the box


class ForwardedBox(NamedTuple):
    dealer: str
    cb: bytes
    cs: bytes
    ct: bytes
    sig: bytes


class Signature(NamedTuple):
    member: str
    sig: bytes  # the member's CONSENT signature


class SealedShare(NamedTuple):
    dealer: str
    ct: bytes


@dataclass(frozen=True, kw_only=True)
class Message:
    """Parsed, not yet authenticated: `digest` is what `sig` must sign."""

    KIND: ClassVar[str] = ""
    net: str
    sender: str
    round: int
    sig: bytes = field(repr=False)
    digest: bytes = field(repr=False)

    def signed_by_sender(self) -> bool:
        return verify_signature(self.sender, self.sig, self.digest)


@dataclass(frozen=True, kw_only=True)
class Advert(Message):
    KIND: ClassVar[str] = "advert"
    to: str
    c_pub: bytes
    s_pub: bytes


@dataclass(frozen=True, kw_only=True)
class KeyBook(Message):
    KIND: ClassVar[str] = "book"
    threshold: int
    recv_pub: bytes
    entries: tuple[BookEntry, ...]


@dataclass(frozen=True, kw_only=True)
class Deal(Message):
    KIND: ClassVar[str] = "deal"
    to: str
    book: bytes
    secret: bytes  # commitment to the dealer's self-mask seed
    commits: tuple[Commit, ...]
    boxes: tuple[Box, ...]


@dataclass(frozen=True, kw_only=True)
class Forward(Message):
    KIND: ClassVar[str] = "forward"
    to: str
    book: bytes
    boxes: tuple[ForwardedBox, ...]


@dataclass(frozen=True, kw_only=True)
class Survivors(Message):
    KIND: ClassVar[str] = "survivors"
    book: bytes
    survivors: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class Consent(Message):
    KIND: ClassVar[str] = "consent"
    to: str
    book: bytes
    survivors: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class Proof(Message):
    KIND: ClassVar[str] = "proof"
    book: bytes
    survivors: tuple[str, ...]
    consents: tuple[Signature, ...]


@dataclass(frozen=True, kw_only=True)
class Reveal(Message):
    KIND: ClassVar[str] = "reveal"
    to: str
    book: bytes
    b_shares: tuple[SealedShare, ...]
    s_shares: tuple[SealedShare, ...]


# --- field types: how each is read, and its largest value (for the size bound) ----------------


class _Type:
    def read(self, cur: Cursor, what: str, n: int):
        raise NotImplementedError

    def worst(self, n: int):
        raise NotImplementedError


class _Net(_Type):
    def read(self, cur, what, n):
        return cur.str(what, MAX_NETWORK_ID_LEN)

    def worst(self, n):
        return "n" * MAX_NETWORK_ID_LEN


class _Peer(_Type):
    def read(self, cur, what, n):
        pid = cur.str(what, MAX_PEER_ID_LEN)
        try:
            return check_peer_id(pid)
        except PeerIdError as exc:
            raise Malformed(f"{what}: {exc}") from None

    def worst(self, n):
        return "p" * MAX_PEER_ID_LEN


class _Uint(_Type):
    def __init__(self, top: int):
        self.top = top

    def read(self, cur, what, n):
        v = cur.uint(what)
        if v > self.top:
            raise Malformed(f"{what} must be <= {self.top}, got {v}")
        return v

    def worst(self, n):
        return self.top


class _Bin(_Type):
    def __init__(self, size: int):
        self.size = size

    def read(self, cur, what, n):
        return bytes(cur.bin(what, self.size))

    def worst(self, n):
        return bytes(self.size)


class _Peers(_Type):
    """A sorted list of distinct PeerIds, at most n."""

    def read(self, cur, what, n):
        label = f"a peer in {what}"
        items = [PEER.read(cur, label, n) for _ in range(cur.array_header(what, n))]
        return _sorted_distinct(items, items, what)

    def worst(self, n):
        return [PEER.worst(n)] * n


class _Table(_Type):
    """A list of at most n rows [PeerId, ...], sorted by the PeerId without repeats."""

    def __init__(self, row: Any, *types: _Type):  # row: a NamedTuple class
        self.row, self.types = row, (PEER, *types)

    def read(self, cur, what, n):
        rows, width, row_label = [], len(self.types), f"a row of {what}"
        fields = [(t, f"{what}.{name}") for t, name in zip(self.types, self.row._fields, strict=True)]
        for _ in range(cur.array_header(what, n)):
            if cur.array_header(row_label, width) != width:
                raise Malformed(f"a row of {what} has {width} items")
            rows.append(self.row(*[t.read(cur, label, n) for t, label in fields]))
        return _sorted_distinct(rows, [r[0] for r in rows], what)

    def worst(self, n):
        return [tuple(t.worst(n) for t in self.types)] * n


def _sorted_distinct(items: list, keys: list[str], what: str) -> tuple:
    if len(set(keys)) != len(keys):
        raise Malformed(f"{what} lists a peer twice")
    if keys != sorted(keys):
        raise NonCanonical(f"{what} is not sorted")
    return tuple(items)


NET, PEER, ROUND = _Net(), _Peer(), _Uint(MAX_ROUND)
KEY, HASH, SIG = _Bin(KEY_LEN), _Bin(HASH_LEN), _Bin(SIG_LEN)

SPECS: dict[type[Message], tuple[bytes, tuple[tuple[str, _Type], ...]]] = {
    Advert: (b"A", (("net", NET), ("sender", PEER), ("to", PEER), ("round", ROUND), ("c_pub", KEY),
                    ("s_pub", KEY))),
    KeyBook: (b"B", (("net", NET), ("sender", PEER), ("round", ROUND), ("threshold", _Uint(MAX_MEMBERS)),
                     ("recv_pub", KEY), ("entries", _Table(BookEntry, KEY, KEY, SIG)))),
    Deal: (b"D", (("net", NET), ("sender", PEER), ("to", PEER), ("round", ROUND), ("book", HASH),
                  ("secret", HASH), ("commits", _Table(Commit, HASH, HASH)),
                  ("boxes", _Table(Box, _Bin(BOX_LEN), SIG)))),
    Forward: (b"F", (("net", NET), ("sender", PEER), ("to", PEER), ("round", ROUND), ("book", HASH),
                     ("boxes", _Table(ForwardedBox, HASH, HASH, _Bin(BOX_LEN), SIG)))),
    Survivors: (b"U", (("net", NET), ("sender", PEER), ("round", ROUND), ("book", HASH), ("survivors", _Peers()))),
    Consent: (b"C", (("net", NET), ("sender", PEER), ("to", PEER), ("round", ROUND), ("book", HASH),
                     ("survivors", _Peers()))),
    Proof: (b"P", (("net", NET), ("sender", PEER), ("round", ROUND), ("book", HASH), ("survivors", _Peers()),
                   ("consents", _Table(Signature, SIG)))),
    Reveal: (b"R", (("net", NET), ("sender", PEER), ("to", PEER), ("round", ROUND), ("book", HASH),
                    ("b_shares", _Table(SealedShare, _Bin(SEALED_SHARE_LEN))),
                    ("s_shares", _Table(SealedShare, _Bin(SEALED_SHARE_LEN))))),
}
MAGICS = {cls: _PREFIX + letter + b"\x01" for cls, (letter, _) in SPECS.items()}
BY_MAGIC = {magic: cls for cls, magic in MAGICS.items()}
BY_KIND = {cls.KIND: cls for cls in SPECS}
DOMAINS = {cls: b"gossipfl/secagg2/" + cls.KIND.encode() + b"\x00" for cls in SPECS}
_KEYS = {name: msgpack.packb(name) for _, spec in SPECS.values() for name, _ in spec} | {"sig": msgpack.packb("sig")}
for _cls, (_, _spec) in SPECS.items():  # each class and its wire spec name the same fields
    if {f.name for f in fields(_cls)} - {"sig", "digest"} != {name for name, _ in _spec}:
        raise TypeError(f"{_cls.__name__}: its fields and its wire spec differ")


def kind_of(data) -> type[Message] | None:
    """The message class of `data` by its magic, or None (updates, membership records, ...)."""
    return BY_MAGIC.get(bytes(data[:MAGIC_LEN]))


def limit(cls: type[Message], n: int) -> int:
    """The largest message of this kind for a group of n members (MAX_MEMBERS at most): the
    canonical encoding of one with every string, number and list at its largest."""
    return _limit(cls.KIND, n)


@lru_cache(maxsize=64)
def _limit(kind: str, n: int) -> int:
    if not 1 <= n <= MAX_MEMBERS:
        raise ValueError(f"a group has 1 to {MAX_MEMBERS} members")
    _, spec = SPECS[BY_KIND[kind]]
    body = {name: t.worst(n) for name, t in spec}
    return MAGIC_LEN + len(canonical({**body, "sig": bytes(SIG_LEN)}))


def max_limit(n: int) -> int:
    """The largest message of any kind for a group of n (what an inbox may accept)."""
    return max(limit(cls, n) for cls in SPECS)


# --- digests, writing -----------------------------------------------------------------------


def _digest(cls: type[Message], signed_map: bytes) -> bytes:
    return hashlib.sha256(DOMAINS[cls] + signed_map).digest()


def _body(cls: type[Message], values: dict) -> dict:
    """The fields in wire order, lists sorted by their PeerId."""
    _, spec = SPECS[cls]
    body = {}
    for name, t in spec:
        v = values[name]
        if isinstance(t, _Table):
            v = [tuple(row) for row in sorted(v, key=lambda row: row[0])]
        elif isinstance(t, _Peers):
            v = sorted(v)
        body[name] = v
    return body


def digest_of(cls: type[Message], **values) -> bytes:
    """What the signature of a message of this kind with these fields covers."""
    return _digest(cls, canonical(_body(cls, values)))


def advert_digest(*, net: str, member: str, receiver: str, round: int, c_pub: bytes, s_pub: bytes) -> bytes:
    """What member's ADVERT signature (a book entry's sig) covers."""
    return digest_of(Advert, net=net, sender=member, to=receiver, round=round, c_pub=c_pub, s_pub=s_pub)


def consent_digest(*, net: str, member: str, receiver: str, round: int, book: bytes,
                   survivors: tuple[str, ...]) -> bytes:
    """What member's CONSENT signature (a proof's sig) covers."""
    return digest_of(Consent, net=net, sender=member, to=receiver, round=round, book=book, survivors=survivors)


def box_digest(*, net: str, receiver: str, round: int, book: bytes, dealer: str, holder: str, cb: bytes, cs: bytes,
               ct: bytes) -> bytes:
    """What a dealer signs for one box."""
    body = {"net": net, "receiver": receiver, "round": round, "book": bytes(book), "dealer": dealer,
            "holder": holder, "cb": bytes(cb), "cs": bytes(cs), "ct": bytes(ct)}
    return hashlib.sha256(DOMAIN_BOX + canonical(body)).digest()


def encode(identity: Identity, cls: type[Message], **values) -> bytes:
    """A signed message from this identity (the sender). The sessions pass values of the types
    `parse` reads (the tests parse every message they send)."""
    body = _body(cls, {**values, "sender": identity.peer_id})
    sig = identity.sign(_digest(cls, canonical(body)))
    return MAGICS[cls] + canonical({**body, "sig": sig})


# --- reading --------------------------------------------------------------------------------


def _key(cur: Cursor, name: str) -> None:
    if not cur.literal(_KEYS[name]):
        found = cur.short_str()
        raise (NonCanonical if found in _KEYS else Malformed)(f"field {name!r} expected, found {found!r}")


def parse(data, n: int = MAX_MEMBERS) -> Message:
    """The message in `data` if it is one of these kinds, no larger than its kind allows for a
    group of n, well formed and canonical (not yet authenticated). SecAggError with who = ()."""
    try:
        view = memoryview(data).cast("B")
    except TypeError as exc:
        raise SecAggError("malformed", (), f"not a byte buffer: {exc}") from None
    cls = kind_of(view)
    if cls is None:
        raise SecAggError("malformed", (), "not a secure aggregation message (magic)")
    if len(view) > limit(cls, n):
        raise SecAggError("oversize", (), f"{cls.KIND} of {len(view)} bytes > {limit(cls, n)} for a group of {n}")
    _, spec = SPECS[cls]
    cur = Cursor(view, MAGIC_LEN)
    try:
        count, shortest = cur.map_header(cls.KIND)
        if count != len(spec) + 1:
            raise Malformed(f"a {cls.KIND} has {len(spec) + 1} fields, this one {count}")
        if not shortest:
            raise NonCanonical(f"the {cls.KIND}'s map header is wider than needed")
        start = cur.pos
        values = {}
        for name, t in spec:
            _key(cur, name)
            values[name] = t.read(cur, name, n)
        end = cur.pos
        _key(cur, "sig")
        sig = bytes(cur.bin("sig", SIG_LEN))
        if not cur.at_end():
            raise Malformed(f"{len(view) - cur.pos} bytes after the {cls.KIND}")
    except NonCanonical as exc:
        raise SecAggError("non_canonical", (), f"{cls.KIND}: {exc}") from None
    except Malformed as exc:
        raise SecAggError("malformed", (), f"{cls.KIND}: {exc}") from None
    signed = bytes([0x80 | len(spec)]) + bytes(view[start:end])
    return cls(**values, sig=sig, digest=_digest(cls, signed))
