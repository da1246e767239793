"""Wire format v3 (VERSION): one signed msgpack map per message, with a fixed, canonical layout.

The map has exactly these 15 keys in this order, each value in its one canonical msgpack
encoding (shortest header for ints, str, bin and arrays; float64 for `ts` and `eps`):

    v uint (= 3) | net str <= 128 B | sender str <= 64 B | round uint < 2**64 | ts float64 (finite)
    kind str <= 16 B | schema bin 32 | codec str (one of CODECS) | n uint | deg uint
    eps float64 (finite, >= 0: the sender's cumulative privacy epsilon, 0 without privacy)
    parents array <= MAX_PARENTS of bin 32 | payload_hash bin 32 (SHA-256 of the payload)
    sig bin 64 | payload bin of exactly encoded_size(codec, n) bytes

The first 13 pairs are the header. The signature is Ed25519 over
SHA-256(DOMAIN + canonical header), the canonical header being those 13 pairs under a
13-entry map header: the very bytes of the message after its first byte. `eps` is signed so
that neighbours witness a sender's privacy budget: one that goes down is a rollback (v3; v2
had no `eps`). DOMAIN
(b"gossipfl/envelope/v1\0") keeps these signatures apart from the other things a key signs
(membership records, provenance events); its "v1" names that separation, not the wire
version. The header digest is the update's identity (`update_id`); the payload is bound
through `payload_hash`, so a header stored without its payload (as the provenance log does)
can still be checked.

`parse` walks the bytes once and stops at the first byte that deviates from the layout, so
hostile input costs O(header) whatever its size; any other encoding of the same content is
`NonCanonical`: one signed update has exactly one byte string.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import msgpack

from .codecs import CODECS, Bytes, decode, encode, encoded_size
from .identity import MAX_PEER_ID_LEN, Identity
from .msgpack_canonical import Cursor, Malformed, NonCanonical, is_int_type

if TYPE_CHECKING:
    import torch  # for annotations only: parsing an envelope never loads torch

VERSION = 3  # 3: the signed `eps`; 2: fixed key order and canonical encodings (v1 sorted keys, any encoding)
DOMAIN = b"gossipfl/envelope/v1\x00"
HEADER_FIELDS = ("v", "net", "sender", "round", "ts", "kind", "schema", "codec", "n", "deg", "eps",
                 "parents", "payload_hash")
FIELDS = HEADER_FIELDS + ("sig", "payload")  # the wire order
ALL_FIELDS = frozenset(FIELDS)
MAX_PARENTS = 256
MAX_NETWORK_ID_LEN = 128  # bytes of UTF-8
MAX_KIND_LEN = 16
MAX_UINT = (1 << 64) - 1
HASH_LEN, SIG_LEN = 32, 64
_KEYS = {name: msgpack.packb(name) for name in FIELDS}
_MAX_CODEC_LEN = max(len(c) for c in CODECS)


class BadVersion(Malformed):
    """A well-formed start of a message of another format version."""


def canonical(obj: object) -> bytes:
    """msgpack as the format writes it: shortest headers, bin for bytes, float64, maps in the
    order given (the format fixes the order; callers pass fields in it)."""
    return msgpack.packb(obj, use_bin_type=True, strict_types=False)


def header_bytes(header: dict) -> bytes:
    """The canonical header: the 13 header fields in the format's order."""
    return canonical({k: header[k] for k in HEADER_FIELDS})


def _digest_of(header_map: bytes | memoryview) -> bytes:
    h = hashlib.sha256(DOMAIN)
    h.update(header_map)
    return h.digest()


def header_digest(header: dict) -> bytes:
    return _digest_of(header_bytes(header))


def bin_header(n: int) -> bytes:
    """The msgpack header of an n-byte bin (what packb writes before the bytes themselves),
    for writers that put large buffers on the wire or to disk without copying them."""
    return (b"\xc4" + n.to_bytes(1, "big") if n < 1 << 8 else
            b"\xc5" + n.to_bytes(2, "big") if n < 1 << 16 else b"\xc6" + n.to_bytes(4, "big"))


def payload_digest(payload: Bytes) -> bytes:
    return hashlib.sha256(payload).digest()


@dataclass
class Envelope:
    """A parsed, not yet trusted message. `header` holds every signed field."""

    header: dict
    payload: memoryview = field(repr=False)  # a view on the received buffer
    sig: bytes = field(repr=False)
    size: int = 0
    _digest: bytes | None = field(default=None, repr=False)

    @property
    def sender(self) -> str:
        return self.header["sender"]

    @property
    def round(self) -> int:
        return self.header["round"]

    @property
    def digest(self) -> bytes:
        if self._digest is None:
            self._digest = header_digest(self.header)
        return self._digest

    @property
    def update_id(self) -> str:
        return self.digest.hex()

    def signed_header(self) -> dict:
        """What the provenance log keeps of a received update: header + signature, no payload."""
        return {"header": header_bytes(self.header), "sig": self.sig}


class Sealed(NamedTuple):
    data: bytes  # what goes on the wire
    update_id: str  # hex digest of the signed header: the update's identity everywhere


def _frame(header_map: bytes, sig: bytes, payload: memoryview) -> bytes:
    """The message around a canonical header map; the payload is copied once, into it."""
    return b"".join((bytes([0x80 | len(FIELDS)]), memoryview(header_map)[1:], _KEYS["sig"], canonical(sig),
                     _KEYS["payload"], bin_header(len(payload)), payload))


def _check_header(h: dict, payload_len: int) -> None:
    """Refuse to seal what `parse` would refuse (ValueError naming the field)."""
    for name in ("round", "n", "deg"):
        if not 0 <= h[name] <= MAX_UINT:
            raise ValueError(f"{name} must be in [0, 2**64), got {h[name]}")
    for name, limit in (("net", MAX_NETWORK_ID_LEN), ("sender", MAX_PEER_ID_LEN), ("kind", MAX_KIND_LEN)):
        if len(h[name].encode("utf-8")) > limit:
            raise ValueError(f"{name} has more than {limit} bytes of UTF-8: {h[name]!r:.80}")
    if not math.isfinite(h["ts"]):
        raise ValueError(f"ts must be finite, got {h['ts']}")
    if not (math.isfinite(h["eps"]) and h["eps"] >= 0):
        raise ValueError(f"eps must be finite and >= 0, got {h['eps']}")
    if len(h["schema"]) != HASH_LEN or any(len(p) != HASH_LEN for p in h["parents"]):
        raise ValueError("schema and parents must be 32-byte hashes")
    if len(h["parents"]) > MAX_PARENTS:
        raise ValueError(f"{len(h['parents'])} parents, at most {MAX_PARENTS}")
    if h["codec"] not in CODECS:
        raise ValueError(f"unknown codec {h['codec']!r}; choose one of {', '.join(CODECS)}")
    if payload_len >= 1 << 32:
        raise ValueError(f"a payload of {payload_len} bytes does not fit a msgpack bin (4 GiB)")
    if payload_len != encoded_size(h["codec"], h["n"]):
        raise ValueError(f"payload has {payload_len} bytes, {h['codec']} x {h['n']} needs "
                         f"{encoded_size(h['codec'], h['n'])}")


def seal(identity: Identity, *, net: str, round: int, schema: bytes, payload: Bytes, codec: str,
         n: int, parents: Sequence[bytes] = (), deg: int = 0, kind: str = "update",
         ts: float | None = None, eps: float = 0.0) -> Sealed:
    """Sign and encode one message in its canonical form."""
    body = memoryview(payload).cast("B")
    header = {
        "v": VERSION, "net": str(net), "sender": identity.peer_id, "round": int(round),
        "ts": float(time.time() if ts is None else ts), "kind": str(kind), "schema": bytes(schema),
        "codec": str(codec), "n": int(n), "deg": int(deg), "eps": float(eps), "parents": [bytes(p) for p in parents],
        "payload_hash": payload_digest(body),
    }
    _check_header(header, len(body))
    header_map = header_bytes(header)
    digest = _digest_of(header_map)
    return Sealed(_frame(header_map, identity.sign(digest), body), digest.hex())


def seal_update(identity: Identity, flat: torch.Tensor, *, codec: str = "raw-f32", **fields: Any) -> Sealed:
    """Encode a flat parameter tensor with `codec` and seal it."""
    return seal(identity, payload=encode(flat, codec), codec=codec, n=int(flat.numel()), **fields)


def decode_payload(env: Envelope) -> torch.Tensor:
    """The payload's n values (float32; raw uint32 words for the u32 codec)."""
    return decode(env.payload, env.header["codec"], env.header["n"])


# --- reading ------------------------------------------------------------------------------


def _key(cur: Cursor, name: str) -> None:
    if cur.literal(_KEYS[name]):
        return
    found = cur.short_str()
    if found in ALL_FIELDS:
        raise NonCanonical(f"key {found!r} where {name!r} belongs (field order, duplicate or key encoding)")
    if found is not None:
        raise Malformed(f"unexpected field {found!r} where {name!r} belongs")
    raise Malformed(f"field {name!r} expected, found no string key")


def _version(cur: Cursor) -> None:
    if not is_int_type(cur.peek()):
        raise BadVersion("the version field is not an integer")
    v = cur.int("v")
    if v != VERSION:
        raise BadVersion(f"version {v} (this peer speaks {VERSION})")


def parse(data: Bytes) -> Envelope:
    """Check `data` against the layout byte by byte; the payload stays a view on `data`.

    Raises BadVersion, NonCanonical or Malformed at the first deviation (its `offset`: the
    bytes read so far, at most the header's few KB whatever the size of `data`). Checks
    structure only: nothing here is authenticated.
    """
    try:
        view = memoryview(data).cast("B")
    except TypeError as exc:
        raise Malformed(f"not a byte buffer: {exc}") from None
    cur = Cursor(view)
    try:
        return _read(cur)
    except (Malformed, NonCanonical) as exc:
        exc.offset = cur.pos
        raise


def _read(cur: Cursor) -> Envelope:
    view = cur.buf
    count, shortest = cur.map_header("the envelope")
    has_version = cur.literal(_KEYS["v"])
    if has_version:  # a version is read before the layout it selects
        _version(cur)
    if count > len(FIELDS):
        raise NonCanonical(f"the envelope has {count} entries, the format {len(FIELDS)} (extra or duplicate keys)")
    if count < len(FIELDS):
        raise Malformed(f"the envelope has {count} entries, the format {len(FIELDS)} (fields missing)")
    if not shortest:
        raise NonCanonical("the envelope's map header is wider than needed")
    if not has_version:
        _key(cur, "v")
        _version(cur)
    h: dict = {"v": VERSION}
    _key(cur, "net")
    h["net"] = cur.str("net", MAX_NETWORK_ID_LEN)
    _key(cur, "sender")
    h["sender"] = cur.str("sender", MAX_PEER_ID_LEN)
    _key(cur, "round")
    h["round"] = cur.uint("round")
    _key(cur, "ts")
    h["ts"] = cur.float64("ts")
    _key(cur, "kind")
    h["kind"] = cur.str("kind", MAX_KIND_LEN)
    _key(cur, "schema")
    h["schema"] = bytes(cur.bin("schema", HASH_LEN))
    _key(cur, "codec")
    codec = h["codec"] = cur.str("codec", _MAX_CODEC_LEN)
    if codec not in CODECS:
        raise Malformed(f"unknown codec {codec!r}")
    _key(cur, "n")
    n = h["n"] = cur.uint("n")
    _key(cur, "deg")
    h["deg"] = cur.uint("deg")
    _key(cur, "eps")
    eps = h["eps"] = cur.float64("eps")
    if not eps >= 0:  # float64() refuses NaN and infinities
        raise Malformed(f"eps {eps} is negative")
    _key(cur, "parents")
    h["parents"] = [bytes(cur.bin("a parent", HASH_LEN)) for _ in range(cur.array_header("parents", MAX_PARENTS))]
    _key(cur, "payload_hash")
    h["payload_hash"] = bytes(cur.bin("payload_hash", HASH_LEN))
    header_end = cur.pos
    _key(cur, "sig")
    sig = bytes(cur.bin("sig", SIG_LEN))
    _key(cur, "payload")
    payload = cur.bin("payload", encoded_size(codec, n))
    if not cur.at_end():
        raise Malformed(f"{len(view) - cur.pos} bytes after the envelope")
    # the canonical header is the message's own bytes under a 13-entry map header
    digest = hashlib.sha256(DOMAIN)
    digest.update(bytes([0x80 | len(HEADER_FIELDS)]))
    digest.update(view[1:header_end])
    return Envelope(header=h, payload=payload, sig=sig, size=len(view), _digest=digest.digest())


def _uint_size(v: int) -> int:
    return len(canonical(v))


def _largest_header() -> int:
    """Bytes of the biggest valid message with an empty payload, but for `n`'s and the codec
    name's own bytes: every bounded field at its bound."""
    worst = {"v": VERSION, "net": "x" * MAX_NETWORK_ID_LEN, "sender": "x" * MAX_PEER_ID_LEN, "round": MAX_UINT,
             "ts": 0.0, "kind": "x" * MAX_KIND_LEN, "schema": bytes(HASH_LEN),
             "codec": "", "n": 0, "deg": MAX_UINT, "eps": 0.0,
             "parents": [bytes(HASH_LEN)] * MAX_PARENTS, "payload_hash": bytes(HASH_LEN)}
    return len(_frame(header_bytes(worst), bytes(SIG_LEN), memoryview(b""))) - _uint_size(0) - len(bin_header(0))


_LARGEST_HEADER = _largest_header()


def max_message_size(codec: str, n: int) -> int:
    """The largest valid message of `n` values (entries, for a sparse codec) in `codec`: the
    payload's exact size, the codec's name, plus room for the longest network id, sender, kind and MAX_PARENTS parents."""
    if not 0 <= n <= MAX_UINT:
        raise ValueError(f"n must be in [0, 2**64), got {n}")
    size = encoded_size(codec, n)
    if size >= 1 << 32:
        raise ValueError(f"a {codec} payload of {n} values does not fit a msgpack bin (4 GiB)")
    return _LARGEST_HEADER + len(codec) + _uint_size(n) + len(bin_header(size)) + size
