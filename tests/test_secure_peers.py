"""secure_mean in real peers: double masking over the memory transport (virtual time) and
libp2p. Each peer ends with the plain mean of what its neighbours sent (within the fixed-point
error), with drop-outs at any phase up to n - t; and the three exposures of single masking
(issue 22) recover nothing now: a late masked input, a receiver that tells members different
survivor sets, a member restarted in the round it had sent."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from scipy import stats

from gossip.envelope import parse, seal_update
from gossip.trust import load_trust_list
from gossip.verify import Reason, Verifier
from peer.audit.verify import load_events, verify_log
from peer.errors import ConfigError
from peer.ops.plan import write_plan
from peer.runtime.local import build_memory_network, memory_peer
from peer.runtime.secagg_exchange import Unmask
from peer.runtime.witness import is_witness
from privacy import secagg_wire as wire
from privacy.masking import FixedPoint, Keystream, apply_mask, mask_sign
from privacy.secagg import TAG_LEN, pair_seed
from privacy.shamir import lagrange_at_zero
from sim.attacks import AttackTransport
from sim.virtual_time import run_virtual
from topology import from_spec

from .netfixtures import free_ports

BOUND = 4.0
DEADLINE = 2.0
FAST = {"train": {"local_steps": 5, "batch_size": 32, "lr": 0.1},
        "round": {"deadline": DEADLINE, "train_in_thread": False}, "aggregation": {"rule": "secure_mean", "f": 0}}
MEMBER_PHASES = ("advert", "deal", "masked", "consent", "reveal")  # a member's messages, in order
RECEIVER_KINDS = {"book", "forward", "survivors", "proof"}


def plan(path, spec, transport="memory", **over):
    tables = {k: dict(v) for k, v in FAST.items()}
    for k, v in over.items():
        tables.setdefault(k, {}).update(v)
    kw = {"transport_options": {"ports": free_ports(len(from_spec(spec).nodes))}} if transport == "libp2p" else {}
    return write_plan(from_spec(spec, seed=1), path, transport=transport, overrides=tables, draw=False,
                      network_id="lab", **kw)


def db(node):
    return node.dir / "data" / "provenance.db"


def kind(data: bytes) -> str:
    cls = wire.kind_of(data)
    return cls.KIND if cls is not None else parse(data).header["kind"]


class Tap(AttackTransport):
    """A peer's real transport, with what it sends recorded (the wire as an observer, or a
    curious receiver, has it) and, where a test says, dropped or delayed."""

    def __init__(self, inner, drop=None, delay=None, rewrite=None):
        super().__init__(inner, rewrite or (lambda to, data: [data]))
        self.drop, self.delay, self.sent = drop, delay, []

    async def send(self, peer_id: str, data: bytes) -> bool:
        if is_witness(data):  # a start's ask (and its answers) about the peer's past: not recorded
            return await self.inner.send(peer_id, data)
        for out in self.rewrite(peer_id, bytes(data)):
            self.sent.append((peer_id, out))
            if self.drop is not None and self.drop(peer_id, out):
                continue  # lost on the way
            wait = self.delay(peer_id, out) if self.delay is not None else 0.0
            if wait:
                asyncio.get_running_loop().call_later(wait, lambda out=out: asyncio.ensure_future(
                    self.inner.send(peer_id, out)))
            else:
                await self.inner.send(peer_id, out)
        return True

    def masked_to(self, receiver: str) -> list[bytes]:
        return [d for to, d in self.sent if to == receiver and wire.kind_of(d) is None and kind(d) == "masked"]


def tapped(nodes, per_index: dict | None = None):
    """Peers on one hub, each transport a Tap (per_index: index -> Tap keyword arguments)."""
    per_index = per_index or {}
    taps = {}

    def prepare(i):
        def arm(parts):
            taps[i] = parts.transport = Tap(parts.transport, **per_index.get(i, {}))
        return arm

    _, peers = build_memory_network(nodes, prepare={i: prepare(i) for i in range(len(nodes))})
    return peers, [taps[i] for i in range(len(nodes))]


async def lock_step(peers, rounds):
    """Every peer trains and sends, then every one collects: what each one's model was, per round."""
    sent = []
    for _ in range(rounds):
        for p in peers:
            assert await p.train_and_send()
        sent.append({p.peer_id: p.ctx.own.clone() for p in peers})
        await asyncio.gather(*(p.collect_and_aggregate() for p in peers))
    return sent


async def run(peers, rounds):
    for p in peers:
        await p.start()
    try:
        return await lock_step(peers, rounds)
    finally:
        for p in peers:
            await p.close()


def expected(own, sent, senders):
    return (own.clamp(-BOUND, BOUND) + sum(sent[s].clamp(-BOUND, BOUND) for s in senders)) / (1 + len(senders))


def tolerance(peer):
    return FixedPoint(BOUND, len(peer.neighbours)).error() + 1e-6


def aggregated(node):
    return load_events(db(node), kind="aggregated")[1]


@pytest.mark.parametrize("spec", ["complete:4", "ring:5"])
def test_each_peer_ends_with_the_mean_of_what_its_neighbours_sent(tmp_path, spec):
    nodes = plan(tmp_path, spec)
    peers, taps = tapped(nodes)
    sent = run_virtual(run(peers, 2))
    for p in peers:
        assert all(r.aggregated and r.accepted == len(p.neighbours) for r in p.history), [
            (r.round, r.accepted, r.aggregated, r.note, dict(r.rejected)) for r in p.history]
        want = expected(sent[-1][p.peer_id], sent[-1], p.neighbours)
        assert (p.model.flat - want).abs().max().item() <= tolerance(p)
    for n, p, tap in zip(nodes, peers, taps, strict=True):
        assert verify_log(db(n)).ok
        agg = aggregated(n)
        assert len(agg) == 2 and all(e.details["rule"] == "secure_mean" for e in agg)
        report = agg[-1].details["report"]
        assert report["survivors"] == sorted(p.neighbours) and report["dropped"] == [] and len(report["sum_hash"]) == 64
        _, sent_events = load_events(db(n), kind="sent")
        assert all(e.details["codec"] == "u32" and e.details["kind"] == "masked" for e in sent_events)
        assert len({e.update_hash for e in sent_events}) == len(sent_events) == 2 * len(p.neighbours)
        for to in p.neighbours:  # a masked envelope names no model it came from
            assert [parse(d).header["parents"] for d in tap.masked_to(to)] == [[], []]
        # the ledger: every session went through to a reveal, once each
        _, ledger = load_events(db(n), kind="secagg_ledger")
        assert sorted(e.details["phase"] for e in ledger).count("revealed") == 2 * len(p.neighbours)


def dropping(phase: str):
    """A peer that stops sending from `phase` on (as a member), and as a receiver sends nothing."""
    stop = MEMBER_PHASES.index(phase)

    def drop(to, data):
        k = kind(data)
        return k in RECEIVER_KINDS or (k in MEMBER_PHASES and MEMBER_PHASES.index(k) >= stop)
    return drop


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(drops=st.dictionaries(st.integers(0, 5), st.sampled_from(MEMBER_PHASES), max_size=2))
@example(drops={})
@example(drops={1: "advert"})
@example(drops={0: "masked", 4: "consent"})
def test_masks_cancel_exactly_with_up_to_n_minus_t_drop_outs_at_any_phase(drops):
    # complete:6: every group has n = 5 members, t = 3, so any 2 may drop out at any phase
    with tempfile.TemporaryDirectory() as tmp:
        nodes = plan(Path(tmp), "complete:6")
        peers, _ = tapped(nodes, {i: {"drop": dropping(ph)} for i, ph in drops.items()})
        sent = run_virtual(run(peers, 1))[0]
        gone = {peers[i].peer_id: ph for i, ph in drops.items()}
        for i, p in enumerate(peers):
            if i in drops:
                continue
            survivors = sorted(s for s in p.neighbours if s not in gone or MEMBER_PHASES.index(gone[s]) > 2)
            rec = p.history[0]
            assert rec.aggregated, (drops, rec.note)
            report = aggregated(nodes[i])[0].details["report"]
            assert report["survivors"] == survivors
            want = expected(sent[p.peer_id], sent, survivors)
            assert (p.model.flat - want).abs().max().item() <= tolerance(p)


def test_a_late_masked_input_cannot_be_unmasked_by_the_receiver(tmp_path):
    """Exposure 1: a member's masked input reaches the receiver after the survivor set was fixed.
    The receiver refuses it as late, and even with everything it was sent (every reveal, the late
    payload) all it can peel off are the pair masks: the self-mask stays."""
    nodes = plan(tmp_path, "complete:4")
    late, slow = 1, 2  # node 1's masked input to node 0 is late; node 2's consents to node 0 take a while
    peers, taps = tapped(nodes, {
        late: {"delay": lambda to, d: DEADLINE + 0.2 if to == rid and kind(d) == "masked" else 0.0},
        slow: {"delay": lambda to, d: 0.5 if to == rid and kind(d) == "consent" else 0.0}})
    rid = peers[0].peer_id
    r, m = peers[0], peers[late]
    kept = []  # the curious receiver keeps its session: everything it got
    carry_out = r.wire.carry_out

    async def keep(cmd, *args):
        if isinstance(cmd, Unmask):
            kept.append(cmd.session)
        return await carry_out(cmd, *args)
    r.wire.carry_out = keep
    sent = run_virtual(run(peers, 1))[0]
    others = [s for s in r.neighbours if s != m.peer_id]
    report = aggregated(nodes[0])[0].details["report"]
    assert report["survivors"] == sorted(others) and report["dropped"] == [m.peer_id]
    assert (r.model.flat - expected(sent[rid], sent, others)).abs().max().item() <= tolerance(r)
    _, rejected = load_events(db(nodes[0]), kind="rejected")
    assert [(e.counterpart, e.details["reason"]) for e in rejected] == [(m.peer_id, "late")]
    # the receiver's best attempt: m's pair key from the s shares it was given, all pair masks off
    (s,) = kept
    (payload,) = [parse(d).payload for d in taps[late].masked_to(rid)]
    y = np.frombuffer(payload, "<u4", offset=TAG_LEN).copy()
    revealers = tuple(sorted(s.reveals))
    key = s._secret(lagrange_at_zero([s.ctx.x(k) for k in revealers]), revealers, m.peer_id, 1)
    s_m = X25519PrivateKey.from_private_bytes(key)
    stream = Keystream(y.size)
    for k in others:
        apply_mask(y, stream(pair_seed(s.ctx, s_m, s.adverts[k].s_pub, m.peer_id, k)), -mask_sign(m.peer_id, k))
    enc = FixedPoint(BOUND, 3).encode(sent[m.peer_id])
    rest = (y - enc).astype(np.uint32)  # = PRG(b_m) if the receiver were right: uniform, nothing of the model
    assert np.mean(rest == 0) < 0.001
    assert stats.kstest(rest / 2**32, "uniform").pvalue > 1e-4
    assert all(not s.reveals[k][0].get(m.peer_id) for k in revealers)  # no share of m's self-mask seed was given
    for n in nodes:
        assert verify_log(db(n)).ok


def test_a_receiver_that_tells_members_different_survivor_sets_gets_no_reveal(tmp_path):
    """Exposure 2: the receiver (node 0, complete:5: 4 members, t = 3) sends each member a different,
    individually valid, signed survivor set, then forges proofs from the consents it got. Every
    honest member refuses to reveal and logs why."""
    nodes = plan(tmp_path, "complete:5")
    peers, taps = tapped(nodes)
    r = peers[0]
    members = sorted(r.neighbours)
    # member k is told U_k = k and the two members after it (in a ring of the members): 4 sets
    sets = {k: tuple(sorted(members[(i + d) % 4] for d in range(3))) for i, k in enumerate(members)}
    assert len(set(sets.values())) > 1

    def lie(to, data):
        msg = wire.parse(data) if wire.kind_of(data) is wire.Survivors else None
        if msg is None or to not in sets:
            return [data]
        return [wire.encode(r.identity, wire.Survivors, net=msg.net, round=msg.round, book=msg.book,
                            survivors=sets[to])]
    taps[0].rewrite = lie
    consents = {}
    listen = r.listener.receive

    async def hear(hint, data):  # the lying receiver keeps the consents its own code refuses
        if wire.kind_of(data) is wire.Consent:
            consents[hint] = wire.parse(data)
        await listen(hint, data)
    r.listener.receive = hear

    async def scenario():
        for p in peers:
            await p.start()
        try:
            await lock_step(peers, 1)
            book = next(iter(consents.values())).book
            for k in members:  # a proof of k's set with every consent it got
                proof = wire.encode(r.identity, wire.Proof, net="lab", round=0, book=book, survivors=sets[k],
                                    consents=[wire.Signature(c.sender, c.sig) for c in consents.values()
                                              if c.sender in sets[k]])
                await taps[0].inner.send(k, proof)
                other = sets[members[(members.index(k) + 1) % len(members)]]  # and a second, other set
                await taps[0].inner.send(k, wire.encode(r.identity, wire.Survivors, net="lab", round=0, book=book,
                                                        survivors=other if k in other else sets[k]))
            await asyncio.sleep(1.0)
        finally:
            for p in peers:
                await p.close()

    run_virtual(scenario())
    assert sorted(consents) == members  # each member consented to the set it was given, once
    for n, p in zip(nodes, peers, strict=True):
        assert verify_log(db(n)).ok
        if p is r:
            continue
        _, ledger = load_events(db(n), kind="secagg_ledger")
        mine = [e.details for e in ledger if e.counterpart == r.peer_id]
        assert [e["phase"] for e in mine][-1] == "consented" and mine[-1]["survivors"] == list(sets[p.peer_id])
        _, rejected = load_events(db(n), kind="rejected")
        why = {e.details["reason"] for e in rejected if e.counterpart == r.peer_id}
        assert why & {"bad_consent", "too_few_consents"}, why
    assert aggregated(nodes[0]) == []  # the receiver got no sum at all


def test_a_restarted_member_never_masks_again_with_the_same_randomness(tmp_path):
    """Exposure 3: a member killed in round 1 after it sent restarts from its checkpoint at the
    same round: its ledger refuses a second session with each receiver. A fleet whose data
    folders are wiped starts again at round 0 with fresh keys: the two masked inputs of one
    member for one receiver and round differ by fresh masks."""
    nodes = plan(tmp_path, "complete:4")
    peers, taps = tapped(nodes)
    m, rid = peers[1], peers[0].peer_id

    async def first():
        for p in peers:
            await p.start()
        sent = await lock_step(peers, 1)
        for p in peers:
            assert await p.train_and_send()
        await asyncio.sleep(0.1)  # m's masked inputs of round 1 are out
        for p in peers:  # killed: no close, the log and the lock simply let go
            await p.transport.close()
            p.prov.close()
            p.lock.release()
        return sent

    sent = run_virtual(first())
    first_masked = taps[1].masked_to(rid)
    assert [parse(d).round for d in first_masked] == [0, 1]

    async def restart():
        again = memory_peer(nodes[1].config, build_memory_network([])[0])
        await again.start()
        assert again.round == 1  # from its checkpoint
        await again.train_and_send()
        await again.close()
        return again

    run_virtual(restart())
    _, notes = load_events(db(nodes[1]), kind="secagg")
    skipped = [e for e in notes if e.details.get("step") == "member_skipped" and e.round == 1]
    assert len(skipped) == 3 and all("already_started" in e.details["detail"] for e in skipped)
    _, sent_events = load_events(db(nodes[1]), kind="sent")
    assert sum(1 for e in sent_events if e.round == 1) == 3  # the first life's only
    # every data folder wiped: round 0 again, with the same keys, data and seeds
    for n in nodes:
        shutil.rmtree(n.dir / "data")
    peers2, taps2 = tapped(nodes)
    sent2 = run_virtual(run(peers2, 1))[0]
    assert torch.equal(sent[0][m.peer_id], sent2[m.peer_id])  # the very same model was masked twice
    y1 = np.frombuffer(parse(first_masked[0]).payload, "<u4", offset=TAG_LEN)
    y2 = np.frombuffer(parse(taps2[1].masked_to(rid)[0]).payload, "<u4", offset=TAG_LEN)
    diff = (y1 - y2).astype(np.uint32)  # single masking: all zero (the seeds depended on keys, receiver, round)
    assert np.mean(diff == 0) < 0.001
    assert stats.kstest(diff / 2**32, "uniform").pvalue > 1e-4


def test_a_peer_that_starts_behind_catches_up_from_its_neighbours_adverts(tmp_path):
    """Masked inputs flow only once a round's keys are agreed, so a peer that starts rounds
    behind learns where its neighbours are from their signed adverts, and jumps there."""
    nodes = plan(tmp_path, "complete:4")
    peers, _ = tapped(nodes)
    early, late = peers[:3], peers[3]

    async def scenario():
        for p in early:
            await p.start()
        running = [asyncio.create_task(p.run(5)) for p in early]
        await asyncio.sleep(3 * DEADLINE)  # they are rounds ahead (each round waits for the silent fourth)
        ahead = min(p.round for p in early)
        await late.start()
        await asyncio.gather(*running, late.run(2))
        return ahead

    ahead = run_virtual(scenario())
    assert ahead >= 1 and late.history[0].round == 0
    assert late.history[-1].round > ahead, [(r.round, r.note) for r in late.history]  # it jumped, not 0 -> 1
    for n in nodes:
        assert verify_log(db(n)).ok


def test_masked_envelopes_are_refused_by_kind(tmp_path):
    nodes = plan(tmp_path, "complete:4")
    peers, taps = tapped(nodes)
    run_virtual(run(peers, 1))
    p0, p1 = peers[:2]
    plain = seal_update(p1.identity, p0.model.flat.detach(), net="lab", round=0, schema=p0.model.schema).data
    assert p0.verifier.verify(plain, 0).reason == Reason.WRONG_KIND
    (masked,) = taps[0].masked_to(p1.peer_id)
    plain_peer = Verifier("lab", {p0.peer_id}, p0.model.schema, p0.model.size)
    assert plain_peer.verify(masked, 0).reason == Reason.WRONG_KIND


@pytest.mark.parametrize("over, message", [
    ({"aggregation": {"rule": "nnm+secure_mean"}}, "nnm cannot come before secure_mean"),
    ({"aggregation": {"f": 1}}, "aggregation.f must be 0 with secure_mean"),
    ({"aggregation": {"weights": "metropolis_hastings"}}, "must be uniform with secure_mean"),
    ({"aggregation": {"params": {"threshold": 2}}}, "threshold must be one of majority, two_thirds"),
    ({"aggregation": {"params": {"min_senders": 2}}}, "takes no such parameter"),
])
def test_the_configuration_refuses_what_secure_aggregation_cannot_do(tmp_path, over, message):
    with pytest.raises(ConfigError, match=message):
        plan(tmp_path, "complete:4", **over)


def test_a_peer_with_one_neighbour_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="secure_mean needs at least 2 neighbours"):
        plan(tmp_path, "star:4")


def test_the_trust_list_carries_no_static_agreement_keys_and_older_lists_load(tmp_path):
    nodes = plan(tmp_path, "complete:4")
    trust = tmp_path / "trust.toml"
    assert "x25519" not in trust.read_text() and "binding" not in trust.read_text()
    old = trust.read_text().replace('name = "0"', 'name = "0"\nx25519 = "' + "ab" * 32 + '"\nbinding = "' + "cd" * 64 + '"')
    trust.write_text(old)
    assert load_trust_list(trust).peers and nodes


@pytest.mark.timeout(150)
def test_four_libp2p_peer_processes_run_double_masked_rounds(tmp_path, peer_processes):
    nodes = plan(tmp_path / "plan", "complete:4", transport="libp2p",
                 round={"deadline": 8.0, "rounds": 3, "interval": 1.0, "train_in_thread": True})
    for n in nodes:
        peer_processes.start(n.label, n.config)
    codes = peer_processes.wait_all(130)
    assert all(c == 0 for c in codes.values()), (codes, peer_processes.log(nodes[0].label)[-3000:])
    for n in nodes:
        v = verify_log(db(n))
        assert v.ok, v.line()
        agg = aggregated(n)
        assert len(agg) >= 2 and all(e.details["rule"] == "secure_mean" for e in agg), peer_processes.log(n.label)
        survivors = [len(e.details["report"]["survivors"]) for e in agg]
        # every member survived some round; in the last ones a member that finished first may
        # be past the deadline on a loaded machine: the round then unmasks with the threshold
        assert 3 in survivors and min(survivors) >= 2, survivors
        _, ledger = load_events(db(n), kind="secagg_ledger")
        assert any(e.details["phase"] == "revealed" for e in ledger)
