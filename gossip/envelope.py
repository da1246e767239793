"""Wire format v1: one signed msgpack map per message.

Fields: v, net, sender, round, ts, kind, schema, codec, n, deg, parents, payload_hash,
payload, sig. The signature is Ed25519 over SHA-256(DOMAIN + canonical header), the
header being every field but `payload` and `sig`, msgpack-encoded with sorted keys.
The payload is bound by `payload_hash`, so a header stored without its payload (as
the provenance log does) can still be checked against its sender's signature.
The header digest is also the update's identity (`update_id`).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import NamedTuple

import msgpack

from .codecs import decode, encode
from .identity import Identity

VERSION = 1
DOMAIN = b"gossipfl/envelope/v1\x00"
HEADER_FIELDS = ("v", "net", "sender", "round", "ts", "kind", "schema", "codec", "n", "deg",
                 "parents", "payload_hash")
ALL_FIELDS = frozenset(HEADER_FIELDS) | {"payload", "sig"}
MAX_PARENTS = 256


def canonical(obj) -> bytes:
    """Deterministic msgpack: maps with sorted keys, bin for bytes, no floats beyond doubles."""
    return msgpack.packb(obj, use_bin_type=True, strict_types=False)


def header_bytes(header: dict) -> bytes:
    return canonical({k: header[k] for k in sorted(header) if k in HEADER_FIELDS})


def header_digest(header: dict) -> bytes:
    return hashlib.sha256(DOMAIN + header_bytes(header)).digest()


def bin_header(n: int) -> bytes:
    """The msgpack header of an n-byte bin (what packb writes before the bytes themselves),
    for writers that put large buffers on the wire or to disk without copying them."""
    return (b"\xc4" + n.to_bytes(1, "big") if n < 1 << 8 else
            b"\xc5" + n.to_bytes(2, "big") if n < 1 << 16 else b"\xc6" + n.to_bytes(4, "big"))


def payload_digest(payload) -> bytes:
    return hashlib.sha256(payload).digest()


@dataclass
class Envelope:
    """A decoded, not yet trusted message. `header` holds every signed field."""

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


def seal(identity: Identity, *, net: str, round: int, schema: bytes, payload: bytes, codec: str,
         n: int, parents: list[bytes] = (), deg: int = 0, kind: str = "update",
         ts: float | None = None) -> Sealed:
    """Sign and encode one message."""
    header = {
        "v": VERSION, "net": net, "sender": identity.peer_id, "round": int(round),
        "ts": float(time.time() if ts is None else ts), "kind": kind, "schema": bytes(schema),
        "codec": codec, "n": int(n), "deg": int(deg), "parents": [bytes(p) for p in parents],
        "payload_hash": payload_digest(payload),
    }
    digest = header_digest(header)
    sig = identity.sign(digest)
    # The map is written by hand so the payload is copied once, into the message itself.
    payload = memoryview(payload).cast("B")
    pairs = b"".join(canonical(k) + canonical(v) for k, v in sorted({**header, "sig": sig}.items()))
    head = bytes([0x80 | (len(header) + 2)])
    return Sealed(b"".join((head, pairs, canonical("payload"), bin_header(len(payload)), payload)), digest.hex())


def seal_update(identity: Identity, flat, *, codec: str = "raw-f32", **fields) -> Sealed:
    """Encode a flat parameter tensor with `codec` and seal it."""
    return seal(identity, payload=encode(flat, codec), codec=codec, n=int(flat.numel()), **fields)


def decode_payload(env: Envelope):
    return decode(env.payload, env.header["codec"], env.header["n"])
