"""Double-masking secure aggregation (privacy.secagg*): exact sums with drop-outs at every phase,
the three exposures of issue 22 as attacks on the pure core, blame, and what a masked input shows."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import stats

from privacy import secagg_wire as wire
from privacy.masking import FixedPoint, mask_sign, prg
from privacy.secagg import (
    TAG_LEN,
    Context,
    SecAggError,
    check_threshold,
    default_threshold,
    lineage_commitment,
    masked_words,
    pair_seed,
    public_raw,
    reveal_nonce,
    seal,
    share_key,
)
from privacy.secagg_ledger import MemberLedger
from privacy.secagg_member import MemberSession
from privacy.shamir import combine_with, lagrange_at_zero

from .secagg_helpers import BY_ID, MEMBERS, NET, PHASES, RECEIVER, Group, plain_sum, updates

SLOW = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def words(payload: bytes) -> np.ndarray:
    return np.frombuffer(payload, dtype="<u4", offset=TAG_LEN)


def assert_exact(result, xs, bound=1.0):
    fp = FixedPoint(bound, len(xs))
    plain = plain_sum(xs, result.survivors, bound)
    assert result.total.dtype == torch.float32
    assert (result.total.double() - plain).abs().max().item() <= fp.error()


# --- the threshold ----------------------------------------------------------------------------


def test_the_default_threshold_is_a_strict_majority_of_at_least_two():
    assert [default_threshold(n) for n in range(2, 10)] == [2, 2, 3, 3, 4, 4, 5, 5]
    for n in range(2, 40):
        t = default_threshold(n)
        assert 2 * t > n and t >= 2 and n - t >= (n - 1) // 2 - 1
    check_threshold(8, 8)
    for bad in (4, 9, True, 5.0):
        with pytest.raises(ValueError):
            check_threshold(bad, 8)


# --- exact sums with drop-outs ----------------------------------------------------------------


@pytest.mark.parametrize("n", range(2, 9))
def test_every_member_delivers_and_the_sum_is_exact(n):
    g = Group(n, size=500)
    xs = updates(g.members, 500, seed=n)
    result = g.run(xs)
    assert result.survivors == tuple(g.members) and result.dropped == ()
    assert_exact(result, xs)


@SLOW
@given(n=st.integers(2, 8), data=st.data())
def test_the_sum_is_exact_with_up_to_n_minus_t_drop_outs_at_any_phase(n, data):
    g = Group(n, size=data.draw(st.integers(1, 40)))
    t = g.rs.threshold
    order = data.draw(st.permutations(g.members))
    k = data.draw(st.integers(0, n - t))
    drops: dict[str, set] = {}
    for member in order[:k]:
        drops.setdefault(data.draw(st.sampled_from(PHASES)), set()).add(member)
    xs = updates(g.members, g.size, seed=data.draw(st.integers(0, 1000)), scale=1.5)  # some values clipped
    result = g.run(xs, drops)
    before_mask = drops.get("advert", set()) | drops.get("deal", set()) | drops.get("masked", set())
    assert set(result.survivors) == set(g.members) - before_mask
    assert set(result.dropped) == drops.get("masked", set())  # dealt shares, sent no masked input
    assert_exact(result, xs)


@pytest.mark.parametrize("phase", PHASES)
def test_more_drop_outs_than_tolerated_fail_naming_who_did_not_answer(phase):
    g = Group(5)  # t = 3: two may drop, not three
    silent = set(g.members[:3])
    xs = updates(g.members, g.size, seed=1)
    with pytest.raises(SecAggError) as err:
        g.run(xs, {phase: silent})
    assert err.value.reason == "too_few" and set(err.value.who) == silent


def test_a_receiver_may_raise_the_threshold_and_then_tolerates_fewer_drop_outs():
    xs = updates([p.peer_id for p in MEMBERS[:6]], 32, seed=2)
    assert_exact(Group(6, threshold=6).run(xs), xs)
    with pytest.raises(SecAggError, match="too_few"):
        Group(6, threshold=6).run(xs, {"reveal": {MEMBERS[0].peer_id}})


# --- exposure 1: a late contribution ----------------------------------------------------------------


def test_a_late_contribution_cannot_be_unmasked_from_all_the_receiver_gets():
    g = Group(5, size=50_000)
    xs = {k: torch.full((g.size,), 0.25) for k in g.members}
    late = g.members[2]
    forwards = g.deals(g.keys())
    for k, data in forwards.items():
        g.to_member(k, data)
    for k in g.members:
        if k != late:
            g.rs.receive_masked(k, g.ms[k].mask(xs[k], g.fp))
    survivors = g.rs.advance()  # the deadline passed: U is fixed without `late`
    y_late = g.ms[late].mask(xs[late], g.fp)  # ... and then its masked input arrives
    with pytest.raises(SecAggError) as err:
        g.rs.receive_masked(late, y_late)
    assert (err.value.reason, err.value.who) == ("late", (late,))
    result = g.reveals(g.consents(survivors))
    assert late in result.dropped and late not in result.survivors
    assert_exact(result, xs)

    # Everything the receiver legally got: no member revealed a share of late's self-mask seed...
    for data in g.sent["reveal"].values():
        reveal = wire.parse(data)
        assert late not in {s.dealer for s in reveal.b_shares}
        assert late in {s.dealer for s in reveal.s_shares}
    # ... and with late's pair key (reconstructed, legally) every pair mask comes off, leaving
    # enc(x) + PRG(b_late): uniform noise, not the update.
    r = g.rs
    revealers = tuple(sorted(r.reveals))[: r.threshold]
    s_late = X25519PrivateKey.from_private_bytes(
        combine_with(lagrange_at_zero([g.ctx.x(m) for m in revealers]), [r.reveals[m][1][late] for m in revealers]))
    assert public_raw(s_late) == r.adverts[late].s_pub
    residue = words(y_late).copy()
    for k in r.dealers:
        if k != late:
            seed = pair_seed(g.ctx, s_late, r.adverts[k].s_pub, late, k)
            np.subtract(residue, prg(seed, g.size), out=residue) if mask_sign(late, k) > 0 else \
                np.add(residue, prg(seed, g.size), out=residue)
    plain = g.fp.encode(xs[late])
    assert np.mean(residue == plain) < 1e-3
    assert stats.chisquare(np.bincount(residue.view(np.uint8), minlength=256)).pvalue > 1e-3
    assert stats.chisquare(np.bincount(residue >> 24, minlength=256)).pvalue > 1e-3

    # A receiver that now asks for another survivor set with late in it gets nothing.
    again = wire.encode(RECEIVER, wire.Survivors, net=NET, round=g.round, book=r.book.digest,
                        survivors=tuple(g.members))
    for k in result.survivors:
        with pytest.raises(SecAggError) as err:
            g.to_member(k, again)
        assert (err.value.reason, err.value.who) == ("conflicting_survivors", (RECEIVER.peer_id,))


# --- exposure 2: a receiver that tells members different things ----------------------------------------


def hostile_until_masked(g: Group, xs) -> None:
    """The receiver runs honestly until every member sent its masked input."""
    for k, data in g.deals(g.keys()).items():
        g.to_member(k, data)
        g.rs.receive_masked(k, g.ms[k].mask(xs[k], g.fp))


def survivors_msg(g: Group, u) -> bytes:
    return wire.encode(RECEIVER, wire.Survivors, net=NET, round=g.round, book=g.rs.book.digest, survivors=tuple(u))


def proof_msg(g: Group, u, consents: dict[str, bytes]) -> bytes:
    sigs = [wire.Signature(k, wire.parse(c).sig) for k, c in consents.items()]
    return wire.encode(RECEIVER, wire.Proof, net=NET, round=g.round, book=g.rs.book.digest, survivors=tuple(u),
                       consents=sigs)


def test_inconsistent_survivor_sets_make_every_honest_member_refuse():
    g = Group(6)  # t = 4
    xs = updates(g.members, g.size, seed=3)
    hostile_until_masked(g, xs)
    m = g.members
    sets = {k: (m[:5] if i < 3 else m[1:]) for i, k in enumerate(m)}  # each set told to 3 members < t
    consents = {k: g.to_member(k, survivors_msg(g, sets[k])) for k in m}
    for k in m:
        other = m[1:] if sets[k] == m[:5] else m[:5]
        attempts = [(proof_msg(g, sets[k], {j: c for j, c in consents.items() if sets[j] == sets[k]}),
                     "too_few_consents"),
                    (proof_msg(g, sets[k], {j: c for j, c in consents.items() if j in sets[k]}),  # 4 signers of U,
                     "bad_consent"),  # but some signed the other set
                    (proof_msg(g, other, {j: c for j, c in consents.items() if sets[j] == other}),
                     "conflicting_survivors")]
        for attempt, reason in attempts:
            with pytest.raises(SecAggError) as err:
                g.to_member(k, attempt)
            assert (err.value.reason, err.value.who) == (reason, (RECEIVER.peer_id,))
        assert g.ledgers[k].entry(RECEIVER.peer_id, g.round).dropped is None  # revealed nothing
    # and a second set, to anyone, is refused: each member signs one set per session
    for k in m:
        with pytest.raises(SecAggError, match="conflicting_survivors"):
            g.to_member(k, survivors_msg(g, m))


@SLOW
@given(n=st.integers(3, 8), data=st.data())
def test_a_lying_receiver_never_gets_both_kinds_of_shares_of_one_member(n, data):
    g = Group(n, size=4)
    t = g.rs.threshold
    xs = updates(g.members, g.size, seed=n)
    hostile_until_masked(g, xs)
    subsets = st.lists(st.sampled_from(g.members), min_size=t, unique=True).map(sorted)
    candidates = data.draw(st.lists(subsets, min_size=1, max_size=3))
    told = {k: data.draw(st.lists(st.sampled_from(candidates), min_size=1, max_size=2)) for k in g.members}
    signed: dict[str, tuple] = {}
    consents: dict[tuple, dict[str, bytes]] = {}
    for k, sets in told.items():
        for u in sets:  # the receiver may try several sets on one member: only the first is signed
            try:
                consents.setdefault(tuple(u), {})[k] = g.to_member(k, survivors_msg(g, u))
                signed[k] = tuple(u)
            except SecAggError as exc:
                assert exc.reason in ("conflicting_survivors", "not_in_survivors")
    b_holders: dict[str, set] = {k: set() for k in g.members}
    s_holders: dict[str, set] = {k: set() for k in g.members}
    for k in g.members:
        for u, signers in consents.items():  # the receiver's best proofs: every set's own consents, and all
            for proof in (proof_msg(g, u, signers), proof_msg(g, u, {j: c for s in consents.values()
                                                                     for j, c in s.items()})):
                try:
                    reveal = wire.parse(g.to_member(k, proof))
                except SecAggError as exc:
                    assert exc.who == (RECEIVER.peer_id,)
                    continue
                assert signed[k] == u
                for row in reveal.b_shares:
                    b_holders[row.dealer].add(k)
                for row in reveal.s_shares:
                    s_holders[row.dealer].add(k)
    for k in g.members:
        assert not (len(b_holders[k]) >= t and len(s_holders[k]) >= t)
        assert not (b_holders[k] & s_holders[k])


# --- exposure 3: a restart -------------------------------------------------------------------------------


def test_a_restarted_member_masks_with_fresh_randomness():
    """A member whose data folder was wiped masks the same round for the same receiver again: its
    two masked inputs differ by fresh masks, not by x1 - x2."""
    size = 50_000
    j = MEMBERS[0].peer_id
    x1, x2 = torch.full((size,), 0.5), torch.full((size,), -0.25)
    payloads = []
    for x in (x1, x2):
        g = Group(3, size=size)  # fresh ledgers everywhere: a wiped folder (and a receiver that plays along)
        xs = {k: x if k == j else torch.zeros(size) for k in g.members}
        g.run(xs)
        payloads.append(words(g.sent["masked"][j]))
    diff = payloads[0] - payloads[1]
    fp = FixedPoint(1.0, 3)
    assert np.mean(diff == fp.encode(x1) - fp.encode(x2)) < 1e-3
    assert stats.chisquare(np.bincount(diff.view(np.uint8), minlength=256)).pvalue > 1e-3
    assert stats.chisquare(np.bincount(diff >> 24, minlength=256)).pvalue > 1e-3


def test_the_ledger_refuses_a_second_session_for_a_receivers_round_across_a_restart():
    g = Group(4, round=7)
    xs = updates(g.members, g.size, seed=4)
    g.run(xs)
    j = g.members[0]
    logged = [g.ledgers[j].entry(RECEIVER.peer_id, 7).to_record()]
    ctx = g.ctx
    restored = [MemberLedger.from_record(json.loads(json.dumps(g.ledgers[j].to_record()))),
                MemberLedger.restore(json.loads(json.dumps(logged)))]
    for ledger in restored:
        assert ledger.entry(RECEIVER.peer_id, 7) == g.ledgers[j].entry(RECEIVER.peer_id, 7)
        for rnd, reason in ((7, "already_started"), (6, "stale_round")):
            with pytest.raises(SecAggError) as err:
                MemberSession(BY_ID[j], Context(NET, RECEIVER.peer_id, rnd, ctx.group), ledger)
            assert err.value.reason == reason
        MemberSession(BY_ID[j], Context(NET, RECEIVER.peer_id, 8, ctx.group), ledger)  # the next round is fine


def test_members_refuse_a_second_key_book_in_a_session():
    g = Group(4)
    books = g.keys()
    deals = {k: g.to_member(k, data) for k, data in books.items()}
    # the receiver replays the session with one member's fresh keys (a restarted member's advert)
    j = g.members[0]
    fresh = MemberSession(BY_ID[j], g.ctx, MemberLedger())
    entries = [wire.BookEntry(a.sender, a.c_pub, a.s_pub, a.sig) for a in g.rs.adverts.values() if a.sender != j]
    adv = wire.parse(fresh.advert())
    entries.append(wire.BookEntry(j, adv.c_pub, adv.s_pub, adv.sig))
    book2 = wire.encode(RECEIVER, wire.KeyBook, net=NET, round=g.round, threshold=g.rs.threshold,
                        recv_pub=g.rs.book.recv_pub, entries=entries)
    for k in g.members[1:]:
        with pytest.raises(SecAggError) as err:
            g.to_member(k, book2)
        assert (err.value.reason, err.value.who) == ("book_changed", (RECEIVER.peer_id,))
    k = g.members[1]
    assert g.to_member(k, books[k]) == deals[k]  # the same book again: the same deal, nothing new


# --- blame --------------------------------------------------------------------------------------------------


def book_with(g: Group, entries, threshold=None, round=None) -> bytes:
    return wire.encode(RECEIVER, wire.KeyBook, net=NET, round=g.round if round is None else round,
                       threshold=threshold or g.rs.threshold, recv_pub=bytes(range(32)), entries=entries)


def test_a_book_with_a_substituted_key_is_refused_naming_the_receiver():
    g = Group(4)
    g.keys()
    entries = [wire.BookEntry(a.sender, a.c_pub, a.s_pub, a.sig) for _, a in sorted(g.rs.adverts.items())]
    victim = g.members[1]
    evil = public_raw(X25519PrivateKey.generate())
    forged = [e._replace(c_pub=evil) if e.member == victim else e for e in entries]
    for k in g.members:
        with pytest.raises(SecAggError) as err:
            g.to_member(k, book_with(g, forged))
        assert (err.value.reason, err.value.who) == ("substituted_key", (RECEIVER.peer_id,))
        assert ("own entry" if k == victim else victim[:16]) in err.value.detail


@pytest.mark.parametrize("case", ["missing_own", "outsider", "too_few", "weak_threshold", "wrong_round"])
def test_an_inconsistent_key_book_is_refused(case):
    g = Group(5)
    g.keys()
    entries = [wire.BookEntry(a.sender, a.c_pub, a.s_pub, a.sig) for _, a in sorted(g.rs.adverts.items())]
    k = g.members[0]
    kw = {}
    if case == "missing_own":
        entries, reason = entries[1:], "not_in_book"
    elif case == "outsider":
        their_group = (*g.members[1:], MEMBERS[6].peer_id)  # an outsider, signed for this receiver and round
        adv = wire.parse(MemberSession(MEMBERS[6], Context(NET, RECEIVER.peer_id, g.round, their_group),
                                       MemberLedger()).advert())
        entries = [e for e in entries if e.member != g.members[1]] + [wire.BookEntry(adv.sender, adv.c_pub,
                                                                                     adv.s_pub, adv.sig)]
        reason = "not_a_member"
    elif case == "too_few":
        entries, reason = entries[:2], "too_few"
    elif case == "weak_threshold":
        kw, reason = {"threshold": 2}, "weak_threshold"
    else:
        kw, reason = {"round": g.round + 1}, "wrong_session"
    with pytest.raises(SecAggError) as err:
        g.to_member(k, book_with(g, entries, **kw))
    assert err.value.reason == reason
    assert err.value.who == (() if reason == "wrong_session" else (RECEIVER.peer_id,))


def test_a_book_with_a_repeated_member_does_not_parse():
    g = Group(3)
    g.keys()
    a = next(iter(g.rs.adverts.values()))
    row = [a.sender, a.c_pub, a.s_pub, a.sig]
    body = {"net": NET, "sender": RECEIVER.peer_id, "round": g.round, "threshold": 2, "recv_pub": bytes(32),
            "entries": [row, row], "sig": bytes(64)}
    with pytest.raises(SecAggError, match="twice"):
        wire.parse(wire.MAGICS[wire.KeyBook] + wire.canonical(body))


def test_tampered_shares_blame_the_receiver_and_bad_boxes_blame_the_dealer():
    g = Group(4)
    forwards = g.deals(g.keys())
    k = g.members[0]
    fwd = wire.parse(forwards[k])
    # the receiver flips a byte of one box (and signs its forward: it is the one lying)
    box = fwd.boxes[0]
    bad = box._replace(ct=bytes([box.ct[0] ^ 1]) + box.ct[1:])
    tampered = wire.encode(RECEIVER, wire.Forward, net=NET, to=k, round=g.round, book=fwd.book,
                           boxes=[bad, *fwd.boxes[1:]])
    with pytest.raises(SecAggError) as err:
        g.to_member(k, tampered)
    assert (err.value.reason, err.value.who) == ("tampered_share", (RECEIVER.peer_id,))
    # a dealer that signs a box it garbled: the holder blames the dealer
    dealer = box.dealer
    garbled = box.ct[:-1] + bytes([box.ct[-1] ^ 1])
    sig = BY_ID[dealer].sign(wire.box_digest(net=NET, receiver=RECEIVER.peer_id, round=g.round, book=fwd.book,
                                             dealer=dealer, holder=k, cb=box.cb, cs=box.cs, ct=garbled))
    framed = wire.encode(RECEIVER, wire.Forward, net=NET, to=k, round=g.round, book=fwd.book,
                         boxes=[box._replace(ct=garbled, sig=sig), *fwd.boxes[1:]])
    with pytest.raises(SecAggError) as err:
        g.to_member(k, framed)
    assert (err.value.reason, err.value.who) == ("bad_share", (dealer,))
    # a dealer whose signed commitments do not match the shares it encrypted
    other = bytes(32)
    sig = BY_ID[dealer].sign(wire.box_digest(net=NET, receiver=RECEIVER.peer_id, round=g.round, book=fwd.book,
                                             dealer=dealer, holder=k, cb=other, cs=box.cs, ct=box.ct))
    lying = wire.encode(RECEIVER, wire.Forward, net=NET, to=k, round=g.round, book=fwd.book,
                        boxes=[box._replace(cb=other, sig=sig), *fwd.boxes[1:]])
    with pytest.raises(SecAggError) as err:
        g.to_member(k, lying)
    assert err.value.who == (dealer,) and err.value.reason == "bad_share"
    # a dealer that seals other shares than it committed to, under the right key and commitments
    key = share_key(g.ctx, fwd.book, g.ms[dealer]._c, g.ms[k].c_pub, dealer, k, owner=k)
    ct = seal(key, (5).to_bytes(33, "big") * 2, box.cb + box.cs)
    sig = BY_ID[dealer].sign(wire.box_digest(net=NET, receiver=RECEIVER.peer_id, round=g.round, book=fwd.book,
                                             dealer=dealer, holder=k, cb=box.cb, cs=box.cs, ct=ct))
    wrong = wire.encode(RECEIVER, wire.Forward, net=NET, to=k, round=g.round, book=fwd.book,
                        boxes=[box._replace(ct=ct, sig=sig), *fwd.boxes[1:]])
    with pytest.raises(SecAggError) as err:
        g.to_member(k, wrong)
    assert (err.value.reason, err.value.who) == ("bad_share", (dealer,))
    assert g.to_member(k, forwards[k]) is None  # the honest forward still goes through


@pytest.mark.parametrize("case", ["not_survivor_subset", "not_in_survivors", "too_few", "not_masked"])
def test_a_member_signs_only_a_survivor_set_it_can_stand_behind(case):
    g = Group(5)  # t = 3
    xs = updates(g.members, g.size, seed=7)
    forwards = g.deals(g.keys())
    k, j = g.members[0], g.members[1]
    if case == "not_survivor_subset":  # the receiver kept j's shares from k, then names j a survivor
        fwd = wire.parse(forwards[k])
        forwards[k] = wire.encode(RECEIVER, wire.Forward, net=NET, to=k, round=g.round, book=fwd.book,
                                  boxes=[b for b in fwd.boxes if b.dealer != j])
    for m, data in forwards.items():
        g.to_member(m, data)
        if case != "not_masked" or m != k:
            g.rs.receive_masked(m, g.ms[m].mask(xs[m], g.fp))
    u = {"not_survivor_subset": g.members, "not_in_survivors": g.members[1:], "too_few": g.members[:2],
         "not_masked": g.members}[case]
    with pytest.raises(SecAggError) as err:
        g.to_member(k, survivors_msg(g, u))
    assert (err.value.reason, err.value.who) == (case, (RECEIVER.peer_id,))
    assert g.ledgers[k].entry(RECEIVER.peer_id, g.round).survivors is None


def test_messages_not_signed_by_their_sender_are_refused_before_any_work():
    g = Group(3)
    advert = bytearray(g.ms[g.members[0]].advert())
    advert[-1] ^= 1  # the signature's last byte
    with pytest.raises(SecAggError) as err:
        g.to_receiver(bytes(advert))
    assert (err.value.reason, err.value.who) == ("bad_signature", ())
    books = g.keys()
    k = g.members[0]
    forged = bytearray(books[k])
    forged[-1] ^= 1
    with pytest.raises(SecAggError) as err:
        g.to_member(k, bytes(forged))
    assert err.value.reason == "bad_signature"
    # another peer cannot speak for the receiver
    impostor = wire.encode(MEMBERS[5], wire.KeyBook, net=NET, round=g.round, threshold=2, recv_pub=bytes(32),
                           entries=[])
    with pytest.raises(SecAggError, match="wrong_session"):
        g.to_member(k, impostor)


def test_a_revealer_that_lies_about_a_share_is_named():
    g = Group(4)
    xs = updates(g.members, g.size, seed=5)
    forwards = g.deals(g.keys())
    survivors = g.masked(forwards, xs)
    proofs = g.consents(survivors)
    liar = g.members[1]
    honest = wire.parse(g.ms[liar].receive(wire.parse(proofs[liar])))
    # the liar re-seals a wrong share under its reveal key: it decrypts, but is not the share dealt
    rows = list(honest.b_shares)
    nonce = reveal_nonce("b", g.ctx.x(rows[0].dealer))
    rows[0] = rows[0]._replace(ct=seal(g.ms[liar]._reveal_key, bytes(33), b"", nonce))
    lie = wire.encode(BY_ID[liar], wire.Reveal, net=NET, to=RECEIVER.peer_id, round=g.round, book=honest.book,
                      b_shares=rows, s_shares=honest.s_shares)
    with pytest.raises(SecAggError) as err:
        g.to_receiver(lie)
    assert (err.value.reason, err.value.who) == ("wrong_share", (liar,))
    g.to_receiver(g.sent["reveal"].get(liar) or g.ms[liar].receive(wire.parse(proofs[liar])))
    with pytest.raises(SecAggError) as err:  # after its honest reveal, another signed one is equivocation
        g.to_receiver(lie)
    assert (err.value.reason, err.value.who) == ("equivocation", (liar,))
    for k, data in proofs.items():
        if k != liar:
            g.to_receiver(g.to_member(k, data))
    assert_exact(g.rs.result(g.fp), xs)


def test_a_dealer_whose_shares_do_not_give_its_committed_seed_is_named():
    g = Group(4)
    xs = updates(g.members, g.size, seed=6)
    books = g.keys()
    cheat = g.members[2]
    for k, data in books.items():
        deal = wire.parse(g.to_member(k, data))
        if k == cheat:  # commits to another self-mask seed than the one it shared
            g.to_receiver(wire.encode(BY_ID[k], wire.Deal, net=NET, to=RECEIVER.peer_id, round=g.round,
                                      book=deal.book, secret=bytes(32), commits=deal.commits, boxes=deal.boxes))
        else:
            g.to_receiver(wire.encode(BY_ID[k], wire.Deal, **{f: getattr(deal, f) for f in
                                                             ("net", "to", "round", "book", "secret", "commits",
                                                              "boxes")}))
    forwards = g.rs.advance()
    proofs = g.consents(g.masked(forwards, xs))
    with pytest.raises(SecAggError) as err:
        g.reveals(proofs)
    assert (err.value.reason, err.value.who) == ("inconsistent_shares", (cheat,))


def test_a_masked_input_for_another_receiver_round_or_session_is_refused():
    g = Group(3)
    forwards = g.deals(g.keys())
    k = g.members[0]
    g.to_member(k, forwards[k])
    payload = bytearray(g.ms[k].mask(torch.zeros(g.size), g.fp))
    assert len(payload) == 4 * masked_words(g.size)
    payload[0] ^= 1
    with pytest.raises(SecAggError) as err:
        g.rs.receive_masked(k, bytes(payload))
    assert (err.value.reason, err.value.who) == ("wrong_context", (k,))
    with pytest.raises(SecAggError, match="bad_payload"):
        g.rs.receive_masked(k, bytes(payload[:-4]))
    with pytest.raises(SecAggError, match="already_masked"):  # one masked input per session, never two
        g.ms[k].mask(torch.ones(g.size), g.fp)


# --- what one masked input shows -------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 5])
def test_a_masked_input_looks_like_uniform_noise(n):
    g = Group(n, size=50_000)
    xs = {k: torch.full((g.size,), 0.5) for k in g.members}
    g.run(xs)
    y = words(g.sent["masked"][g.members[0]])
    plain = g.fp.encode(xs[g.members[0]])
    assert np.mean(y == plain) < 1e-3
    assert stats.chisquare(np.bincount(y.view(np.uint8), minlength=256)).pvalue > 1e-3
    assert stats.chisquare(np.bincount(y >> 24, minlength=256)).pvalue > 1e-3
    # the same test tells the plain encoding from noise at once: it has power
    assert stats.chisquare(np.bincount(plain.view(np.uint8), minlength=256)).pvalue < 1e-100


def test_the_lineage_commitment_hides_and_binds():
    parents = [bytes([1]) * 32, bytes([2]) * 32]
    a, b = lineage_commitment(parents, bytes(32)), lineage_commitment(parents, bytes([1]) * 32)
    assert a != b and len(a) == 32
    assert lineage_commitment(parents[:1], bytes(32)) != a
    with pytest.raises(ValueError):
        lineage_commitment(parents, bytes(31))


def test_every_derived_key_is_bound_to_its_context():
    """Fresh keys make sessions independent already; the derivations bind the context too, so
    that even a reused key pair gives unrelated seeds in another network, receiver or round."""
    from privacy.secagg import contribution_tag, reveal_key, secret_commitment, share_commitment

    a, b = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    m = [p.peer_id for p in MEMBERS[:3]]
    ctxs = [Context(NET, RECEIVER.peer_id, 3, m), Context(NET + "x", RECEIVER.peer_id, 3, m),
            Context(NET, MEMBERS[5].peer_id, 3, m), Context(NET, RECEIVER.peer_id, 4, m)]
    book = bytes(32)
    derived = [(pair_seed(c, a, public_raw(b), m[0], m[1]), share_key(c, book, a, public_raw(b), m[0], m[1], m[1]),
                reveal_key(c, book, a, public_raw(b), m[0], m[0]), share_commitment(c, book, m[0], m[1], "b", bytes(33)),
                secret_commitment(c, book, m[0], bytes(32)), contribution_tag(c, book, m[0])) for c in ctxs]
    for i in range(6):
        assert len({d[i] for d in derived}) == len(ctxs)
    c = ctxs[0]
    assert pair_seed(c, a, public_raw(b), m[0], m[1]) == pair_seed(c, b, public_raw(a), m[1], m[0])
    assert share_key(c, book, a, public_raw(b), m[0], m[1], m[1]) != share_key(c, book, a, public_raw(b), m[1], m[0], m[1])
    assert contribution_tag(c, bytes([1]) * 32, m[0]) != contribution_tag(c, book, m[0])
