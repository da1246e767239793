"""The round state machine alone: a fake clock, no sockets, no sleeps, no asyncio."""

from __future__ import annotations

import pytest
import torch

from gossip.envelope import seal_update
from gossip.identity import Identity
from gossip.verify import Accepted, Reason, Rejected, Verifier
from peer.runtime.commands import Combine, Finish, JumpTo, Log, Persist, Resend, Send, Skip
from peer.runtime.exchange import DirectExchange
from peer.runtime.round import (
    OfferKind,
    RoundPolicy,
    RoundState,
)
from peer.state.provenance import EventKind

SCHEMA = b"s" * 32
IDS = [Identity.from_seed(bytes([i + 1]) * 32) for i in range(5)]
NB = [i.peer_id for i in IDS]


def state(neighbours=NB[:3], metropolis_hastings=False, degrees=None, **kw) -> RoundState:
    policy = RoundPolicy(neighbours=frozenset(neighbours), peer_id="me", **kw)
    return RoundState(policy, DirectExchange(policy, metropolis_hastings, degrees or {}))


def verifier(**kw) -> Verifier:
    return Verifier("n", set(NB), SCHEMA, 4, neighbours=set(NB), max_lead=10**6, **kw)


def update(i: int, round_: int, value: float = 1.0) -> Accepted:
    sealed = seal_update(IDS[i], torch.full((4,), value), net="n", round=round_, schema=SCHEMA)
    result = verifier(max_lag=10**6).verify(sealed.data, round_)
    assert isinstance(result, Accepted), result
    return result


def future_claim(i: int, round_: int, current: int) -> Rejected:
    """A signed update from neighbour i for a round beyond the verifier's window."""
    sealed = seal_update(IDS[i], torch.ones(4), net="n", round=round_, schema=SCHEMA)
    result = Verifier("n", set(NB), SCHEMA, 4, neighbours=set(NB), max_lead=2).verify(sealed.data, current)
    assert isinstance(result, Rejected) and result.reason == Reason.FUTURE_ROUND
    return result


def events(commands, kind=None):
    return [c.event for c in commands if isinstance(c, Log) and (kind is None or c.event.kind == kind)]


def start_and_train(s: RoundState, now: float = 0.0) -> list:
    out = s.start()
    out += s.trained(now, {"loss": 1.0})
    out += s.sent("own-id", [(nb, "own-id", {}) for nb in sorted(s.cfg.neighbours)])
    return out


def test_a_round_sends_collects_aggregates_and_checkpoints():
    s = state(rule="median", f=1)
    out = start_and_train(s, now=100.0)
    assert [type(c) for c in out] == [Log, Send, Log, Log, Log]
    assert events(out, EventKind.TRAINED)[0].details == {"loss": 1.0}
    ups = [update(i, 0) for i in range(3)]
    for u in ups:
        kind, cmds = s.offer(u, size=10)
        assert kind is OfferKind.ACCEPTED and events(cmds)[0].kind == EventKind.RECEIVED
    assert s.ready(100.0)  # everyone delivered: no need to wait for the deadline
    (agg,) = s.close()
    assert isinstance(agg, Combine) and agg.round == 0 and agg.senders == tuple(sorted(NB[:3]))
    (ck,) = s.aggregated(agg.senders, None, {"selected": []})
    assert ck == Persist(1) and s.round == 1
    done = s.committed(1, "ab" * 32)
    (aggregated,) = events(done, EventKind.AGGREGATED)
    assert aggregated.round == 0 and aggregated.update_hash == "ab" * 32
    assert aggregated.details["inputs"][0] == "own-id" and aggregated.details["senders"][0] == "me"
    assert events(done, EventKind.CHECKPOINT)[0].details == {"next_round": 1, "params_hash": "ab" * 32}
    assert s.parents == ("own-id", *(u.update_id for u in sorted(ups, key=lambda u: u.sender)))


def test_the_deadline_closes_a_round_with_missing_neighbours():
    s = state(rule="median", f=1, deadline=10.0)
    start_and_train(s, now=50.0)
    s.offer(update(0, 0))
    s.offer(update(1, 0))
    assert not s.ready(59.9) and s.wait_time(55.0) == pytest.approx(5.0)
    assert s.ready(60.0)
    (agg,) = s.close()
    assert set(agg.senders) == {NB[0], NB[1]}  # the silent neighbour is simply absent


def test_quorum_closes_before_the_slowest():
    s = state(quorum=2, deadline=10.0)
    start_and_train(s)
    s.offer(update(0, 0))
    assert not s.ready(0.1)
    s.offer(update(2, 0))
    assert s.ready(0.1)


def test_a_rule_that_cannot_use_what_arrived_skips_with_a_reason():
    s = state(rule="krum", f=1)  # krum needs n > 2f + 2 = 4 rows
    start_and_train(s)
    s.offer(update(0, 0))
    s.offer(update(1, 0))
    out = s.close()
    skip = next(c for c in out if isinstance(c, Skip))
    assert "krum cannot tolerate f=1 with 3 rows" in skip.reason
    assert events(out, EventKind.SKIPPED)[0].details["have"] == 3
    assert out[-1] == Persist(1) and s.parents == ("own-id",)
    # no `aggregated` event: the model it checkpoints is the own one
    assert not events(s.committed(1, "cd" * 32), EventKind.AGGREGATED)


def test_catch_up_takes_the_f_plus_first_highest_claim_not_the_highest():
    s = state(neighbours=NB[:4], f=1)
    s.screened(future_claim(0, 1000, current=0))  # one liar far ahead
    assert s.catch_up_target() is None
    s.screened(future_claim(1, 5, current=0))
    s.screened(future_claim(2, 7, current=0))
    assert s.catch_up_target() == 7  # (f+1)-th highest of {1000, 7, 5}
    out = s.start()
    assert out[0] == JumpTo(7, 0) and s.round == 7
    # the update that proved round 7 now counts (its payload checked first); 1000 stays a claim
    assert [c.envelope.round for c in out[1:] if isinstance(c, Finish)] == [7]


def stale(i: int, round_: int, current: int, forged: bool = False) -> Rejected:
    """A (signed, or with a forged signature) update from neighbour i for a round already left."""
    sealed = seal_update(IDS[i], torch.ones(4), net="n", round=round_, schema=SCHEMA)
    result = verifier().screen(sealed.data, current)
    assert isinstance(result, Rejected) and result.reason == Reason.STALE_ROUND
    if forged:
        env = result.envelope
        result = Rejected(result.reason, result.detail, result.sender, result.round,
                          type(env)(env.header, env.payload, b"\x00" * 64, env.size))
    return result


def test_a_peer_back_from_a_crash_counts_its_neighbours_updates_at_the_round_it_jumps_to():
    """Restarted at round 3, it hears its neighbours' round-9 updates (beyond the window): the
    round it is in closes without waiting for them, and after the jump they count."""
    s = state(neighbours=NB[:2], f=0, deadline=100.0)
    s.resume(3, [], [])
    start_and_train(s)
    for i in (0, 1):
        s.screened(future_claim(i, 9, current=3))
    assert s.ready(1.0)  # long before the deadline: both neighbours proved they left round 3
    s.close(1.0)
    s.aggregated((), None, {})
    out = s.start()
    assert out[0] == JumpTo(9, 4)
    finished = [c.envelope for c in out if isinstance(c, Finish)]
    assert sorted(e.sender for e in finished) == sorted(NB[:2]) and {e.round for e in finished} == {9}
    assert not s.proofs  # each proof counted once


def test_a_neighbour_one_round_on_is_still_waited_for():
    """Its update for this round may still be in verification: only two rounds on, it is not."""
    s = state(neighbours=NB[:1], f=0, deadline=100.0)
    start_and_train(s)
    s.offer(update(0, 1))  # buffered: neighbour 0 is at round 1
    assert not s.ready(1.0) and s.ready(100.0)


def test_a_proof_inside_the_window_after_a_normal_round_counts_then():
    s = state(neighbours=NB[:1], f=0, max_lead=2)
    start_and_train(s)
    s.screened(future_claim(0, 3, current=0))  # round 3: beyond 0 + 2
    s.close(1.0)
    s.skip("test")
    out = s.start()  # round 1: 3 is inside now
    assert [c.envelope.round for c in out if isinstance(c, Finish)] == [3] and not s.proofs


def test_a_neighbour_behind_is_sent_the_newest_update_again_once_per_round_and_only_if_signed():
    s = state(neighbours=NB[:2], f=0)
    s.resume(5, [], [])
    start_and_train(s)
    assert [c for c in s.screened(stale(0, 4, current=5)) if isinstance(c, Resend)] == []  # one behind: a race
    assert [c for c in s.screened(stale(0, 2, current=5, forged=True)) if isinstance(c, Resend)] == []
    assert [c for c in s.screened(stale(0, 2, current=5)) if isinstance(c, Resend)] == [Resend(NB[0])]
    assert [c for c in s.screened(stale(0, 3, current=5)) if isinstance(c, Resend)] == []  # once a round
    assert [c for c in s.screened(stale(4, 3, current=5)) if isinstance(c, Resend)] == []  # not a neighbour
    s.close(1.0)
    s.skip("test")
    s.start()
    assert [c for c in s.screened(stale(0, 4, current=6)) if isinstance(c, Resend)] == [Resend(NB[0])]


def test_future_round_claims_count_only_when_signed():
    s = state(f=0)
    claim = future_claim(0, 9, current=0)
    forged = Rejected(claim.reason, claim.detail, claim.sender, claim.round,
                      type(claim.envelope)(claim.envelope.header, claim.envelope.payload, b"\x00" * 64, claim.envelope.size))
    s.screened(forged)
    assert s.catch_up_target() is None
    s.screened(claim)
    assert s.catch_up_target() == 9


def test_an_update_for_a_later_round_is_buffered_and_counts_when_its_round_begins():
    kept = []
    s = state(rule="mean", f=0)
    s.keep = lambda u: kept.append((u.sender, u.envelope.round)) or u
    start_and_train(s)
    kind, cmds = s.offer(update(0, 1))
    assert kind is OfferKind.BUFFERED and events(cmds, EventKind.RECEIVED) and kept == []
    kind, _ = s.offer(update(1, 5))
    assert kind is OfferKind.DROPPED  # beyond max_lead = 2 buffered rounds
    s.close()
    s.aggregated((), None, {})
    assert s.round == 1 and list(s.collected) == [NB[0]] and kept == [(NB[0], 1)]


def test_updates_for_a_past_round_are_dropped():
    s = state()
    s.resume(3, [], [])
    kind, cmds = s.offer(update(0, 2))
    assert kind is OfferKind.DROPPED and cmds == [] and not s.collected


def test_the_rate_limit_keys_on_the_authenticated_sender():
    s = state(per_neighbour_limit=1, max_lead=2)  # 1 x (1 + 2 buffered rounds) = 3 per round
    env = update(0, 0).envelope
    out = [s.screened(env) for _ in range(6)]
    assert [type(o[0]) if o else None for o in out] == [Finish, Finish, Finish, Log, None, None]
    (limited,) = events(out[3])
    assert limited.kind == EventKind.RATE_LIMITED and limited.counterpart == NB[0]
    assert s.rejected["rate_limited"] == 3 and s.total_rejected["rate_limited"] == 3
    assert isinstance(s.screened(update(1, 0).envelope)[0], Finish)  # other senders are unaffected
    start_and_train(s)
    s.close()
    s.aggregated((), None, {})
    assert isinstance(s.screened(env)[0], Finish)  # a new round, a new allowance


def test_a_second_copy_verified_at_the_same_time_is_a_replay_logged_under_the_sender():
    s = state()
    start_and_train(s)
    first, second = update(0, 0), update(0, 0)
    assert s.offer(first)[0] is OfferKind.ACCEPTED
    kind, cmds = s.offer(second)
    assert kind is OfferKind.REJECTED
    (ev,) = events(cmds)
    assert ev.kind == EventKind.REJECTED and ev.counterpart == NB[0] and ev.details["reason"] == "replay"
    assert (NB[0], 0) in s.seen


def test_rejections_from_strangers_are_counted_per_reason_and_round_not_logged_one_by_one():
    s = state()
    start_and_train(s)
    for k in range(500):
        claimed = f"12D3KooWclaimed{k % 20}"
        assert s.screened(Rejected(Reason.UNKNOWN_SENDER, "not trusted", claimed, 0)) == []
    s.screened(Rejected(Reason.MALFORMED, "garbage"))
    out = s.close()
    summary = {e.details["reason"]: e for e in events(out, EventKind.REJECTED)}
    assert summary["unknown_sender"].details["count"] == 500
    assert len(summary["unknown_sender"].details["claimed"]) == 8  # a bounded sample, as claimed
    assert summary["unknown_sender"].counterpart is None  # never attributed to anyone
    assert summary["unknown_sender"].details["authenticated"] is False
    assert summary["malformed"].details["count"] == 1
    assert s.rejected["unknown_sender"] == 500


def test_metropolis_hastings_moves_a_missing_neighbours_weight_to_the_own_model():
    degrees = {NB[0]: 2, NB[1]: 2, NB[2]: 2}
    s = state(rule="mean", f=0, metropolis_hastings=True, degrees=degrees)
    start_and_train(s)
    s.offer(update(0, 0))
    s.offer(update(1, 0))
    (agg,) = s.close()
    # degree 3 (own) vs 2: each edge weight 1/(1+3) = 0.25; self 1 - 3 * 0.25 = 0.25, plus the missing 0.25
    assert agg.weights == pytest.approx((0.5, 0.25, 0.25))
    assert sum(agg.weights) == pytest.approx(1.0)


def test_resume_restores_round_parents_and_the_replay_window():
    s = state()
    s.resume(4, ["aa" * 32], [[NB[0], 4]])
    assert s.round == 4 and s.parents == ("aa" * 32,)
    start_and_train(s)
    assert s.offer(update(0, 4))[0] is OfferKind.REJECTED  # accepted before the restart
    assert s.offer(update(1, 4))[0] is OfferKind.ACCEPTED


def test_the_replay_window_forgets_exactly_the_rounds_behind_the_lag():
    s = state(max_lag=1, max_lead=5)
    s.resume(5, [], [[NB[0], 4], [NB[0], 5], [NB[0], 6], [NB[0], 7]])
    start_and_train(s)
    s.close()
    s.aggregated((), None, {})  # round 6 begins: rounds >= 6 - max_lag can still pass the round check
    assert s.seen == {(NB[0], 5), (NB[0], 6), (NB[0], 7)}
