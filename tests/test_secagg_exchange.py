"""The pure side of secure_mean in a peer (peer.runtime.secagg_exchange) with a fake clock: the
round state machine runs double masking's sub-phases, closes each one as soon as everyone
answered or at its own deadline, waits only for the members that can still deliver, refuses a
late masked input, and, as a member, puts its ledger on record before anything leaves."""

from __future__ import annotations

import torch

from peer.runtime.commands import Log, Reject, Skip, Transmit
from peer.runtime.round import OfferKind, Phase, RoundPolicy, RoundState
from peer.runtime.secagg_exchange import Mask, SecAggExchange, Unmask, threshold_for
from peer.state.provenance import EventKind
from privacy import secagg_wire as wire
from privacy.masking import FixedPoint
from privacy.secagg import Context
from privacy.secagg_ledger import MemberLedger
from privacy.secagg_member import MemberSession
from privacy.secagg_receiver import ReceiverSession

from .secagg_helpers import BY_ID, MEMBERS, NET, RECEIVER, Neighbourhood, plain_sum, updates

D = 5.0  # each sub-phase's deadline


def keys_and_shares(h: Neighbourhood, now: float, drop_keys=(), drop_deals=()) -> None:
    books = h.adverts(now, drop_keys)
    if drop_keys:
        assert books == {} and h.ex.wake_at() == now + D
        assert h.state.tick(now + D - 0.01) == []
        books = h.sends(h.run(h.state.tick(now + D)))
        now += D
    assert sorted(books) == sorted(set(h.members) - set(drop_keys))
    forwards = h.answer(books, now, drop_deals)
    if drop_deals:
        assert forwards == {}
        forwards = h.sends(h.run(h.state.tick(now + D)))
    assert sorted(forwards) == sorted(set(books) - set(drop_deals))
    assert h.answer(forwards, now) == {}  # a forward needs no answer: the shares are in


def test_a_round_where_everyone_answers_never_waits_for_a_deadline():
    h = Neighbourhood(n=3)
    xs = updates(h.members, h.size, seed=1)
    h.start(0.0)
    keys_and_shares(h, 0.0)
    h.run(h.state.trained(0.5, {}))
    assert not h.state.ready(0.5)
    for k in h.members:
        assert h.masked(k, xs[k], 0.6)[0] is OfferKind.ACCEPTED
    assert h.state.ready(0.6)  # all three dealers delivered: no waiting for the deadline at 5.5
    survivors = h.sends(h.run(h.state.close(0.6)))
    assert h.state.phase is Phase.EXCHANGING and sorted(survivors) == h.members
    proofs = h.answer(survivors, 0.7)
    assert not h.state.ready(0.7) and sorted(proofs) == h.members
    assert h.answer(proofs, 0.8) == {} and h.state.ready(0.8)
    (unmask,) = h.run(h.state.exchange_done())
    assert isinstance(unmask, Unmask)
    result = unmask.session.result(FixedPoint(h.bound, h.n))
    assert result.survivors == tuple(h.members)
    assert (result.total.double() - plain_sum(xs, h.members, h.bound)).abs().max() <= FixedPoint(1.0, 3).error()
    steps = [c.event.details["step"] for c in h.log if isinstance(c, Log) and c.event.kind is EventKind.SECAGG
             and c.event.details["role"] == "receiver"]
    assert steps == ["keys", "deals", "masked", "consents"]


def test_each_sub_phase_closes_at_its_own_deadline_and_the_round_waits_only_for_dealers():
    h = Neighbourhood(n=5)  # t = 3: two may drop out
    silent_keys, silent_deal = h.members[0], h.members[1]
    xs = updates(h.members, h.size, seed=2)
    h.start(0.0)
    keys_and_shares(h, 0.0, drop_keys=[silent_keys], drop_deals=[silent_deal])  # deals close at 10.0
    dealers = [k for k in h.members if k not in (silent_keys, silent_deal)]
    assert h.ex.awaited(h.policy.neighbours) == frozenset(dealers)
    h.run(h.state.trained(1.0, {}))  # the round's own deadline would be 6.0: masks get D after the forward
    assert h.ex.collecting_deadline(6.0) == 15.0
    for k in dealers[:2]:
        h.masked(k, xs[k], 11.0)
    assert not h.state.ready(14.9) and h.state.ready(15.0)
    h.masked(dealers[2], xs[dealers[2]], 11.0)
    assert h.state.ready(11.0)
    survivors = h.sends(h.run(h.state.close(11.0)))
    assert h.ex.wake_at() == 16.0
    proofs = h.answer(survivors, 11.0)
    h.answer(proofs, 11.0, drop=[dealers[1]])  # one reveal missing: 2 of the threshold 3
    assert not h.state.ready(15.9) and h.state.ready(16.0)
    (skip, *_) = h.run(h.state.exchange_done())
    assert isinstance(skip, Skip) and "2 reveals, threshold 3" in skip.reason


def test_too_few_members_at_the_keys_phase_end_the_round_at_once_with_the_reason():
    h = Neighbourhood(n=3)
    h.start(0.0)
    h.adverts(0.0, drop=h.members[:2])
    h.run(h.state.tick(D))
    failed = [c.event.details for c in h.log if isinstance(c, Log) and c.event.details.get("step") == "failed"]
    assert failed[0]["reason"] == "too_few" and failed[0]["phase"] == "keys"
    h.run(h.state.trained(6.0, {}))
    assert h.ex.awaited(h.policy.neighbours) == frozenset() and h.state.ready(6.0)
    skip = next(c for c in h.run(h.state.close(6.0)) if isinstance(c, Skip))
    assert "phase keys: too_few" in skip.reason


def test_a_masked_input_after_the_survivor_set_is_refused_as_late():
    h = Neighbourhood(n=3)
    xs = updates(h.members, h.size, seed=3)
    h.start(0.0)
    keys_and_shares(h, 0.0)
    h.run(h.state.trained(0.0, {}))
    late = h.members[2]
    for k in h.members[:2]:
        h.masked(k, xs[k], 1.0)
    assert h.state.ready(5.0)
    h.run(h.state.close(5.0))
    kind, cmds = h.masked(late, xs[late], 5.1)
    assert kind is OfferKind.REJECTED and h.state.rejected["late"] == 1
    assert cmds[0].event.details["reason"] == "late" and cmds[0].event.counterpart == late


def test_a_member_logs_its_ledger_before_each_message_and_masks_once_trained_and_forwarded():
    me, j = MEMBERS[0], RECEIVER  # this peer is a member of j's group with two others
    group = tuple(sorted(p.peer_id for p in MEMBERS[:3]))
    policy = RoundPolicy(neighbours=frozenset({j.peer_id}), peer_id=me.peer_id, rule="secure_mean", deadline=D)
    ex = SecAggExchange(policy, me, NET, {j.peer_id: group}, 8)
    state = RoundState(policy, ex)
    ctx = Context(NET, j.peer_id, 0, group)
    rs = ReceiverSession(j, ctx, size=8)
    others = {k: MemberSession(BY_ID[k], ctx, MemberLedger()) for k in group if k != me.peer_id}
    logged = []

    def before_send(cmds):
        """Every Transmit comes after a ledger event of that session (durable where a restart
        must know it: the advert and the reveal)."""
        seen_durable = False
        logged.extend(c.event.details for c in cmds if isinstance(c, Log) and c.event.kind is EventKind.SECAGG_LEDGER)
        for c in cmds:
            if isinstance(c, Log) and c.event.kind is EventKind.SECAGG_LEDGER and (
                    c.durable or c.event.details["phase"] in ("dealt", "consented")):
                seen_durable = True
            if isinstance(c, Transmit):
                assert seen_durable, cmds
        return [c for c in cmds if isinstance(c, Transmit)]

    (advert,) = before_send(state.start(0.0))
    rs.receive(wire.parse(advert.data))
    for s in others.values():
        rs.receive(wire.parse(s.advert()))
    books = rs.advance()
    (deal,) = before_send(state.exchanged(j.peer_id, 0, wire.parse(books[me.peer_id]), 0.1))
    rs.receive(wire.parse(deal.data))
    for k, s in others.items():
        rs.receive(wire.parse(s.receive(wire.parse(books[k]))))
    forwards = rs.advance()
    assert state.exchanged(j.peer_id, 0, wire.parse(forwards[me.peer_id]), 0.2) == []  # not trained yet
    masks = [c for c in state.trained(1.0, {}) if isinstance(c, Mask)]
    assert [(m.receivers, m.round) for m in masks] == [((j.peer_id,), 0)]
    # a second forward of the same bytes changes nothing and masks nothing twice
    assert state.exchanged(j.peer_id, 0, wire.parse(forwards[me.peer_id]), 1.1) == []
    # the rest of the session, with the mask made as the wire makes it: the reveal is durable first
    fp = FixedPoint(1.0, 3)
    rs.receive_masked(me.peer_id, masks[0].sessions[0].mask(torch.zeros(8), fp))
    logged.append(masks[0].sessions[0].record())  # what the wire logs with the masked input
    for k, s in others.items():
        assert s.receive(wire.parse(forwards[k])) is None
        rs.receive_masked(k, s.mask(torch.zeros(8), fp))
    survivors = rs.advance()
    (consent,) = before_send(state.exchanged(j.peer_id, 0, wire.parse(survivors[me.peer_id]), 1.2))
    rs.receive(wire.parse(consent.data))
    for k, s in others.items():
        rs.receive(wire.parse(s.receive(wire.parse(survivors[k]))))
    proofs = rs.advance()
    (reveal,) = before_send(state.exchanged(j.peer_id, 0, wire.parse(proofs[me.peer_id]), 1.3))
    reveal_logs = [c for c in state.exchanged(j.peer_id, 0, wire.parse(proofs[me.peer_id]), 1.4)]
    assert [type(c) for c in reveal_logs] == [Transmit]  # a repeated proof: the same reveal, logged once
    rs.receive(wire.parse(reveal.data))
    # a restarted member, its ledger read back from what it logged, starts no second session
    assert [r["phase"] for r in logged] == ["advertised", "dealt", "masked", "consented", "revealed"]
    again = SecAggExchange(policy, me, NET, {j.peer_id: group}, 8)
    again.restore(logged)
    notes = [c.event.details for c in again.start(0, 5.0) if isinstance(c, Log)]
    assert notes[0]["step"] == "member_skipped" and "already_started" in notes[0]["detail"]
    assert not any(isinstance(c, Transmit) for c in again.start(0, 5.0))


def test_unsolicited_messages_are_refused_without_a_session():
    h = Neighbourhood(n=3)
    h.start(0.0)
    stranger = MEMBERS[5]
    s = MemberSession(stranger, Context(NET, RECEIVER.peer_id, 9, (stranger.peer_id, MEMBERS[6].peer_id)),
                      MemberLedger())
    (rej,) = h.state.exchanged(stranger.peer_id, 9, wire.parse(s.advert()), 0.0)
    assert isinstance(rej, Reject) and rej.reason == "no_session" and not rej.authenticated


def test_the_threshold_choices():
    assert [threshold_for("majority", n) for n in (2, 3, 4, 5, 8)] == [2, 2, 3, 3, 5]
    assert [threshold_for("two_thirds", n) for n in (2, 3, 4, 5, 8)] == [2, 3, 3, 4, 6]


def test_a_member_whose_budget_is_spent_masks_nothing():
    """transmit False (the privacy budget ran out): its keys and shares were dealt, but no masked
    input leaves - it drops out of its neighbours' rounds like a silent member."""
    me, j = MEMBERS[0], RECEIVER
    group = tuple(sorted(p.peer_id for p in MEMBERS[:3]))
    policy = RoundPolicy(neighbours=frozenset({j.peer_id}), peer_id=me.peer_id, rule="secure_mean", deadline=D)
    state = RoundState(policy, SecAggExchange(policy, me, NET, {j.peer_id: group}, 8))
    ctx = Context(NET, j.peer_id, 0, group)
    rs = ReceiverSession(j, ctx, size=8)
    others = {k: MemberSession(BY_ID[k], ctx, MemberLedger()) for k in group if k != me.peer_id}
    advert = next(c for c in state.start(0.0) if isinstance(c, Transmit))
    rs.receive(wire.parse(advert.data))
    for s in others.values():
        rs.receive(wire.parse(s.advert()))
    books = rs.advance()
    deal = next(c for c in state.exchanged(j.peer_id, 0, wire.parse(books[me.peer_id]), 0.1) if isinstance(c, Transmit))
    rs.receive(wire.parse(deal.data))
    for k, s in others.items():
        rs.receive(wire.parse(s.receive(wire.parse(books[k]))))
    forwards = rs.advance()
    state.exchanged(j.peer_id, 0, wire.parse(forwards[me.peer_id]), 0.2)
    assert not any(isinstance(c, Mask) for c in state.trained(1.0, {}, transmit=False))
