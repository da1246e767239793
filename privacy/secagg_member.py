"""A member's side of double-masking secure aggregation (privacy.secagg): one `MemberSession`
per (receiver, round), kept honest across restarts by the `MemberLedger` (privacy.secagg_ledger)
of every session this peer started and what it signed and revealed in it.

Per session, in order (each call returns the bytes to send to the receiver, or None):

    s = MemberSession(identity, ctx, ledger)    # fresh keys; refused if the ledger has this
                                                # (receiver, round) or a later round of it
    s.advert()                  -> ADVERT
    s.receive(KeyBook)          -> DEAL       (shares of b and of s's key, encrypted per holder)
    s.receive(Forward)          -> None       (the shares dealt to this member, checked)
    s.mask(x, fp)               -> masked payload (the envelope of kind "masked" carries it)
    s.receive(Survivors)        -> CONSENT    (signs U: once per session, never another U)
    s.receive(Proof)            -> REVEAL     (after t valid consents on exactly that U)

The peer starts a session itself, for its own current round r (the key and share phases need
no model: they may run while it trains), never because a receiver asked for some round, and
masks its model of round r in it. It logs `s.record()` (the ledger entry, JSON- and
msgpack-safe) as a provenance event before it sends what a step returned, and on start
rebuilds the ledger with `MemberLedger.restore(records)`. A restarted peer has lost its
session keys: it cannot answer for a session it started before, and the ledger refuses a new
session for that receiver and any round up to it, so masking randomness is never reused and a
receiver never gets two sessions' sums of the same round's updates. Every refusal is a
SecAggError naming who is to blame; the peer drops a session that raised (its member drops
out of that round) and logs why.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from gossip.identity import Identity

from . import secagg_wire as wire
from .masking import FixedPoint, Keystream, apply_mask, mask_sign
from .secagg import (
    HASH_LEN,
    TAG_LEN,
    Context,
    Random,
    SecAggError,
    contribution_tag,
    default_threshold,
    exchange,
    fresh_key,
    pair_seed,
    private_raw,
    public_raw,
    reveal_key,
    reveal_nonce,
    seal,
    secret_commitment,
    share_commitment,
    share_key,
    unseal,
)
from .secagg_ledger import LedgerEntry, MemberLedger
from .shamir import SHARE_LEN, ShamirError, share_value, split

__all__ = ["LedgerEntry", "MemberLedger", "MemberSession"]

# --- the session -----------------------------------------------------------------------------


class MemberSession:
    """This member's part of one receiver's aggregation in one round (see the module docstring)."""

    def __init__(self, identity: Identity, ctx: Context, ledger: MemberLedger, *, random: Random = os.urandom,
                 min_threshold: int | None = None):
        self.identity, self.me, self.ctx, self.ledger, self.random = identity, identity.peer_id, ctx, ledger, random
        if self.me not in ctx.group:
            raise ValueError(f"{self.me:.16} is not a member of {ctx.receiver:.16}'s group")
        self.min_threshold = max(default_threshold(ctx.n), min_threshold or 0)
        self.entry = ledger.begin(ctx.receiver, ctx.round)
        self._c: X25519PrivateKey | None = fresh_key(random)  # None once the shares are in
        self._s: X25519PrivateKey | None = fresh_key(random)  # None once masked
        self.c_pub, self.s_pub = public_raw(self._c), public_raw(self._s)
        self.book: wire.KeyBook | None = None
        self.keys: dict[str, wire.BookEntry] = {}
        self.threshold = 0
        self.held: dict[str, tuple[bytes, bytes]] = {}  # dealer -> (share of b, share of s's key) held by me
        self.dealers: tuple[str, ...] | None = None  # U2 as this member was told (with itself)
        self._b: bytes | None = None
        self._shared: dict[str, bytes] = {}  # X25519(c, c_k) per other member, from dealing to opening boxes
        sent: bytes | None = None
        self._deal = self._forward = self._consent = self._reveal = sent  # what was sent, for repeats

    def record(self) -> dict:
        """The ledger entry of this session, to log before sending what the last step returned."""
        return self.entry.to_record()

    def advert(self) -> bytes:
        c = self.ctx
        return wire.encode(self.identity, wire.Advert, net=c.network, to=c.receiver, round=c.round,
                           c_pub=self.c_pub, s_pub=self.s_pub)

    def receive(self, msg: wire.Message) -> bytes | None:
        """A parsed message from the receiver: the answer to send it, or None."""
        handlers: dict[type, Callable[[Any], bytes | None]] = {
            wire.KeyBook: self._on_book, wire.Forward: self._on_forward, wire.Survivors: self._on_survivors,
            wire.Proof: self._on_proof}
        handler = handlers.get(type(msg))
        if handler is None:
            raise SecAggError("unexpected_kind", (), f"a member does not take a {msg.KIND}")
        self._check(msg)
        return handler(msg)

    def _check(self, msg: wire.Message) -> None:
        """Cheap checks, then the signature: nothing expensive for a message not from the receiver."""
        c = self.ctx
        if msg.net != c.network:
            raise SecAggError("wrong_network", (), f"{msg.KIND} for network {msg.net!r:.60}")
        if msg.sender != c.receiver or msg.round != c.round:
            raise SecAggError("wrong_session", (), f"{msg.KIND} from {msg.sender:.16} for round {msg.round}, this "
                                                   f"session is {c.receiver:.16}'s round {c.round}")
        to = getattr(msg, "to", self.me)
        if to != self.me:
            raise SecAggError("wrong_addressee", (), f"{msg.KIND} addressed to {to:.16}")
        book = getattr(msg, "book", None)
        if book is not None and book != self.entry.book:
            raise SecAggError("wrong_session", (), f"{msg.KIND} for another key book")
        if not msg.signed_by_sender():
            raise SecAggError("bad_signature", (), f"{msg.KIND} not signed by {msg.sender:.16}")

    def _blame(self, reason: str, detail: str, *who: str) -> SecAggError:
        return SecAggError(reason, who or (self.ctx.receiver,), detail)

    # --- 1. the key book -> the deal ----------------------------------------------------------

    def _on_book(self, book: wire.KeyBook) -> bytes:
        if self.book is not None:
            if book.digest == self.book.digest:
                assert self._deal is not None  # kept with the book
                return self._deal
            raise self._blame("book_changed", "a second, different key book for the session")
        assert self._c is not None  # dropped only once shares were forwarded, after a book
        c, t = self.ctx, book.threshold
        if not self.min_threshold <= t <= c.n:
            raise self._blame("weak_threshold", f"threshold {t}, this member needs {self.min_threshold} to {c.n}")
        keys = {e.member: e for e in book.entries}
        outsiders = sorted(set(keys) - set(c.group))
        if outsiders:
            raise self._blame("not_a_member", f"the book lists {outsiders[0]:.16}, not in the group")
        if len(keys) < t:
            raise self._blame("too_few", f"{len(keys)} members in the book, threshold {t}")
        mine = keys.get(self.me)
        if mine is None:
            raise self._blame("not_in_book", "the book leaves this member out")
        if (mine.c_pub, mine.s_pub) != (self.c_pub, self.s_pub):
            raise self._blame("substituted_key", "this member's own entry carries other keys")
        for e in book.entries:
            if e.member == self.me:
                continue  # compared above
            digest = wire.advert_digest(net=c.network, member=e.member, receiver=c.receiver, round=c.round,
                                        c_pub=e.c_pub, s_pub=e.s_pub)
            if not wire.verify_signature(e.member, e.sig, digest):
                raise self._blame("substituted_key", f"the entry of {e.member:.16} is not signed by it")
        rkey = reveal_key(c, book.digest, self._c, book.recv_pub, self.me, c.receiver)
        b = self.random(HASH_LEN)
        deal, mine, self._shared = self._make_deal(book.digest, keys, t, b)  # raises before anything is kept
        self.book, self.keys, self.threshold, self._reveal_key, self._b = book, keys, t, rkey, b
        self.held[self.me] = mine
        self.entry = self.ledger.advance(self.entry, "dealt", book.digest)
        self._deal = deal
        return deal

    def _make_deal(self, bid: bytes, keys: dict[str, wire.BookEntry], t: int, b: bytes):
        """The DEAL message, and this member's own pair of shares."""
        c, members, shared = self.ctx, sorted(keys), {}
        assert self._c is not None and self._s is not None  # before the book is kept, both keys are
        if len(b) != HASH_LEN:
            raise ValueError(f"the random source gave {len(b)} bytes, {HASH_LEN} asked")
        xs = [c.x(k) for k in members]
        b_shares = split(b, xs, t, self.random)
        s_shares = split(private_raw(self._s), xs, t, self.random)
        commits, boxes = [], []
        for k, bsh, ssh in zip(members, b_shares, s_shares, strict=True):
            cb, cs = (share_commitment(c, bid, self.me, k, "b", bsh), share_commitment(c, bid, self.me, k, "s", ssh))
            commits.append(wire.Commit(k, cb, cs))
            if k == self.me:
                mine = (bsh, ssh)
                continue
            shared[k] = exchange(self._c, keys[k].c_pub, k)
            key = share_key(c, bid, self._c, keys[k].c_pub, self.me, k, owner=k, shared=shared[k])
            ct = seal(key, bsh + ssh, cb + cs)
            sig = self.identity.sign(wire.box_digest(net=c.network, receiver=c.receiver, round=c.round, book=bid,
                                                     dealer=self.me, holder=k, cb=cb, cs=cs, ct=ct))
            boxes.append(wire.Box(k, ct, sig))
        deal = wire.encode(self.identity, wire.Deal, net=c.network, to=c.receiver, round=c.round, book=bid,
                           secret=secret_commitment(c, bid, self.me, b), commits=commits, boxes=boxes)
        return deal, mine, shared

    # --- 2. the forwarded shares ---------------------------------------------------------------

    def _on_forward(self, fwd: wire.Forward) -> None:
        if self._forward is not None:
            if fwd.digest == self._forward:
                return None
            raise self._blame("forward_changed", "a second, different set of forwarded shares")
        if self.book is None or self._deal is None:
            raise self._blame("out_of_order", "shares forwarded before the key book")
        c, bid = self.ctx, self.entry.book
        assert self._c is not None and bid is not None  # c is dropped with the first forward; dealt: a book
        dealers = [box.dealer for box in fwd.boxes]
        if any(d not in self.keys or d == self.me for d in dealers):
            raise self._blame("not_in_book", "shares from a dealer outside the key book (or from this member)")
        if len(dealers) + 1 < self.threshold:
            raise self._blame("too_few", f"{len(dealers) + 1} dealers, threshold {self.threshold}")
        held = {}
        for box in fwd.boxes:
            # The box opens under the key of the dealer's signed c_pub: that proves the dealer made it
            # (and its commitments, the AEAD's associated data). Only a box that does not open, or
            # whose shares miss their commitments, costs a signature check: to know whom to blame.
            key = share_key(c, bid, self._c, self.keys[box.dealer].c_pub, box.dealer, self.me, owner=box.dealer,
                            shared=self._shared.get(box.dealer))
            plain = unseal(key, box.ct, box.cb + box.cs)
            shares = None if plain is None else (plain[:SHARE_LEN], plain[SHARE_LEN:])
            if shares is None or not self._fits(bid, box, shares):
                digest = wire.box_digest(net=c.network, receiver=c.receiver, round=c.round, book=bid,
                                         dealer=box.dealer, holder=self.me, cb=box.cb, cs=box.cs, ct=box.ct)
                if not wire.verify_signature(box.dealer, box.sig, digest):
                    raise self._blame("tampered_share", f"the box of {box.dealer:.16} is not signed by it")
                raise self._blame("bad_share", "its signed box does not open to the shares it committed to",
                                  box.dealer)
            held[box.dealer] = shares
        self.held.update(held)
        self.dealers = tuple(sorted([*dealers, self.me]))
        self._forward, self._c, self._shared = fwd.digest, None, {}  # the shares are in: c is done
        return None

    def _fits(self, bid: bytes, box: wire.ForwardedBox, shares: tuple[bytes, bytes]) -> bool:
        """The two shares are field elements and match the dealer's commitments."""
        try:
            share_value(shares[0]), share_value(shares[1])
        except ShamirError:
            return False
        c = self.ctx
        return (share_commitment(c, bid, box.dealer, self.me, "b", shares[0]) == box.cb
                and share_commitment(c, bid, box.dealer, self.me, "s", shares[1]) == box.cs)

    # --- 3. the masked input -------------------------------------------------------------------

    def mask(self, x, fp: FixedPoint) -> bytes:
        """The masked payload: tag | enc(x) + PRG(b) + sum of pair masks towards the other
        dealers, little-endian uint32. Once per session."""
        if self.dealers is None:
            raise SecAggError("out_of_order", (), "mask before the forwarded shares were accepted")
        if self._b is None:
            raise SecAggError("already_masked", (), "a session masks one input, once")
        if fp.count != self.ctx.n:
            raise ValueError(f"the fixed point's count is {fp.count}, the group has {self.ctx.n} members")
        c = self.ctx
        assert self._s is not None and self.entry.book is not None  # s is dropped with b; forwarded: dealt
        enc = fp.encode(x)
        out = bytearray(TAG_LEN + 4 * enc.size)
        out[:TAG_LEN] = contribution_tag(c, self.entry.book, self.me)
        words = np.frombuffer(out, dtype="<u4", offset=TAG_LEN)
        words[...] = enc
        del enc
        stream = Keystream(words.size)
        apply_mask(words, stream(self._b), 1)
        for k in self.dealers:
            if k != self.me:
                apply_mask(words, stream(pair_seed(c, self._s, self.keys[k].s_pub, self.me, k)), mask_sign(self.me, k))
        self._b = self._s = None  # shared already: this member needs neither again
        self.entry = self.ledger.advance(self.entry, "masked")
        return bytes(out)

    # --- 4. the survivor set -> consent ----------------------------------------------------------

    def _on_survivors(self, msg: wire.Survivors) -> bytes:
        u = msg.survivors
        if self.entry.phase not in ("masked", "consented", "revealed"):
            raise self._blame("not_masked", "named a survivor before this member sent its masked input")
        assert self.dealers is not None  # masked: the forwarded shares were accepted
        if not set(u) <= set(self.dealers):
            raise self._blame("not_survivor_subset", "survivors who did not deal shares to this member")
        if self.me not in u:
            raise self._blame("not_in_survivors", "asked to consent to a set without this member")
        if len(u) < self.threshold:
            raise self._blame("too_few", f"{len(u)} survivors, threshold {self.threshold}")
        self.entry = self.ledger.consent(self.entry, u)
        c = self.ctx
        data = wire.encode(self.identity, wire.Consent, net=c.network, to=c.receiver, round=c.round,
                           book=self.entry.book, survivors=u)
        self._consent = data[-wire.SIG_LEN:]  # its signature: the last field
        return data

    # --- 5. the proof -> reveal --------------------------------------------------------------------

    def _on_proof(self, proof: wire.Proof) -> bytes:
        c, u = self.ctx, proof.survivors
        if self.entry.survivors is None:
            raise self._blame("not_consented", "a proof for a set this member was never asked to sign")
        assert self.dealers is not None and self.entry.book is not None  # consented: dealt and masked
        if u != self.entry.survivors:
            raise self._blame("conflicting_survivors", "the proof is for another survivor set than the one signed")
        signers = [s.member for s in proof.consents]
        if not set(signers) <= set(u):
            raise self._blame("not_a_survivor", "a consent from outside the survivor set")
        if len(signers) < self.threshold:
            raise self._blame("too_few_consents", f"{len(signers)} consents, threshold {self.threshold}")
        valid = 0
        for s in proof.consents:  # t valid consents suffice; this member's own it knows
            if valid >= self.threshold:
                break
            if s.member == self.me and s.sig == self._consent:
                valid += 1
                continue
            digest = wire.consent_digest(net=c.network, member=s.member, receiver=c.receiver, round=c.round,
                                         book=self.entry.book, survivors=u)
            if not wire.verify_signature(s.member, s.sig, digest):
                raise self._blame("bad_consent", f"the consent of {s.member:.16} is not its signature on this set")
            valid += 1
        dropped = tuple(k for k in self.dealers if k not in u)
        if self._reveal is not None and self.entry.dropped == dropped:
            return self._reveal
        self.entry = self.ledger.reveal(self.entry, u, dropped)

        def sealed(k: str, which: str) -> wire.SealedShare:
            share = self.held[k][0 if which == "b" else 1]
            return wire.SealedShare(k, seal(self._reveal_key, share, b"", reveal_nonce(which, c.x(k))))

        self._reveal = wire.encode(self.identity, wire.Reveal, net=c.network, to=c.receiver, round=c.round,
                                   book=self.entry.book, b_shares=[sealed(k, "b") for k in u],
                                   s_shares=[sealed(k, "s") for k in dropped])
        return self._reveal
