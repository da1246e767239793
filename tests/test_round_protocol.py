"""The round state machine guards itself: every legal (phase, input) of its transition table
works, every other one raises RoundProtocolError naming the phase and the input. And tests that
kill mutants the older suite let through (catch-up at the same round, the buffer bound, the
degree a neighbour signs)."""

from __future__ import annotations

import pytest
import torch

from gossip.envelope import seal_update
from gossip.identity import Identity
from gossip.verify import Accepted, Verifier
from peer.runtime.commands import Combine, JumpTo
from peer.runtime.exchange import DirectExchange
from peer.runtime.round import (
    TRANSITIONS,
    Input,
    OfferKind,
    Phase,
    RoundPolicy,
    RoundProtocolError,
    RoundState,
)
from privacy import secagg_wire as wire
from privacy.secagg import Context
from privacy.secagg_ledger import MemberLedger
from privacy.secagg_member import MemberSession

from .secagg_helpers import NET, Neighbourhood, updates

SCHEMA = b"s" * 32
IDS = [Identity.from_seed(bytes([i + 1]) * 32) for i in range(4)]
NB = [i.peer_id for i in IDS]


def update(i: int, round_: int, deg: int = 0) -> Accepted:
    sealed = seal_update(IDS[i], torch.ones(4), net="n", round=round_, schema=SCHEMA, deg=deg)
    result = Verifier("n", set(NB), SCHEMA, 4, neighbours=set(NB), max_lead=10**6, max_lag=10**6).verify(
        sealed.data, round_)
    assert isinstance(result, Accepted), result
    return result


def fresh(**kw) -> RoundState:
    policy = RoundPolicy(neighbours=frozenset(NB[:3]), peer_id="me", rule="mean", **kw)
    return RoundState(policy, DirectExchange(policy))


def exchanging() -> RoundState:
    """secure_mean's state machine with real members, closed with 2 of 3 masked inputs: it
    waits for consents (EXCHANGING)."""
    h = Neighbourhood(n=3)
    xs = updates(h.members, h.size, seed=5)
    h.start(0.0)
    forwards = h.answer(h.adverts(0.0), 0.0)
    h.answer(forwards, 0.0)
    h.state.trained(0.0, {})
    h.state.sent("own", [])
    for k in h.members[:2]:
        h.masked(k, xs[k], 0.0)
    h.state.close(5.0)
    assert h.state.phase is Phase.EXCHANGING
    return h.state


def in_phase(phase: Phase) -> RoundState:
    """A state machine driven, by legal calls only, into `phase`."""
    if phase is Phase.EXCHANGING:
        return exchanging()
    s = fresh()
    if phase is Phase.NEW:
        return s
    s.start()
    if phase is Phase.TRAINING:
        return s
    s.trained(0.0, {})
    s.sent("own", [])
    if phase is Phase.COLLECTING:
        return s
    s.offer(update(0, 0))
    s.offer(update(1, 0))
    out = s.close(1.0)
    assert s.phase is Phase.CLOSED, out
    if phase is Phase.CLOSED:
        return s
    s.aggregated((NB[0], NB[1]), None, {})
    assert s.phase is Phase.IDLE
    return s


CALLS = {
    Input.RESUME: lambda s: s.resume(3, [], []),
    Input.SET_NEIGHBOURS: lambda s: s.set_neighbours(frozenset(NB[:2])),
    Input.START: lambda s: s.start(),
    Input.TRAINED: lambda s: s.trained(0.0, {}),
    Input.SENT: lambda s: s.sent("own", []),
    Input.CLOSE: lambda s: s.close(1.0),
    Input.EXCHANGE_DONE: lambda s: s.exchange_done(),
    Input.AGGREGATED: lambda s: s.aggregated((), None, {}),
    Input.SKIP: lambda s: s.skip("the rule failed"),
    Input.PERSIST: lambda s: s.persist(),
    Input.COMMITTED: lambda s: (s.persist(), s.committed(s.round, "ab" * 32)),
}


@pytest.mark.parametrize("phase", list(Phase))
@pytest.mark.parametrize("what", list(Input))
def test_every_transition_is_legal_exactly_where_the_table_says(phase, what):
    s = in_phase(phase)
    if (phase, what) in TRANSITIONS:
        CALLS[what](s)
        assert s.phase in TRANSITIONS[(phase, what)]
    else:
        with pytest.raises(RoundProtocolError) as err:
            CALLS[what](s)
        assert str(phase) in str(err.value) and str(what) in str(err.value)
        assert s.phase is phase  # an illegal call changes nothing


def test_the_calls_that_used_to_pass_silently_now_raise():
    s = fresh()
    with pytest.raises(RoundProtocolError, match="close is not allowed in phase new"):
        s.close()  # from idle it used to return Aggregate(round=0)
    s.start()
    s.trained(0.0, {})
    (combine,) = s.close()
    assert isinstance(combine, Combine)
    with pytest.raises(RoundProtocolError, match="close is not allowed in phase closed"):
        s.close()  # a second close used to return a second Aggregate
    with pytest.raises(RoundProtocolError, match="trained is not allowed in phase closed"):
        s.trained(0.0, {})  # used to return Send


def test_a_durable_checkpoint_nobody_asked_for_is_a_driver_bug():
    s = fresh()
    with pytest.raises(RoundProtocolError, match="no checkpoint of round 5"):
        s.committed(5, "ab" * 32)


def test_messages_are_judged_in_every_phase_never_raised_on():
    stranger = IDS[3]
    ctx = Context(NET, "12D3KooWAaYVakMyznsMrUbM1TPKUnduj2tCfQiM6zujqQmepeqr", 9, (NB[2], stranger.peer_id))
    advert = wire.parse(MemberSession(stranger, ctx, MemberLedger()).advert())
    for phase in Phase:
        s = in_phase(phase)
        s.screened(update(2, s.round).envelope)
        s.offer(update(2, s.round + 1))
        s.reject("wrong_kind", "x", NB[2], True)
        (refused,) = s.exchanged(stranger.peer_id, 9, advert, 1.0)  # unasked-for: refused, never a crash
        assert refused.reason in ("unexpected_message", "no_session") and not refused.authenticated
        assert s.phase is phase


def test_buffered_updates_survive_when_f_plus_one_neighbours_are_at_the_same_round():
    # neighbours one round ahead send round-1 updates while this peer is in round 0; when it
    # begins round 1 they are exactly at its round: no jump (which would drop the buffer)
    s = fresh(f=1)
    s.start()
    s.trained(0.0, {})
    for i in range(3):
        assert s.offer(update(i, 1))[0] is OfferKind.BUFFERED
    s.close()
    s.aggregated((), None, {})
    assert s.round == 1 and len(s.collected) == 3
    assert not any(isinstance(c, JumpTo) for c in s.start())
    assert s.round == 1 and len(s.collected) == 3


def test_an_update_at_the_edge_of_the_buffer_is_kept_and_one_beyond_is_not_marked_seen():
    s = fresh(max_lead=2)
    s.start()
    s.trained(0.0, {})
    assert s.offer(update(0, 2))[0] is OfferKind.BUFFERED  # round + max_lead: the verifier accepts it
    assert s.offer(update(1, 3))[0] is OfferKind.DROPPED  # beyond: dropped, and not remembered as seen
    assert (NB[0], 2) in s.seen and (NB[1], 3) not in s.seen
    s.close()
    s.aggregated((), None, {})
    s.start()  # NB[1] proved it is at round 3: with f = 0 the peer catches up
    assert s.round == 3 and not s.collected
    edge = fresh(max_lead=2)
    edge.start()
    edge.trained(0.0, {})
    edge.offer(update(0, 2))
    edge.close()
    edge.aggregated((), None, {})
    assert edge.start() == [JumpTo(2, 1)]  # f = 0: one proven neighbour ahead is followed
    assert edge.round == 2 and list(edge.collected) == [NB[0]]  # and its buffered update counts


def test_metropolis_hastings_uses_the_degree_a_neighbour_signed():
    policy = RoundPolicy(neighbours=frozenset(NB[:3]), peer_id="me", rule="mean")
    s = RoundState(policy, DirectExchange(policy, True, {n: 2 for n in NB[:3]}))
    s.start()
    s.trained(0.0, {})
    s.offer(update(0, 0, deg=4))  # the plan says 2; the signed header says 4 (membership changed)
    s.offer(update(1, 0, deg=2))
    s.offer(update(2, 0, deg=2))
    (combine,) = s.close()
    # weight of an edge: 1 / (1 + max(own degree 3, theirs)): 0.2 for the neighbour of degree 4
    expected = {NB[0]: 0.2, NB[1]: 0.25, NB[2]: 0.25}
    assert combine.weights == pytest.approx((1 - 0.7, *(expected[s] for s in combine.senders)))
