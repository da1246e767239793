"""The receiver's side of double-masking secure aggregation (privacy.secagg): one
`ReceiverSession` per round, which collects each phase's messages from its group, closes the
phase (with at least t of them) into the messages to send, and finally unmasks the sum.

    r = ReceiverSession(identity, ctx, size=d)   # ctx.receiver is this peer; threshold optional
    phase KEYS:     r.receive(Advert) ...    r.advance() -> {member: BOOK}      (same bytes to all)
    phase DEALS:    r.receive(Deal) ...      r.advance() -> {member: FORWARD}   (one per member)
    phase MASKED:   r.receive_masked(sender, payload) ...
                                             r.advance() -> {member: SURVIVORS} (same bytes to all)
    phase CONSENTS: r.receive(Consent) ...   r.advance() -> {member: PROOF}     (same bytes to all)
    phase REVEALS:  r.receive(Reveal) ...    r.result(fp) -> Unmasked (the float32 sum over U)

The driver closes a phase when `complete()` (everyone expected answered) or its deadline
passed; `missing()` names who did not answer. `receive` raises SecAggError naming the sender
for what it sent wrong (who = () while the bytes are not authenticated); a masked input after
the survivor set was fixed is refused as "late" (and could never be unmasked). `advance` and
`result` raise SecAggError when fewer than t answered, or a dealer's shares do not
reconstruct what it committed to; then this receiver has no sum for the round.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from gossip.identity import Identity

from . import secagg_wire as wire
from .masking import FixedPoint, Keystream, apply_mask, mask_sign
from .secagg import (
    TAG_LEN,
    Context,
    Random,
    SecAggError,
    check_threshold,
    contribution_tag,
    default_threshold,
    fresh_key,
    pair_seed,
    public_raw,
    reveal_key,
    reveal_nonce,
    secret_commitment,
    share_commitment,
    unseal,
)
from .shamir import ShamirError, combine_with, lagrange_at_zero


class Phase(StrEnum):
    KEYS = "keys"
    DEALS = "deals"
    MASKED = "masked"
    CONSENTS = "consents"
    REVEALS = "reveals"
    DONE = "done"


_ORDER = list(Phase)
_TAKES = {wire.Advert: Phase.KEYS, wire.Deal: Phase.DEALS, wire.Consent: Phase.CONSENTS, wire.Reveal: Phase.REVEALS}


@dataclass(frozen=True)
class Unmasked:
    """The sum over the survivors, and who took part in which way."""

    total: object  # float32 tensor (d,)
    survivors: tuple[str, ...]  # U: summed
    dropped: tuple[str, ...]  # U2 \ U: dealt shares, no masked input used (their pair masks removed)
    revealers: tuple[str, ...]  # whose shares were used


class ReceiverSession:
    """One round of this peer's aggregation of its group (see the module docstring)."""

    def __init__(self, identity: Identity, ctx: Context, *, size: int, threshold: int | None = None,
                 random: Random = os.urandom):
        if identity.peer_id != ctx.receiver:
            raise ValueError("the context's receiver must be this peer")
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"size (the number of parameters) must be a positive integer, got {size!r}")
        self.identity, self.ctx, self.size = identity, ctx, size
        self.threshold = default_threshold(ctx.n) if threshold is None else threshold
        check_threshold(self.threshold, ctx.n)
        self._c: X25519PrivateKey = fresh_key(random)
        self.phase = Phase.KEYS
        self.adverts: dict[str, wire.Advert] = {}
        self.deals: dict[str, wire.Deal] = {}
        self.masked: dict[str, np.ndarray] = {}
        self.consents: dict[str, wire.Consent] = {}
        self.reveals: dict[str, tuple[dict[str, bytes], dict[str, bytes]]] = {}  # member -> (b shares, s shares)
        self._digests: dict[tuple[Phase, str], bytes] = {}
        self.book: wire.KeyBook | None = None
        self._commits: dict[str, dict[str, tuple[bytes, bytes]]] = {}  # dealer -> holder -> (cb, cs)
        none: tuple[str, ...] = ()
        self.members = self.dealers = self.survivors = self.signers = none  # U1, U2, U, U4

    def _bid(self) -> bytes:
        """The key book's digest: fixed when KEYS closes, before every phase that uses it."""
        assert self.book is not None  # only called from DEALS on (each caller checked the phase)
        return self.book.digest

    # --- who is expected --------------------------------------------------------------------

    def expected(self) -> tuple[str, ...]:
        """Who the current phase waits for."""
        return {Phase.KEYS: self.ctx.group, Phase.DEALS: self.members, Phase.MASKED: self.dealers,
                Phase.CONSENTS: self.survivors, Phase.REVEALS: self.signers}.get(self.phase, ())

    def _received(self) -> Mapping[str, object]:
        received: dict[Phase, Mapping[str, object]] = {
            Phase.KEYS: self.adverts, Phase.DEALS: self.deals, Phase.MASKED: self.masked,
            Phase.CONSENTS: self.consents, Phase.REVEALS: self.reveals}
        return received.get(self.phase, {})

    def missing(self) -> tuple[str, ...]:
        got = self._received()
        return tuple(k for k in self.expected() if k not in got)

    def complete(self) -> bool:
        return not self.missing()

    # --- receiving ----------------------------------------------------------------------------

    def receive(self, msg: wire.Message) -> None:
        """A parsed ADVERT, DEAL, CONSENT or REVEAL from a member."""
        phase = _TAKES.get(type(msg))
        if phase is None or not isinstance(msg, wire.Advert | wire.Deal | wire.Consent | wire.Reveal):
            raise SecAggError("unexpected_kind", (), f"a receiver does not take a {msg.KIND}")
        c = self.ctx
        if msg.net != c.network:
            raise SecAggError("wrong_network", (), f"{msg.KIND} for network {msg.net!r:.60}")
        if msg.to != c.receiver or msg.round != c.round:
            raise SecAggError("wrong_session", (), f"{msg.KIND} for {msg.to:.16}'s round {msg.round}")
        if phase is not self.phase:
            late = _ORDER.index(phase) < _ORDER.index(self.phase)
            raise SecAggError("late" if late else "out_of_order", (), f"a {msg.KIND} in phase {self.phase}")
        if msg.sender not in self.expected():
            raise SecAggError("not_expected", (), f"{msg.sender:.16} has no {msg.KIND} to send in this session")
        if self.book is not None and not isinstance(msg, wire.Advert) and msg.book != self.book.digest:  # no book yet
            raise SecAggError("wrong_session", (), f"{msg.KIND} for another key book")
        seen = self._digests.get((phase, msg.sender))
        if seen == msg.digest:
            return  # a repeat
        if not msg.signed_by_sender():
            raise SecAggError("bad_signature", (), f"{msg.KIND} not signed by {msg.sender:.16}")
        if seen is not None:
            raise SecAggError("equivocation", (msg.sender,), f"two different signed {msg.KIND}s")
        take: dict[type, Callable[[Any], None]] = {wire.Advert: self._advert, wire.Deal: self._deal,
                                                   wire.Consent: self._consent, wire.Reveal: self._reveal}
        take[type(msg)](msg)
        self._digests[(phase, msg.sender)] = msg.digest

    def _advert(self, msg: wire.Advert) -> None:
        for pub in (msg.c_pub, msg.s_pub):  # a low-order point would fail every member later
            try:
                self._c.exchange(X25519PublicKey.from_public_bytes(pub))
            except ValueError:
                raise SecAggError("bad_key", (msg.sender,), "an X25519 key of low order") from None
        self.adverts[msg.sender] = msg

    def _deal(self, msg: wire.Deal) -> None:
        if tuple(cm.holder for cm in msg.commits) != self.members:
            raise SecAggError("bad_deal", (msg.sender,), "not one commitment pair per member of the key book")
        if tuple(b.holder for b in msg.boxes) != tuple(k for k in self.members if k != msg.sender):
            raise SecAggError("bad_deal", (msg.sender,), "not one box per other member of the key book")
        self.deals[msg.sender] = msg

    def receive_masked(self, sender: str, payload) -> None:
        """The payload of a masked envelope whose signature the peer verified (`sender` is its
        authenticated sender)."""
        if sender not in self.dealers:
            raise SecAggError("not_expected", (sender,), "a masked input from a member that dealt no shares")
        if self.phase is not Phase.MASKED:
            late = _ORDER.index(self.phase) > _ORDER.index(Phase.MASKED)
            raise SecAggError("late" if late else "out_of_order", (sender,),
                              "masked input after the survivor set was fixed: it is never unmasked" if late else
                              "masked input before the shares were forwarded")
        view = memoryview(payload).cast("B")
        if len(view) != TAG_LEN + 4 * self.size:
            raise SecAggError("bad_payload", (sender,), f"{len(view)} bytes, expected {TAG_LEN + 4 * self.size}")
        if bytes(view[:TAG_LEN]) != contribution_tag(self.ctx, self._bid(), sender):
            raise SecAggError("wrong_context", (sender,), "masked for another receiver, round, network or session")
        if sender in self.masked:
            if not np.array_equal(self.masked[sender], np.frombuffer(view, "<u4", offset=TAG_LEN)):
                raise SecAggError("equivocation", (sender,), "two different masked inputs")
            return
        self.masked[sender] = np.frombuffer(view, dtype="<u4", offset=TAG_LEN)

    def _consent(self, msg: wire.Consent) -> None:
        if msg.survivors != self.survivors:
            raise SecAggError("bad_consent", (msg.sender,), "consented to another survivor set")
        self.consents[msg.sender] = msg

    def _reveal(self, msg: wire.Reveal) -> None:
        dropped = tuple(k for k in self.dealers if k not in self.survivors)
        if tuple(s.dealer for s in msg.b_shares) != self.survivors or tuple(s.dealer for s in msg.s_shares) != dropped:
            raise SecAggError("bad_reveal", (msg.sender,), "not b shares for the survivors and s shares for the "
                                                           "dropped dealers")
        c, bid = self.ctx, self._bid()
        key = reveal_key(c, bid, self._c, self.adverts[msg.sender].c_pub, msg.sender, msg.sender)
        shares: tuple[dict[str, bytes], dict[str, bytes]] = ({}, {})
        for which, rows, out in (("b", msg.b_shares, shares[0]), ("s", msg.s_shares, shares[1])):
            for row in rows:
                share = unseal(key, row.ct, b"", reveal_nonce(which, c.x(row.dealer)))
                if share is None:
                    raise SecAggError("bad_reveal", (msg.sender,), f"a {which} share that does not decrypt")
                commit = self._commits[row.dealer][msg.sender][0 if which == "b" else 1]
                if share_commitment(c, bid, row.dealer, msg.sender, which, share) != commit:
                    raise SecAggError("wrong_share", (msg.sender,), f"its {which} share of {row.dealer:.16} is not "
                                                                    "the one dealt")
                out[row.dealer] = share
        self.reveals[msg.sender] = shares

    # --- closing phases -------------------------------------------------------------------------

    def _enough(self, got: Mapping[str, object]) -> tuple[str, ...]:
        if len(got) < self.threshold:
            raise SecAggError("too_few", self.missing(), f"{len(got)} of {len(self.expected())} answered in phase "
                                                         f"{self.phase}, threshold {self.threshold}")
        return tuple(sorted(got))

    def advance(self) -> dict[str, bytes]:
        """Close the current phase (KEYS to CONSENTS): the messages to send, by member."""
        c, me = self.ctx, self.identity
        if self.phase is Phase.KEYS:
            self.members = self._enough(self.adverts)
            entries = [wire.BookEntry(k, a.c_pub, a.s_pub, a.sig) for k, a in sorted(self.adverts.items())]
            data = wire.encode(me, wire.KeyBook, net=c.network, round=c.round, threshold=self.threshold,
                               recv_pub=public_raw(self._c), entries=entries)
            book = wire.parse(data, c.n)
            assert isinstance(book, wire.KeyBook)  # the bytes just encoded as one
            self.book = book
            self.phase = Phase.DEALS
            return dict.fromkeys(self.members, data)
        if self.phase is Phase.DEALS:
            self.dealers = self._enough(self.deals)
            self._commits = {j: {cm.holder: (cm.cb, cm.cs) for cm in d.commits} for j, d in self.deals.items()}
            boxes = {j: {b.holder: b for b in d.boxes} for j, d in self.deals.items()}
            out: dict[str, bytes] = {}
            for k in self.dealers:
                rows = [wire.ForwardedBox(j, *self._commits[j][k], boxes[j][k].ct, boxes[j][k].sig)
                        for j in self.dealers if j != k]
                out[k] = wire.encode(me, wire.Forward, net=c.network, to=k, round=c.round, book=self._bid(),
                                     boxes=rows)
            self.phase = Phase.MASKED
            return out
        if self.phase is Phase.MASKED:
            self.survivors = self._enough(self.masked)
            data = wire.encode(me, wire.Survivors, net=c.network, round=c.round, book=self._bid(),
                               survivors=self.survivors)
            self.phase = Phase.CONSENTS
            return dict.fromkeys(self.survivors, data)
        if self.phase is Phase.CONSENTS:
            self.signers = self._enough(self.consents)
            data = wire.encode(me, wire.Proof, net=c.network, round=c.round, book=self._bid(),
                               survivors=self.survivors,
                               consents=[wire.Signature(k, self.consents[k].sig) for k in self.signers])
            self.phase = Phase.REVEALS
            return dict.fromkeys(self.signers, data)
        raise SecAggError("out_of_order", (), f"phase {self.phase} closes with result(), not advance()")

    # --- unmasking --------------------------------------------------------------------------------

    def result(self, fp: FixedPoint) -> Unmasked:
        """The float32 sum of the survivors' updates, from the reveals of at least t members."""
        if self.phase is not Phase.REVEALS:
            raise SecAggError("out_of_order", (), f"result() in phase {self.phase}")
        if fp.count != self.ctx.n:
            raise ValueError(f"the fixed point's count is {fp.count}, the group has {self.ctx.n} members")
        c, bid, u = self.ctx, self._bid(), self.survivors
        revealers = self._enough(self.reveals)[: self.threshold]
        lagrange = lagrange_at_zero([c.x(r) for r in revealers])
        dropped = tuple(k for k in self.dealers if k not in u)
        total = np.zeros(self.size, dtype=np.uint32)
        for k in u:
            np.add(total, self.masked[k], out=total)
        stream = Keystream(self.size)
        for k in u:
            b = self._secret(lagrange, revealers, k, 0)
            if secret_commitment(c, bid, k, b) != self.deals[k].secret:
                raise SecAggError("inconsistent_shares", (k,), "its shares do not give the self-mask seed it committed to")
            apply_mask(total, stream(b), -1)
        for d in dropped:
            try:
                s_d = X25519PrivateKey.from_private_bytes(self._secret(lagrange, revealers, d, 1))
            except ValueError:
                s_d = None
            if s_d is None or public_raw(s_d) != self.adverts[d].s_pub:
                raise SecAggError("inconsistent_shares", (d,), "its shares do not give the key of its s_pub")
            for k in u:
                apply_mask(total, stream(pair_seed(c, s_d, self.adverts[k].s_pub, d, k)), -mask_sign(k, d))
        self.phase = Phase.DONE
        return Unmasked(fp.decode(total, len(u)), u, dropped, revealers)

    def _secret(self, lagrange: list[int], revealers: tuple[str, ...], dealer: str, which: int) -> bytes:
        try:
            return combine_with(lagrange, [self.reveals[r][which][dealer] for r in revealers])
        except ShamirError as exc:
            raise SecAggError("inconsistent_shares", (dealer,), str(exc)) from None

