"""Secure aggregation among neighbours (`secure_mean`): the SINGLE-MASKING core (superseded).

Superseded by double masking (privacy.secagg, privacy.secagg_member, privacy.secagg_receiver,
privacy.secagg_wire), which closes the three exposures of issue 22 that this design has (a late
contribution, a receiver that sends different requests to different members, a restart that
masks again with the same seeds). This module stays only until the peer (peer.secure_round,
peer.round, peer.plan) is rewired to the new core; then it and privacy.secure_wire go, and the
trust list's X25519 keys and bindings with them. Its fixed point and PRG live in
privacy.masking, shared with the new core.

A receiver i learns, each round r, the sum of its neighbours' updates and nothing about any
single one. Everything here is pure computation on bytes and arrays: no sockets, no clock,
no files; the peer carries the messages (privacy.secure_wire) and keeps the round state.

Protocol, for receiver i and round r. The group G = N(i) is i's neighbourhood in the plan
(i itself is not in G); every member knows G, and every member's X25519 public key with its
binding to the member's PeerId (`key_binding` / `check_binding`).

1. Keys. A peer's X25519 key is derived from its Ed25519 identity seed (`agreement_key`,
   HKDF with its own domain): one key file per peer, the agreement key never leaves memory.
   The peer signs a binding of the X25519 public key to its PeerId and network with its
   Ed25519 key, so the plan / trust list can carry it and anyone can check it.
2. Pair seeds. For members j, k of G: seed_jk^{i,r} = HKDF-SHA256(X25519(j, k),
   salt=network, info=DOMAIN | sorted(j, k) | i | r), 32 bytes. Symmetric in j and k, and a
   fresh seed for every receiver and round: revealing one exposes no other.
3. Masked contribution. j sends i
       y_j = enc(x_j) + sum_{k in G, k != j} s(j, k) * PRG(seed_jk^{i,r})   (mod 2^32)
   with s(j, k) = +1 if j < k (string order of PeerIds) else -1, enc the fixed-point encoding
   (`FixedPoint`: clip to [-bound, bound], scale by a power of two such that |G| such values
   never wrap), and PRG the ChaCha20 keystream read as little-endian uint32. Over all of G the
   masks cancel pairwise. With y_j travel j's commitments SHA-256(DOMAIN | seed_jk) to each seed
   it used, so every later reveal can be checked.
4. Drop-outs. i received from D subset of G; M = G \\ D. If M is empty, the sum of the y_j is
   the sum of the enc(x_j). Otherwise i sends each j in D one signed RevealRequest(D, M) and j
   answers with seed_jk^{i,r} for each k in M (`reveal_seeds`), after checking the request
   against `may_reveal`: j is in D, D and M partition G, |D| >= MIN_SENDERS, and j has not
   answered i for round r before (a second request with another M would peel off more masks).
   i checks every revealed seed against j's commitment, checks that the commitments of every
   pair in D agree, and removes the masks towards M (`unmask`). The sum over D is exact up to
   the fixed-point rounding (`FixedPoint.error`).

Late messages. Once i has asked for reveals in round r, a masked contribution of round r from
a member of M is dropped with reason "late_after_reveal" (`late_reason`): its masks towards D
have all been revealed, so unmasking it would expose that one update; and it is not needed,
since the sum over D is already exact. (A member of D delivered before the request by
definition.) A late contribution that arrives before i asks for reveals is simply in D.

Duties of the peer that carries this (not checkable here):
- G is i's neighbourhood as of the round's start (plan and membership epoch); members with
  another view refuse i's request as "not_a_partition" and that round is not unmasked.
- Every receiver needs |G| >= 2 (a group of one hides nothing; refused), and |G| >= 3 to
  survive one drop-out (|D| >= MIN_SENDERS).
- A member's memory of the (receiver, round) pairs it answered must survive restarts (log a
  provenance event per reveal and reload it, or refuse requests for rounds up to the one
  it restarted in); otherwise a receiver could ask twice across a restart.
- A failed unmask (MaskError) is not retried: a second request for the round is refused,
  so the receiver logs the error with who to blame and goes on without its neighbours'
  sum that round.
- The receiver's own update is not masked (it knows it): secure_mean is
  (x_i + sum over D) / (1 + |D|).

Threat model, honestly. Receivers and members are honest but curious: they follow the
protocol and study what they receive. Under that model i learns only the sum over D, with
|D| >= 2, and a member learns nothing about another member's update (it never sees y_k).
Not covered:
- A receiver that lies about drop-outs (declares delivered members missing) gets their
  masks revealed by the others and can learn an update that reached it. Its signed
  RevealRequest is evidence of the lie (the member's log shows it sent), but nothing
  prevents it. Bonawitz et al. (CCS 2017) prevent it with double masking: each member adds a
  second, self mask whose seed is secret-shared among the group, and the honest members
  reveal for each member either its self-mask share or its pair-mask shares, never both.
  That is not built.
- Collusion: i colluding with all of G but one member learns that member's update (inherent
  in any sum); i colluding with some members learns the sum of the others.
- Integrity: a member can send any x it likes within [-bound, bound] (secure aggregation
  hides updates, so robust rules that need each update cannot run; the configuration
  refuses to combine them) or reveal a wrong seed it also committed to (a wrong sum, not a
  leak). A wrong reveal against an honest commitment, or commitments of a pair that disagree,
  are detected and reported with who (`MaskError`).
- Confidentiality on the wire is the transport's job (libp2p Noise; MQTT over TLS with
  per-peer ACLs): an eavesdropper who sees both y_j and j's reveals has i's view.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gossip.identity import Identity, verify_signature

# FixedPoint, prg and length_prefixed are re-exported for the callers of this module.
from .masking import FixedPoint, Keystream, length_prefixed, mask_sign, prg  # noqa: F401
from .masking import apply_mask as _apply

DOMAIN_AGREEMENT = b"gossipfl/secagg/x25519-key/v1\x00"
DOMAIN_BINDING = b"gossipfl/secagg/x25519-binding/v1\x00"
DOMAIN_SEED = b"gossipfl/secagg/pair-seed/v1\x00"
DOMAIN_COMMIT = b"gossipfl/secagg/commitment/v1\x00"
SEED_LEN = 32
COMMITMENT_LEN = 32
X25519_LEN = 32
BINDING_LEN = 64  # an Ed25519 signature
MIN_SENDERS = 2  # a receiver never learns fewer than this many updates summed
MAX_ROUND = (1 << 64) - 1
LATE_AFTER_REVEAL = "late_after_reveal"


class MaskError(Exception):
    """Unmasking failed because of what members sent. `reason` is a short code for logs and
    metrics; `who` names the member or pair (sorted PeerIds) to blame."""

    def __init__(self, reason: str, who: tuple[str, ...], detail: str = ""):
        self.reason, self.who = reason, tuple(who)
        names = ", ".join(w[:16] for w in self.who)
        super().__init__(f"{reason} ({names})" + (f": {detail}" if detail else ""))


# --- keys -----------------------------------------------------------------------------------


def agreement_key(identity: Identity) -> X25519PrivateKey:
    """The peer's X25519 key, derived from its Ed25519 identity seed (HKDF with a domain of its
    own, so the two keys are independent; no second key file)."""
    raw = HKDF(algorithm=hashes.SHA256(), length=32, salt=DOMAIN_AGREEMENT, info=b"x25519").derive(identity.seed)
    return X25519PrivateKey.from_private_bytes(raw)


def public_bytes(key: X25519PrivateKey) -> bytes:
    """The 32 raw bytes of an X25519 key's public half (what the plan distributes)."""
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def _binding_message(network: str, peer_id: str, x25519_pub: bytes) -> bytes:
    return DOMAIN_BINDING + length_prefixed(network) + length_prefixed(peer_id) + bytes(x25519_pub)


def key_binding(identity: Identity, network: str) -> bytes:
    """The peer's Ed25519 signature binding its X25519 public key to its PeerId in `network`."""
    pub = public_bytes(agreement_key(identity))
    return identity.sign(_binding_message(network, identity.peer_id, pub))


def check_binding(peer_id: str, network: str, x25519_pub: bytes, binding: bytes) -> bool:
    """True if `binding` is `peer_id`'s signature over its X25519 key `x25519_pub` in `network`
    (the Ed25519 key is the one inside the PeerId)."""
    if not isinstance(x25519_pub, bytes | bytearray) or len(x25519_pub) != X25519_LEN:
        return False
    if not isinstance(binding, bytes | bytearray) or len(binding) != BINDING_LEN:
        return False
    try:
        message = _binding_message(network, peer_id, bytes(x25519_pub))
    except (ValueError, AttributeError):
        return False
    return verify_signature(peer_id, bytes(binding), message)


# --- seeds, commitments, the PRG -------------------------------------------------------------


def pair_seed(my_key: X25519PrivateKey, me: str, other: str, other_pub: bytes, receiver: str, round: int,
              network: str) -> bytes:
    """seed_{me,other}^{receiver,round}: the same bytes at both ends of the pair."""
    if not 0 <= round <= MAX_ROUND:
        raise ValueError(f"round must be in [0, 2**64), got {round}")
    try:
        shared = my_key.exchange(X25519PublicKey.from_public_bytes(bytes(other_pub)))
    except ValueError as exc:  # wrong length, or a low-order point (an all-zero secret)
        raise MaskError("bad_agreement_key", (other,), str(exc)) from None
    a, b = sorted((me, other))
    info = b"".join((DOMAIN_SEED, length_prefixed(a), length_prefixed(b), length_prefixed(receiver),
                     round.to_bytes(8, "big")))
    return HKDF(algorithm=hashes.SHA256(), length=SEED_LEN, salt=network.encode("utf-8"), info=info).derive(shared)


def commitment(seed: bytes) -> bytes:
    """SHA-256(DOMAIN | seed): binds a member to a seed without revealing it (a seed has 256
    bits of entropy, so the hash hides it)."""
    return hashlib.sha256(DOMAIN_COMMIT + bytes(seed)).digest()


# --- members: masking and revealing ---------------------------------------------------------


@dataclass(frozen=True)
class Contribution:
    """A masked contribution: the uint32 vector y_j, and j's commitment to each pair seed it
    used, keyed by the other member."""

    payload: np.ndarray = field(repr=False)
    commitments: Mapping[str, bytes]


def _group(group: Iterable[str], me: str | None = None, receiver: str | None = None) -> tuple[str, ...]:
    members = tuple(sorted(group))
    if len(set(members)) != len(members):
        raise ValueError("the group lists a member twice")
    if len(members) < MIN_SENDERS:
        raise ValueError(f"a group of {len(members)} hides nothing: secure aggregation needs >= {MIN_SENDERS}")
    if me is not None and me not in members:
        raise ValueError(f"{me:.16} is not a member of the group")
    if receiver is not None and receiver in members:
        raise ValueError(f"the receiver {receiver:.16} cannot be a member of its own group")
    return members


def _seeds(me, receiver, round, others, network, my_key, pubs: Mapping[str, bytes]) -> dict[str, bytes]:
    missing = [k for k in others if k not in pubs]
    if missing:
        raise MaskError("no_agreement_key", tuple(missing), "no X25519 key known for these members")
    return {k: pair_seed(my_key, me, k, pubs[k], receiver, round, network) for k in others}


def masked_contribution(x, me: str, receiver: str, group: Iterable[str], round: int, network: str,
                        my_agreement_key: X25519PrivateKey, member_x25519_pubs: Mapping[str, bytes],
                        fp: FixedPoint) -> Contribution:
    """y_me = enc(x) + sum over the other members k of s(me, k) * PRG(seed_{me,k}^{receiver,round}),
    with the commitments to those seeds. `member_x25519_pubs` must hold every other member's
    key (checked against its binding by the caller, once, when the plan is loaded)."""
    members = _group(group, me, receiver)
    if fp.count != len(members):
        raise ValueError(f"the fixed point's count is {fp.count}, the group has {len(members)} members")
    others = [k for k in members if k != me]
    seeds = _seeds(me, receiver, round, others, network, my_agreement_key, member_x25519_pubs)
    y = fp.encode(x).copy()
    stream = Keystream(y.size)
    for k in others:
        _apply(y, stream(seeds[k]), mask_sign(me, k))
    return Contribution(y, {k: commitment(seeds[k]) for k in others})


def reveal_seeds(me: str, receiver: str, round: int, missing: Iterable[str], network: str,
                 my_agreement_key: X25519PrivateKey, member_x25519_pubs: Mapping[str, bytes]) -> dict[str, bytes]:
    """The pair seeds me used towards each missing member, for this receiver and round only.
    Call it only after `may_reveal` allowed the request."""
    missing = sorted(missing)
    if me in missing or receiver in missing:
        raise ValueError("a member reveals seeds towards other members only")
    return _seeds(me, receiver, round, missing, network, my_agreement_key, member_x25519_pubs)


def may_reveal(request, me: str, group: Iterable[str], already_revealed: Collection[tuple[str, int]],
               min_senders: int = MIN_SENDERS) -> tuple[bool, str]:
    """Whether member `me` answers `request` (anything with .sender, the receiver i; .round;
    .delivered; .missing), given the receiver's group as `me` knows it from the plan and the
    (receiver, round) pairs it has already answered. (True, "ok") or (False, reason)."""
    members = set(group)
    delivered, missing = list(request.delivered), list(request.missing)
    if me not in members or request.sender in members or me == request.sender:
        return False, "not_a_member"
    if (request.sender, request.round) in already_revealed:
        return False, "already_revealed"
    d, m = set(delivered), set(missing)
    if len(d) != len(delivered) or len(m) != len(missing) or d & m or d | m != members:
        return False, "not_a_partition"
    if me not in d:
        return False, "not_delivered"
    if not m:
        return False, "nothing_missing"
    if len(d) < min_senders:
        return False, "too_few_delivered"
    return True, "ok"


def late_reason(sender: str, requested_missing: Collection[str] | None) -> str | None:
    """Why a masked contribution from `sender` must be dropped at the receiver: once reveals
    were requested with `requested_missing` (None: not requested), a member declared missing
    is never unmasked. None if it may be used."""
    if requested_missing is not None and sender in requested_missing:
        return LATE_AFTER_REVEAL
    return None


# --- the receiver: unmasking ----------------------------------------------------------------


def check_commitments(contributions: Mapping[str, Contribution], group: Iterable[str]) -> None:
    """Each contribution commits to exactly one seed per other member, and both ends of every
    delivered pair committed to the same seed (else MaskError naming the pair: one of them
    masked for another receiver, round or network, or with a wrong key)."""
    members = set(group)
    for j, c in contributions.items():
        if set(c.commitments) != members - {j}:
            raise MaskError("bad_commitments", (j,), "not one commitment per other member of the group")
        if any(len(v) != COMMITMENT_LEN for v in c.commitments.values()):
            raise MaskError("bad_commitments", (j,), f"a commitment is not {COMMITMENT_LEN} bytes")
    senders = sorted(contributions)
    for a_i, j in enumerate(senders):
        for k in senders[a_i + 1:]:
            if contributions[j].commitments[k] != contributions[k].commitments[j]:
                raise MaskError("inconsistent_commitments", (j, k), "the pair did not mask with the same seed")


def unmask(contributions: Mapping[str, Contribution], reveals: Mapping[str, Mapping[str, bytes]],
           group: Iterable[str], fp: FixedPoint, min_senders: int = MIN_SENDERS):
    """The float32 sum of the updates of the members that delivered (the keys of
    `contributions`), given each one's revealed seeds towards the members that did not
    (`reveals[j][k]`; entries of non-delivered members are ignored). Raises MaskError naming
    who when a contribution or a reveal does not check out."""
    members = _group(group)
    if fp.count != len(members):
        raise ValueError(f"the fixed point's count is {fp.count}, the group has {len(members)} members")
    outsiders = sorted(set(contributions) - set(members))
    if outsiders:
        raise MaskError("not_a_member", tuple(outsiders))
    delivered = sorted(contributions)
    if len(delivered) < min_senders:
        raise MaskError("too_few_senders", tuple(delivered), f"{len(delivered)} < {min_senders}")
    missing = [k for k in members if k not in contributions]
    d = contributions[delivered[0]].payload.size
    for j in delivered:
        p = contributions[j].payload
        if p.dtype != np.uint32 or p.ndim != 1 or p.size != d:
            raise MaskError("bad_payload", (j,), f"expected {d} uint32 values")
    check_commitments(contributions, members)
    total = np.zeros(d, dtype=np.uint32)
    for j in delivered:
        np.add(total, contributions[j].payload, out=total)
    if missing:
        stream = Keystream(d)
        for j in delivered:
            seeds = reveals.get(j, {})
            extra = sorted(set(seeds) - set(missing))
            if extra:
                raise MaskError("unexpected_reveal", (j,), "seeds towards members that delivered")
            for k in missing:
                if k not in seeds:
                    raise MaskError("missing_reveal", (j,), f"no seed towards {k:.16}")
                seed = bytes(seeds[k])
                if len(seed) != SEED_LEN or commitment(seed) != contributions[j].commitments[k]:
                    raise MaskError("wrong_reveal", (j,), f"the seed towards {k:.16} does not match the commitment")
                _apply(total, stream(seed), -mask_sign(j, k))
    return fp.decode(total, len(delivered))
