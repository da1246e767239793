"""The verification pipeline: bytes from the network -> an accepted update or a typed
rejection. Pure (no sockets, no clock but the round numbers it is given), cheapest
checks first, and the signature is checked before anything in the payload is trusted.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum

import msgpack
import torch

from .codecs import CODECS, encoded_size
from .envelope import ALL_FIELDS, MAX_PARENTS, VERSION, Envelope, decode_payload, payload_digest
from .errors import CodecError, PeerIdError
from .identity import MAX_PEER_ID_LEN, public_key_of, verify_signature
from .msgpack_scan import bin_body, map_items


class Reason(StrEnum):
    TOO_LARGE = "too_large"
    MALFORMED = "malformed"
    BAD_VERSION = "bad_version"
    WRONG_NETWORK = "wrong_network"
    UNKNOWN_SENDER = "unknown_sender"
    NOT_A_NEIGHBOUR = "not_a_neighbour"
    STALE_ROUND = "stale_round"
    FUTURE_ROUND = "future_round"
    REPLAY = "replay"
    BAD_SIGNATURE = "bad_signature"
    SCHEMA_MISMATCH = "schema_mismatch"
    PAYLOAD_HASH_MISMATCH = "payload_hash_mismatch"
    NON_FINITE = "non_finite"


REASONS = tuple(r.value for r in Reason)


@dataclass
class Accepted:
    envelope: Envelope
    params: torch.Tensor  # float32 (n,); read-only view for raw-f32

    @property
    def sender(self) -> str:
        return self.envelope.sender

    @property
    def update_id(self) -> str:
        return self.envelope.update_id


@dataclass
class Rejected:
    reason: Reason
    detail: str
    sender: str | None = None  # as claimed: unauthenticated unless reason comes after the signature
    round: int | None = None
    envelope: Envelope | None = None


class _Malformed(Exception):
    pass


_TYPES = {"v": int, "net": str, "sender": str, "round": int, "ts": (int, float), "kind": str,
          "schema": bytes, "codec": str, "n": int, "deg": int, "parents": list,
          "payload_hash": bytes, "payload": memoryview, "sig": bytes}


def parse(data: bytes, max_size: int) -> Envelope:
    """Bounded decode with strict field typing; the payload stays a view on `data`."""
    fields: dict = {}
    payload = None
    view = memoryview(data)
    try:
        for ks, ke, vs, ve in map_items(view, len(ALL_FIELDS)):
            key = msgpack.unpackb(view[ks:ke], raw=False, max_str_len=64)
            if not isinstance(key, str) or key in fields or (key == "payload" and payload is not None):
                raise _Malformed("keys must be distinct strings")
            if key == "payload":
                body = bin_body(view, vs)
                if body is None:
                    raise _Malformed("payload must be bin")
                payload = view[body[0] : body[1]]
                continue
            fields[key] = msgpack.unpackb(
                view[vs:ve], raw=False, strict_map_key=True, max_bin_len=4096, max_str_len=1024,
                max_array_len=MAX_PARENTS, max_map_len=16, max_ext_len=0)
    except _Malformed:
        raise
    except Exception as exc:  # the scanner and msgpack raise many types for hostile input
        raise _Malformed(f"not a msgpack envelope: {type(exc).__name__}: {exc}"[:200]) from None
    if payload is not None:
        fields["payload"] = payload
    return Envelope(header={k: v for k, v in fields.items() if k not in ("payload", "sig")},
                    payload=fields.get("payload"), sig=fields.get("sig"), size=len(data))


def check_fields(env: Envelope) -> None:
    h = env.header
    fields = set(h) | {"payload", "sig"}
    if fields != ALL_FIELDS:
        missing, extra = sorted(ALL_FIELDS - fields), sorted(fields - ALL_FIELDS)
        raise _Malformed(f"fields missing {missing} / unexpected {extra}")
    values = {**h, "payload": env.payload, "sig": env.sig}
    for name, typ in _TYPES.items():
        v = values[name]
        if not isinstance(v, typ) or isinstance(v, bool):
            raise _Malformed(f"field {name!r} has type {type(v).__name__}")
    if h["round"] < 0 or h["n"] < 0 or h["deg"] < 0 or not math.isfinite(h["ts"]):
        raise _Malformed("round, n and deg must be >= 0 and ts finite")
    if len(h["sender"]) > MAX_PEER_ID_LEN or len(h["schema"]) != 32 or len(h["payload_hash"]) != 32 \
            or len(env.sig) != 64:
        raise _Malformed("sender, schema, payload_hash or sig has the wrong length")
    if any(not isinstance(p, bytes) or len(p) != 32 for p in h["parents"]):
        raise _Malformed("parents must be 32-byte hashes")
    if h["codec"] not in CODECS:
        raise _Malformed(f"unknown codec {h['codec']!r:.40}")
    if len(env.payload) != encoded_size(h["codec"], h["n"]):
        raise _Malformed(f"payload has {len(env.payload)} bytes, {h['codec']} x {h['n']} needs "
                         f"{encoded_size(h['codec'], h['n'])}")


@dataclass
class Verifier:
    """What one peer accepts. `neighbours=None` accepts any trusted sender.

    Rounds in [current - max_lag, current + max_lead] pass the round check; an (sender,
    round) pair is accepted once (`replay` afterwards), remembered while its round is
    inside the window.
    """

    network: str
    trusted: frozenset[str] | set[str]
    schema: bytes
    n_params: int
    neighbours: frozenset[str] | set[str] | None = None
    max_size: int = 64 * 1024 * 1024
    max_lag: int = 0
    max_lead: int = 2
    seen: set[tuple[str, int]] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def verify(self, data: bytes, current_round: int) -> Accepted | Rejected:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            return Rejected(Reason.MALFORMED, f"expected bytes, got {type(data).__name__}")
        if len(data) > self.max_size:
            return Rejected(Reason.TOO_LARGE, f"{len(data)} bytes > limit {self.max_size}")
        try:
            env = parse(data, self.max_size)
        except _Malformed as exc:
            return Rejected(Reason.MALFORMED, str(exc))
        h = env.header
        v = h.get("v")
        if v != VERSION or isinstance(v, bool):
            return Rejected(Reason.BAD_VERSION, f"version {v!r:.20} (this peer speaks {VERSION})")
        try:
            check_fields(env)
        except _Malformed as exc:
            return Rejected(Reason.MALFORMED, str(exc))
        sender, rnd = h["sender"], h["round"]

        def reject(reason: Reason, detail: str) -> Rejected:
            return Rejected(reason, detail, sender, rnd, env)

        if h["net"] != self.network:
            return reject(Reason.WRONG_NETWORK, f"network {h['net']!r:.60}, expected {self.network!r}")
        if sender not in self.trusted:
            return reject(Reason.UNKNOWN_SENDER, "sender is not on the trust list")
        if self.neighbours is not None and sender not in self.neighbours:
            return reject(Reason.NOT_A_NEIGHBOUR, "sender is trusted but not a neighbour")
        if rnd < current_round - self.max_lag:
            return reject(Reason.STALE_ROUND, f"round {rnd} is before the window (current {current_round})")
        if rnd > current_round + self.max_lead:
            return reject(Reason.FUTURE_ROUND, f"round {rnd} is beyond the window (current {current_round})")
        with self._lock:
            replayed = (sender, rnd) in self.seen
        if replayed:
            return reject(Reason.REPLAY, f"an update from this sender for round {rnd} was already accepted")
        if not self.authentic(env):
            return reject(Reason.BAD_SIGNATURE, "signature does not verify with the sender's key")
        if h["schema"] != self.schema or h["n"] != self.n_params:
            return reject(Reason.SCHEMA_MISMATCH, f"schema {h['schema'].hex()[:12]}.. with {h['n']} values, "
                                                  f"expected {self.schema.hex()[:12]}.. with {self.n_params}")
        if payload_digest(env.payload) != h["payload_hash"]:
            return reject(Reason.PAYLOAD_HASH_MISMATCH, "payload does not match its signed hash")
        try:
            params = decode_payload(env)
        except CodecError as exc:  # sizes were checked above; kept as a guard
            return reject(Reason.MALFORMED, str(exc))
        lo, hi = torch.aminmax(params) if params.numel() else (torch.zeros(()), torch.zeros(()))
        if not (bool(torch.isfinite(lo)) and bool(torch.isfinite(hi))):  # NaN and Inf propagate
            return reject(Reason.NON_FINITE, "payload holds NaN or Inf")
        with self._lock:  # verification may run on a worker thread (large messages)
            if (sender, rnd) in self.seen:
                return reject(Reason.REPLAY, f"an update from this sender for round {rnd} was already accepted")
            self.seen.add((sender, rnd))
        return Accepted(env, params)

    @staticmethod
    def authentic(env: Envelope) -> bool:
        try:
            public_key_of(env.sender)
        except PeerIdError:
            return False
        return verify_signature(env.sender, env.sig, env.digest)

    def forget_before(self, round_: int) -> None:
        """Drop replay records of rounds that can no longer pass the round check."""
        with self._lock:
            self.seen = {(s, r) for s, r in self.seen if r >= round_ - self.max_lag}

    def state(self) -> list[list]:
        with self._lock:
            return sorted([s, r] for s, r in self.seen)

    def restore(self, pairs: Iterable) -> None:
        with self._lock:
            self.seen = {(str(s), int(r)) for s, r in pairs}
