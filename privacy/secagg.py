"""Secure aggregation by double masking over a receiver's neighbourhood (`secure_mean`), after
Bonawitz et al., CCS 2017 (with its active-security consistency round) and SecAgg+ (Bell et
al., CCS 2020): the shared definitions, the key derivations and the threat model.

Pure: no sockets, clocks, files or asyncio. The member's side is privacy.secagg_member, the
receiver's privacy.secagg_receiver, the messages privacy.secagg_wire; the peer carries bytes
between them and persists the member's ledger.

The protocol, for receiver i, round r, group G = N(i) (i not in G, n = |G| >= 2), threshold t
(`default_threshold`). Every message is signed by its sender's Ed25519 identity and names
(network, receiver, round, sender); from the key book on, it also names the book's digest
(the session id), so nothing of one session is accepted in another.

 1. Keys (ADVERT, BOOK). Each member j draws two fresh X25519 key pairs for this (receiver,
    round) from its random source: c_j (to encrypt shares) and s_j (for pair masks), and signs
    (network, i, r, c_pub_j, s_pub_j). i collects the adverts of U1 subset of G (|U1| >= t) and
    sends every member of U1 the same signed BOOK: t, i's own fresh c_pub (to encrypt
    reveals), and the members' signed adverts. A member checks every advert's signature
    against the PeerIds of G, that its own entry is the one it made, that t is at least
    `default_threshold(n)`, and accepts one book per (receiver, round).
 2. Shares (DEAL, FORWARD). j draws a self-mask seed b_j (32 bytes) and Shamir-shares b_j and
    the 32 bytes of s_j's private key among U1 with threshold t (holder k at x = 1 + k's
    position in sorted G). k's pair of shares is encrypted with ChaCha20-Poly1305 under
    HKDF(X25519(c_j, c_k)) bound to (network, i, r, book, j, k) and signed by j with
    commitments SHA-256(domain | context | share) to each share; the DEAL also carries a
    commitment to b_j. i cannot read the shares. i forwards to each k of U2 (the dealers,
    |U2| >= t) the boxes addressed to it; k opens each box (its key derives from j's signed
    c_pub, so a box that opens is j's) and checks the shares against the commitments; for a box
    that fails, j's signature on it says who is to blame (valid: j cheated; not: i tampered).
 3. Masked input. j sends, in an envelope of kind "masked",
        y_j = enc(x_j) + PRG(b_j) + sum over k in U2 \\ {j} of s(j, k) * PRG(seed_jk)  (mod 2^32)
    with seed_jk = HKDF(X25519(s_j, s_k)) bound to (network, i, r, sorted pair), s(j, k) = +1
    if j sorts first else -1, enc the fixed point and PRG ChaCha20 (privacy.masking). The
    payload starts with a tag binding (network, j, i, r, book): no model id rides along.
 4. Survivors (SURVIVORS, CONSENT, PROOF). i names U subset of U2 (the members whose masked
    input arrived, |U| >= t) in one signed message. Each member of U signs (network, i, r,
    book, U) - once per session, never a second set. i forwards the signatures to the signers
    in a PROOF; a member reveals only after checking at least t valid signatures, from
    distinct members of U, on exactly the U it signed.
 5. Unmasking (REVEAL). A member reveals, encrypted to i's c_pub, its share of b_k for each k
    in U and its share of s_k for each k in U2 \\ U, and never both for one member: its
    ledger remembers the set it signed and what it revealed, and survives restarts. i checks
    each share against the dealer's commitment (a bad one: the revealer lied), reconstructs
    b_k (k in U) and s_k (k dropped) from t shares, checks them against the DEAL's commitment
    and the BOOK's s_pub (a mismatch: the dealer cheated), removes PRG(b_k) and the dropped
    members' pair masks, and decodes sum over U of x_k (exact up to the fixed-point rounding).
    A masked input that arrives after U was fixed is refused as late; it could not be
    unmasked anyway: its self-mask seed is never revealed.

The threshold. t = max(2, floor(n/2) + 1) by default; a receiver may ask for more (up to n,
said in the signed book; a peer's aggregation.params.threshold = "two_thirds") and members refuse
less. It means:
- dropouts: up to n - t members may drop out, at any phase and in total, and the sum over
  the survivors is still recovered; with more, the round fails for that receiver (it names
  who did not answer and keeps its own model).
- privacy: the shares of a secret held by fewer than t members say nothing about it.
- the survivor set is one set: two different sets each signed by t members of themselves
  would need 2t - n - c honest members to sign twice (c colluding members sign anything);
  honest members sign once, so a lying receiver with c < 2t - n colluding members cannot
  make some members reveal b_k and others s_k. With the default t that is c = 0 for odd n
  and c <= 1 for even n; a configured t = floor(2n/3) + 1 gives c < n/3 (Bonawitz et al.'s
  active-security choice) at the price of fewer dropouts.

Threat model (what each party learns), for honest members running this code:
- A curious receiver (follows the protocol, studies what it gets): sum over U of x_k for a
  survivor set U of at least t >= 2 members, U itself and who dropped at which phase, and the
  message sizes. Nothing about one update: each masked input hides behind PRG(b_k), revealed
  only as part of the sum, and behind pair masks whose seeds it never gets for survivors. A
  late contribution (after U was fixed) stays masked by PRG(b_k) forever.
- A lying receiver (drops, delays, reorders, forges its own messages, tells members different
  things): cannot substitute a member's keys (adverts are signed; the book entry fails and
  every member names the receiver), cannot read shares (encrypted to members' fresh keys),
  cannot get both kinds of shares of one member (one signed survivor set, above), cannot run
  a second session for a (receiver, round) or an older round (members' ledgers refuse it), so
  it never gets two sums of one round's updates over different subsets. It chooses U: it
  learns the sum over any subset of at least t members that delivered, never less. It can
  make the round fail (every honest member refuses with a reason naming it).
- t - 1 or fewer members colluding with a curious receiver: the sum over the honest members
  of U (inherent: they can subtract their own). With a lying receiver, c colluders can
  choose U = {k} plus c others: if c >= t - 1 that exposes k's update; so the guarantee
  against a lying receiver is c <= min(t - 2, 2t - n - 1) colluders.
- Other members, not colluding: nothing about other updates (fewer than t shares of each
  secret, encrypted to them; no masked input of another member ever reaches them).
- The MQTT broker and a passive observer of plaintext traffic: message sizes, timing, who
  talks to whom, the keys' public halves, U and the consents - no update and no sum: shares
  are encrypted to members, reveals to the receiver's fresh key, and masked inputs are masked
  by PRG(b_k), whose shares they never see in clear. On libp2p (Noise) an observer sees only
  sizes and timing. They can delay or drop messages (which only makes members drop out).
- Between receivers: each receiver learns its own neighbourhood's sum. Receivers that
  collude (or one peer that is several receivers' neighbour and colludes with them) combine
  sums of overlapping neighbourhoods: sums of groups that differ by one member give that
  member's update, and in a complete graph the n sums determine every update. That is
  inherent in summing per neighbourhood; this protocol does not protect against it.
- Across rounds: each round's sum is over that round's updates. A member opens a session only
  for its own current round (it sends the advert when its model of round r is ready), so a
  receiver cannot get one model summed twice by asking for another round; but a member whose
  model did not change between two rounds (no training) must not contribute it again, or sums
  over different survivor sets in the two rounds would differ by single members' updates.
- Integrity is not protected: a member may mask any value within the bound, or mask
  inconsistently, and so shift the sum by up to n * bound per coordinate undetected (secure
  aggregation hides exactly what robust rules would need to see). Bad shares, bad
  signatures and substituted keys are detected and blamed by name (`SecAggError.who`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from gossip.envelope import MAX_NETWORK_ID_LEN
from gossip.errors import PeerIdError
from gossip.identity import check_peer_id

from .masking import length_prefixed

Random = Callable[[int], bytes]
MAX_MEMBERS = 256  # as many as a membership record's neighbours
MAX_ROUND = (1 << 64) - 1
KEY_LEN = HASH_LEN = 32
SIG_LEN = 64
TAG_LEN = 32  # the masked payload's context tag
_DOMAIN = b"gossipfl/secagg2/"
DOMAIN_SHARE_KEY = _DOMAIN + b"share-key\x00"
DOMAIN_REVEAL_KEY = _DOMAIN + b"reveal-key\x00"
DOMAIN_PAIR_SEED = _DOMAIN + b"pair-seed\x00"
DOMAIN_SHARE_COMMIT = _DOMAIN + b"share-commitment\x00"
DOMAIN_SECRET_COMMIT = _DOMAIN + b"secret-commitment\x00"
DOMAIN_TAG = _DOMAIN + b"masked-input\x00"
DOMAIN_LINEAGE = _DOMAIN + b"lineage\x00"
_ZERO_NONCE = bytes(12)


class SecAggError(Exception):
    """A step of secure aggregation refused or failed. `reason` is a short code for logs and
    metrics; `who` names the peers to blame (empty when the bytes are not authenticated yet:
    blame the transport's sender then); `detail` says what was wrong."""

    def __init__(self, reason: str, who: Iterable[str] = (), detail: str = ""):
        self.reason, self.who, self.detail = reason, tuple(who), detail
        names = ", ".join(w[:16] for w in self.who)
        super().__init__(reason + (f" ({names})" if names else "") + (f": {detail}" if detail else ""))


def default_threshold(n: int) -> int:
    """t for a group of n: a strict majority, at least 2 (see the module docstring)."""
    return max(2, n // 2 + 1)


def check_threshold(t: int, n: int) -> None:
    """ValueError unless default_threshold(n) <= t <= n."""
    if isinstance(t, bool) or not isinstance(t, int) or not default_threshold(n) <= t <= n:
        raise ValueError(f"the threshold must be an integer in [{default_threshold(n)}, {n}] for a group of {n}, "
                         f"got {t!r}")


@dataclass(frozen=True)
class Context:
    """Who and when: the network, the receiver i, the round r and i's group G (sorted)."""

    network: str
    receiver: str
    round: int
    group: tuple[str, ...]
    _x: dict[str, int] = field(init=False, repr=False, compare=False)  # member -> Shamir x
    _binding: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if not isinstance(self.network, str) or not 0 < len(self.network.encode("utf-8")) <= MAX_NETWORK_ID_LEN:
            raise ValueError(f"the network id must be 1 to {MAX_NETWORK_ID_LEN} bytes of UTF-8")
        if isinstance(self.round, bool) or not isinstance(self.round, int) or not 0 <= self.round <= MAX_ROUND:
            raise ValueError(f"round must be an integer in [0, 2**64), got {self.round!r}")
        group = tuple(sorted(self.group))
        try:
            for pid in (self.receiver, *group):
                check_peer_id(pid)
        except PeerIdError as exc:
            raise ValueError(f"the receiver and group must be PeerIds: {exc}") from None
        if len(set(group)) != len(group):
            raise ValueError("the group lists a member twice")
        if not 2 <= len(group) <= MAX_MEMBERS:
            raise ValueError(f"a group has 2 to {MAX_MEMBERS} members (one alone hides nothing), got {len(group)}")
        if self.receiver in group:
            raise ValueError(f"the receiver {self.receiver:.16} cannot be a member of its own group")
        object.__setattr__(self, "group", group)
        object.__setattr__(self, "_x", {pid: i + 1 for i, pid in enumerate(group)})
        object.__setattr__(self, "_binding", length_prefixed(self.network) + length_prefixed(self.receiver)
                           + self.round.to_bytes(8, "big"))

    @property
    def n(self) -> int:
        return len(self.group)

    def x(self, member: str) -> int:
        """The member's Shamir x-coordinate: 1 + its position in the sorted group."""
        return self._x[member]

    def binding(self, book: bytes = b"") -> bytes:
        """(network, receiver, round[, book digest]) as unambiguous bytes for hashes and HKDF."""
        return self._binding + bytes(book)


# --- keys and derivations --------------------------------------------------------------------


def fresh_key(random: Random = os.urandom) -> X25519PrivateKey:
    """An ephemeral X25519 key from 32 bytes of the random source."""
    raw = random(KEY_LEN)
    if len(raw) != KEY_LEN:
        raise ValueError(f"the random source gave {len(raw)} bytes, {KEY_LEN} asked")
    return X25519PrivateKey.from_private_bytes(bytes(raw))


def public_raw(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def private_raw(key: X25519PrivateKey) -> bytes:
    return key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


def exchange(key: X25519PrivateKey, pub: bytes, owner: str) -> bytes:
    """X25519(key, pub); SecAggError naming `owner` (whose public key it is) if pub is unusable."""
    try:
        return key.exchange(X25519PublicKey.from_public_bytes(bytes(pub)))
    except ValueError as exc:  # a low-order point: an all-zero shared secret
        raise SecAggError("bad_key", (owner,), f"its X25519 key is unusable: {exc}") from None


def _hkdf(secret: bytes, domain: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_LEN, salt=domain, info=info).derive(secret)


def share_key(ctx: Context, book: bytes, my_c: X25519PrivateKey, their_c_pub: bytes, dealer: str, holder: str,
              owner: str, shared: bytes | None = None) -> bytes:
    """The AEAD key of dealer's shares for holder (the same at both ends; `owner` is the peer
    whose public key is used, blamed if it is unusable; `shared`: the X25519 result if known)."""
    if shared is None:
        shared = exchange(my_c, their_c_pub, owner)
    return _hkdf(shared, DOMAIN_SHARE_KEY, ctx.binding(book) + length_prefixed(dealer) + length_prefixed(holder))


def reveal_key(ctx: Context, book: bytes, my_c: X25519PrivateKey, their_c_pub: bytes, member: str,
               owner: str) -> bytes:
    """The AEAD key of member's reveal to the receiver (X25519 of member's c and the receiver's)."""
    shared = exchange(my_c, their_c_pub, owner)
    return _hkdf(shared, DOMAIN_REVEAL_KEY, ctx.binding(book) + length_prefixed(member))


def pair_seed(ctx: Context, my_s: X25519PrivateKey, their_s_pub: bytes, me: str, other: str) -> bytes:
    """seed_{me,other}: the same 32 bytes at both ends of the pair, for this receiver and round."""
    shared = exchange(my_s, their_s_pub, other)
    a, b = sorted((me, other))
    return _hkdf(shared, DOMAIN_PAIR_SEED, ctx.binding() + length_prefixed(a) + length_prefixed(b))


def seal(key: bytes, plaintext: bytes, aad: bytes, nonce: bytes = _ZERO_NONCE) -> bytes:
    """ChaCha20-Poly1305 (a key is used for one message, or with distinct nonces)."""
    return ChaCha20Poly1305(key).encrypt(nonce, plaintext, aad)


def unseal(key: bytes, ciphertext: bytes, aad: bytes, nonce: bytes = _ZERO_NONCE) -> bytes | None:
    """The plaintext, or None if the ciphertext or its context was altered."""
    try:
        return ChaCha20Poly1305(key).decrypt(nonce, bytes(ciphertext), aad)
    except InvalidTag:
        return None


def reveal_nonce(which: str, x: int) -> bytes:
    """The AEAD nonce of one revealed share (which "b" or "s", the dealer's x): one key per
    (session, member), and each (which, dealer) is sealed once under it."""
    return which.encode() + x.to_bytes(4, "big") + bytes(7)


def share_commitment(ctx: Context, book: bytes, dealer: str, holder: str, which: str, share: bytes) -> bytes:
    """SHA-256 binding `share` (which = "b": of the self-mask seed, "s": of the pair key) of
    dealer for holder in this session. A share is a uniform field element: the hash hides it."""
    h = hashlib.sha256(DOMAIN_SHARE_COMMIT + ctx.binding(book))
    h.update(length_prefixed(dealer) + length_prefixed(holder) + which.encode() + bytes(share))
    return h.digest()


def secret_commitment(ctx: Context, book: bytes, dealer: str, secret: bytes) -> bytes:
    """SHA-256 binding dealer's self-mask seed (32 random bytes: the hash hides it)."""
    return hashlib.sha256(DOMAIN_SECRET_COMMIT + ctx.binding(book) + length_prefixed(dealer) + bytes(secret)).digest()


def masked_words(d: int) -> int:
    """The envelope's n (uint32 words, codec "u32") of a masked payload of d parameters: the
    32-byte tag, then d masked values."""
    return TAG_LEN // 4 + d


def contribution_tag(ctx: Context, book: bytes, sender: str) -> bytes:
    """The first 32 bytes of a masked payload: binds it (and the envelope signature over it)
    to the network, sender, receiver, round and session."""
    return hashlib.sha256(DOMAIN_TAG + ctx.binding(book) + length_prefixed(sender)).digest()


def lineage_commitment(parents: Iterable[bytes], salt: bytes) -> bytes:
    """A hiding commitment to a masked update's parents (the ids of the models it came from),
    for an envelope header that must not name them: the sender keeps the 32-byte random salt
    in its own log, and an auditor it shows the salt to can check the lineage."""
    if len(salt) != 32:
        raise ValueError("the salt has 32 random bytes")
    h = hashlib.sha256(DOMAIN_LINEAGE + bytes(salt))
    for p in parents:
        if len(p) != HASH_LEN:
            raise ValueError("a parent is a 32-byte update id")
        h.update(bytes(p))
    return h.digest()
