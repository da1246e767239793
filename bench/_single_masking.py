"""The single-masking secure aggregation that secure_mean used before double masking (issue 22),
kept here only as the baseline of bench/secagg.py: the same arithmetic and cryptography per
member and receiver (a static X25519 key per peer derived from its identity, one HKDF pair
seed per other member, a ChaCha20 stream per pair, commitments to the seeds; on a drop-out a
signed reveal of the seeds towards the missing member). Not used by any peer: it is what
double masking replaced, because a late message, a lying receiver or a restart exposed
updates (the README's "Privacy" says how).
"""

from __future__ import annotations

import hashlib

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gossip.identity import verify_signature
from privacy.masking import FixedPoint, Keystream, apply_mask, length_prefixed, mask_sign

DOMAIN_AGREEMENT = b"gossipfl/secagg/x25519-key/v1\x00"
DOMAIN_SEED = b"gossipfl/secagg/pair-seed/v1\x00"
DOMAIN_COMMIT = b"gossipfl/secagg/commitment/v1\x00"
DOMAIN_REVEAL = b"gossipfl/secagg/reveal/v1\x00"


def agreement_key(identity) -> X25519PrivateKey:
    raw = HKDF(algorithm=hashes.SHA256(), length=32, salt=DOMAIN_AGREEMENT, info=b"x25519").derive(identity.seed)
    return X25519PrivateKey.from_private_bytes(raw)


def public_bytes(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def pair_seed(key: X25519PrivateKey, me: str, other: str, other_pub: bytes, receiver: str, rnd: int,
              net: str) -> bytes:
    shared = key.exchange(X25519PublicKey.from_public_bytes(other_pub))
    a, b = sorted((me, other))
    info = DOMAIN_SEED + length_prefixed(a) + length_prefixed(b) + length_prefixed(receiver) + rnd.to_bytes(8, "big")
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=net.encode(), info=info).derive(shared)


def commitment(seed: bytes) -> bytes:
    return hashlib.sha256(DOMAIN_COMMIT + seed).digest()


def masked_payload(x, me, receiver, group, rnd, net, key, pubs, fp: FixedPoint) -> bytes:
    """tag | one commitment per other member | enc(x) + the pair masks, as the old wire sent it."""
    others = [k for k in sorted(group) if k != me]
    seeds = {k: pair_seed(key, me, k, pubs[k], receiver, rnd, net) for k in others}
    y = fp.encode(x).copy()
    stream = Keystream(y.size)
    for k in others:
        apply_mask(y, stream(seeds[k]), mask_sign(me, k))
    tag = hashlib.sha256(length_prefixed(net) + length_prefixed(me) + length_prefixed(receiver)
                         + rnd.to_bytes(8, "big")).digest()
    return tag + b"".join(commitment(seeds[k]) for k in others) + y.astype("<u4").tobytes()


def opened(payload: bytes, group_size: int) -> tuple[list[bytes], np.ndarray]:
    start = 32 + 32 * (group_size - 1)
    commits = [payload[32 + 32 * i: 64 + 32 * i] for i in range(group_size - 1)]
    return commits, np.frombuffer(payload, "<u4", offset=start)


def reveal(identity, key, receiver, rnd, missing, net, pubs) -> tuple[bytes, bytes]:
    """The seeds towards the missing members and the member's signature over them."""
    seeds = b"".join(pair_seed(key, identity.peer_id, k, pubs[k], receiver, rnd, net) for k in missing)
    return seeds, identity.sign(hashlib.sha256(DOMAIN_REVEAL + seeds).digest())


def unmask(payloads: dict[str, bytes], reveals: dict[str, tuple[bytes, bytes]], group, missing, fp: FixedPoint):
    members = sorted(group)
    parts = {j: opened(p, len(members)) for j, p in payloads.items()}
    senders = sorted(payloads)
    for i, j in enumerate(senders):  # both ends of each delivered pair committed to one seed
        for k in senders[i + 1:]:
            cj = parts[j][0][[m for m in members if m != j].index(k)]
            ck = parts[k][0][[m for m in members if m != k].index(j)]
            assert cj == ck
    total = np.zeros(parts[senders[0]][1].size, dtype=np.uint32)
    for j in senders:
        np.add(total, parts[j][1], out=total)
    stream = Keystream(total.size)
    for j, (seeds, sig) in reveals.items():
        assert verify_signature(j, sig, hashlib.sha256(DOMAIN_REVEAL + seeds).digest())
        for i, k in enumerate(missing):
            seed = seeds[32 * i: 32 * i + 32]
            assert commitment(seed) == parts[j][0][[m for m in members if m != j].index(k)]
            apply_mask(total, stream(seed), -mask_sign(j, k))
    return fp.decode(total, len(senders))
