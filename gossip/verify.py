"""The verification pipeline: bytes from the network -> an accepted update or a typed
rejection. Pure (no sockets, no clock but the round numbers it is given), cheapest checks
first, in two stages so a driver can rate-limit on the *authenticated* sender between them:

- `screen`: size, canonical structure, version, network, trust (revoked senders by name),
  neighbourhood, round window, replay (against a caller-owned set) and the signature over
  the header: O(header) work whatever the message's size; the payload is not touched.
- `finish`: kind, schema hash and value count, codec, payload hash, decode, finite values:
  O(payload).

Kinds: a peer whose rule is secure_mean (`masked_words` set) takes only kind "masked"
(codec u32, exactly `masked_words` words: a masked contribution, returned as raw uint32
words for the peer to open); every other peer refuses kind "masked" and the u32 codec.

The Verifier holds configuration only; the replay window belongs to the caller.
"""

from __future__ import annotations

from collections.abc import Collection, Container
from dataclasses import dataclass
from enum import StrEnum

import torch

from .codecs import WORD_CODECS
from .envelope import BadVersion, Envelope, Malformed, NonCanonical, decode_payload, payload_digest
from .envelope import parse as parse_envelope
from .errors import CodecError, PeerIdError
from .identity import public_key_of, verify_signature


class Reason(StrEnum):
    TOO_LARGE = "too_large"
    MALFORMED = "malformed"
    BAD_VERSION = "bad_version"
    WRONG_NETWORK = "wrong_network"
    REVOKED = "revoked"  # the network admin revoked this sender (a membership record)
    UNKNOWN_SENDER = "unknown_sender"
    NOT_A_NEIGHBOUR = "not_a_neighbour"
    STALE_ROUND = "stale_round"
    FUTURE_ROUND = "future_round"
    REPLAY = "replay"
    BAD_SIGNATURE = "bad_signature"
    SCHEMA_MISMATCH = "schema_mismatch"
    PAYLOAD_HASH_MISMATCH = "payload_hash_mismatch"
    NON_FINITE = "non_finite"
    NON_CANONICAL = "non_canonical"
    WRONG_KIND = "wrong_kind"  # a masked contribution to a plain peer, or a plain update to a secure_mean one
    PRIVACY_ROLLBACK = "privacy_rollback"  # the sender's signed epsilon went down: its privacy ledger was reset


REASONS = tuple(r.value for r in Reason)


@dataclass
class Verified:
    """An envelope whose payload passed every check, and who sent it."""

    envelope: Envelope

    @property
    def sender(self) -> str:
        return self.envelope.sender

    @property
    def update_id(self) -> str:
        return self.envelope.update_id


@dataclass
class Accepted(Verified):
    params: torch.Tensor  # float32 (n,); read-only view for raw-f32


@dataclass
class Rejected:
    reason: Reason
    detail: str
    sender: str | None = None  # as claimed; proven only if `authenticated`
    round: int | None = None
    envelope: Envelope | None = None
    authenticated: bool = False  # rejected after the signature verified: the sender is proven


_REPLAY_DETAIL = "an update from this sender for round {} was already accepted"


@dataclass
class Verifier:
    """What one peer accepts. `neighbours=None` accepts any trusted sender.

    Rounds in [current - max_lag, current + max_lead] pass the round check. `trusted` and
    `neighbours` are read at each call, so the owner may change them between calls.
    """

    network: str
    trusted: Collection[str]
    schema: bytes
    n_params: int
    neighbours: Collection[str] | None = None
    max_size: int = 64 * 1024 * 1024
    max_lag: int = 0
    max_lead: int = 2
    revoked: Collection[str] = ()  # revoked senders get their own reason (read at each call)
    masked_words: int | None = None  # secure_mean: the words of a masked contribution to this peer
    # the highest signed epsilon accepted from each sender (caller-owned, read at each call, like
    # `revoked`): a sender whose epsilon goes down reset its privacy ledger
    witnessed: dict[str, float] | None = None

    def screen(self, data: object, current_round: int,
               seen: Container[tuple[str, int]] = ()) -> Envelope | Rejected:
        """Every check that needs only the header, the signature last; `seen` (read only) holds
        the (sender, round) pairs already accepted."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            return Rejected(Reason.MALFORMED, f"expected bytes, got {type(data).__name__}")
        size = memoryview(data).nbytes
        if size > self.max_size:
            return Rejected(Reason.TOO_LARGE, f"{size} bytes > limit {self.max_size}")
        try:
            env = parse_envelope(data)
        except BadVersion as exc:
            return Rejected(Reason.BAD_VERSION, str(exc))
        except NonCanonical as exc:
            return Rejected(Reason.NON_CANONICAL, str(exc))
        except Malformed as exc:
            return Rejected(Reason.MALFORMED, str(exc))
        h = env.header
        sender, rnd = h["sender"], h["round"]

        def reject(reason: Reason, detail: str) -> Rejected:
            return Rejected(reason, detail, sender, rnd, env)

        if h["net"] != self.network:
            return reject(Reason.WRONG_NETWORK, f"network {h['net']!r:.60}, expected {self.network!r}")
        if sender not in self.trusted:
            if sender in self.revoked:
                return reject(Reason.REVOKED, "the network admin revoked this sender")
            return reject(Reason.UNKNOWN_SENDER, "sender is not on the trust list")
        neighbours = self.neighbours
        if neighbours is not None and sender not in neighbours:
            return reject(Reason.NOT_A_NEIGHBOUR, "sender is trusted but not a neighbour")
        if rnd < current_round - self.max_lag:
            return reject(Reason.STALE_ROUND, f"round {rnd} is before the window (current {current_round})")
        if rnd > current_round + self.max_lead:
            return reject(Reason.FUTURE_ROUND, f"round {rnd} is beyond the window (current {current_round})")
        if (sender, rnd) in seen:
            return reject(Reason.REPLAY, _REPLAY_DETAIL.format(rnd))
        if not self.authentic(env):
            return reject(Reason.BAD_SIGNATURE, "signature does not verify with the sender's key")
        before = self.witnessed.get(sender, 0.0) if self.witnessed is not None else 0.0
        if h["eps"] < before:  # signed, so the sender itself claims the lower budget
            return Rejected(Reason.PRIVACY_ROLLBACK, f"epsilon {h['eps']:.6g} after {before:.6g} from this sender "
                            "(its privacy ledger went back)", sender, rnd, env, authenticated=True)
        return env

    def finish(self, env: Envelope) -> Accepted | Rejected:
        """The payload checks of an envelope that `screen` returned (its sender is proven)."""
        h = env.header

        def reject(reason: Reason, detail: str) -> Rejected:
            return Rejected(reason, detail, env.sender, env.round, env, authenticated=True)

        masked = self.masked_words is not None
        if (h["kind"] == "masked") != masked:
            why = ("this peer aggregates securely and takes masked contributions only" if masked else
                   "this peer takes plain updates only (its rule is not secure_mean)")
            return reject(Reason.WRONG_KIND, f"kind {h['kind']!r:.20}: {why}")
        n = self.masked_words if masked else self.n_params
        if h["schema"] != self.schema or h["n"] != n:
            return reject(Reason.SCHEMA_MISMATCH, f"schema {h['schema'].hex()[:12]}.. with {h['n']} values, "
                                                  f"expected {self.schema.hex()[:12]}.. with {n}")
        if (h["codec"] in WORD_CODECS) != masked:
            return reject(Reason.WRONG_KIND, f"codec {h['codec']} does not carry a {h['kind']}")
        if payload_digest(env.payload) != h["payload_hash"]:
            return reject(Reason.PAYLOAD_HASH_MISMATCH, "payload does not match its signed hash")
        try:
            params = decode_payload(env)
        except CodecError as exc:  # parse checked the size; kept as a guard
            return reject(Reason.MALFORMED, str(exc))
        if masked:  # words, not values: any bit pattern is valid
            return Accepted(env, params)
        lo, hi = torch.aminmax(params) if params.numel() else (torch.zeros(()), torch.zeros(()))
        if not (bool(torch.isfinite(lo)) and bool(torch.isfinite(hi))):  # NaN and Inf propagate
            return reject(Reason.NON_FINITE, "payload holds NaN or Inf")
        return Accepted(env, params)

    def verify(self, data: object, current_round: int,
               seen: Container[tuple[str, int]] = ()) -> Accepted | Rejected:
        """`screen` then `finish` (the caller records what it accepts in its replay window)."""
        screened = self.screen(data, current_round, seen)
        return screened if isinstance(screened, Rejected) else self.finish(screened)

    @staticmethod
    def authentic(env: Envelope) -> bool:
        """Whether the envelope's signature verifies with the key inside its sender's PeerId."""
        try:
            public_key_of(env.sender)
        except PeerIdError:
            return False
        return verify_signature(env.sender, env.sig, env.digest)
