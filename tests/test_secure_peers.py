"""secure_mean in real peers: masked contributions over the memory transport and libp2p, the
model each peer ends with equals the plain mean of what its neighbours sent (within the
fixed-point error), drop-outs are unmasked through reveals, reveals are answered once, and
the configuration refuses what secure aggregation cannot do."""

from __future__ import annotations

import asyncio
import re

import pytest
import torch

from gossip.envelope import parse, seal_update
from gossip.verify import Accepted, Reason, Verifier
from peer.audit.verify import load_events, verify_log
from peer.errors import ConfigError
from peer.ops.plan import write_plan
from peer.runtime.local import build_memory_network, memory_peer
from peer.runtime.round import Phase, RoundPolicy, RoundState
from peer.runtime.secure_exchange import RequestReveals, SecureMeanExchange, Unmask
from privacy.secure import FixedPoint
from privacy.secure_wire import SecureWireError, encode_request
from sim.virtual_time import run_virtual
from topology import from_spec

from .netfixtures import free_ports

BOUND = 4.0
FAST = {"train": {"local_steps": 5, "batch_size": 32, "lr": 0.1}, "round": {"deadline": 2.0, "train_in_thread": False},
        "aggregation": {"rule": "secure_mean", "f": 0}}


def plan(path, spec, transport="memory", **over):
    tables = {k: dict(v) for k, v in FAST.items()}
    for k, v in over.items():
        tables.setdefault(k, {}).update(v)
    kw = {"transport_options": {"ports": free_ports(len(from_spec(spec).nodes))}} if transport == "libp2p" else {}
    return write_plan(from_spec(spec, seed=1), path, transport=transport, overrides=tables, draw=False,
                      network_id="lab", **kw)


def db(node):
    return node.dir / "data" / "provenance.db"


async def lock_step(peers, rounds):
    """Every live peer trains and sends, then every one collects: returns what each sent, per round."""
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


def expected(peer, own, sent, senders):
    clipped = [sent[s].clamp(-BOUND, BOUND) for s in senders]
    return (own.clamp(-BOUND, BOUND) + sum(clipped)) / (1 + len(senders))


def tolerance(peer):
    return FixedPoint(BOUND, len(peer.neighbours)).error() + 1e-6


@pytest.mark.parametrize("spec", ["complete:4", "ring:5"])
def test_each_peer_ends_with_the_mean_of_what_its_neighbours_sent(tmp_path, spec):
    nodes = plan(tmp_path, spec)
    _, peers = build_memory_network(nodes)
    sent = run_virtual(run(peers, 2))
    for p in peers:
        assert all(r.aggregated and r.accepted == len(p.neighbours) for r in p.history), [
            (r.round, r.accepted, r.aggregated, r.note, dict(r.rejected)) for r in p.history]
        want = expected(p, sent[-1][p.peer_id], sent[-1], p.neighbours)
        assert (p.model.flat - want).abs().max().item() <= tolerance(p)
    for n in nodes:
        assert verify_log(db(n)).ok
        _, agg = load_events(db(n), kind="aggregated")
        assert len(agg) == 2 and all(e.details["rule"] == "secure_mean" for e in agg)
        report = agg[-1].details["report"]
        assert re.fullmatch("[0-9a-f]{64}", report["sum_hash"]) and report["reveals"] == {}
        _, sent_events = load_events(db(n), kind="sent")
        assert all(e.details["codec"] == "u32" and e.details["kind"] == "masked" for e in sent_events)
        assert len({e.update_hash for e in sent_events}) == len(sent_events)  # one envelope per receiver


def test_an_offline_peer_is_unmasked_away_through_reveals_that_are_logged_and_given_once(tmp_path):
    nodes = plan(tmp_path, "complete:4")
    _, peers = build_memory_network(nodes)
    alive, gone = peers[:3], peers[3]
    sent = run_virtual(run(alive, 1))[0]
    for p in alive:
        others = [s for s in p.neighbours if s != gone.peer_id]
        assert p.history[0].aggregated, p.history[0].note
        want = expected(p, sent[p.peer_id], sent, others)
        assert (p.model.flat - want).abs().max().item() <= tolerance(p)
    names = {p.peer_id: n for p, n in zip(peers, nodes, strict=True)}
    for p in alive:
        n = names[p.peer_id]
        assert verify_log(db(n)).ok
        _, asked = load_events(db(n), kind="reveal_requested")
        assert [(e.details["missing"], len(e.details["delivered"])) for e in asked] == [([gone.peer_id], 2)]
        _, revealed = load_events(db(n), kind="revealed")  # it revealed to each of the two other receivers
        assert sorted(e.counterpart for e in revealed) == sorted(q.peer_id for q in alive if q is not p)
        assert all(e.details["missing"] == [gone.peer_id] and e.round == 0 for e in revealed)
        _, agg = load_events(db(n), kind="aggregated")
        assert sorted(agg[0].details["report"]["reveals"]) == sorted(q.peer_id for q in alive if q is not p)
        gone.prov.close()
    # a second request for the same (receiver, round) is refused, after a restart too (read from the log)
    receiver, member = alive[0], names[alive[1].peer_id]
    again = memory_peer(member.config, build_memory_network([])[0])
    again.resume()
    req = encode_request(receiver.identity, net="lab", round=0, missing=[gone.peer_id],
                         delivered=[q.peer_id for q in alive if q is not receiver])
    run_virtual(again.receive(receiver.peer_id, req))
    assert again.state.total_rejected["already_revealed"] == 1
    again.prov.close()
    again.lock.release()


def test_a_late_contribution_after_the_reveal_request_is_rejected(tmp_path):
    nodes = plan(tmp_path, "complete:4")
    _, peers = build_memory_network(nodes)
    a, b, c = (p.identity for p in peers[1:])
    policy = RoundPolicy(neighbours=frozenset({a.peer_id, b.peer_id, c.peer_id}), rule="secure_mean", deadline=5.0)
    state = RoundState(policy, SecureMeanExchange(policy))
    state.start()
    state.trained(0.0, {})

    def masked(ident):
        env = parse(seal_update(ident, torch.zeros(4), net="lab", round=0, schema=bytes(32)).data)
        return Accepted(env, torch.zeros(4))

    for ident in (a, b):
        state.offer(masked(ident))
    cmds = state.close(10.0)
    request = next(c_ for c_ in cmds if isinstance(c_, RequestReveals))
    assert request.missing == (c.peer_id,) and state.phase is Phase.EXCHANGING
    kind, logs = state.offer(masked(c))
    assert kind.value == "rejected" and state.rejected["late_after_reveal"] == 1
    assert logs[0].event.details["reason"] == "late_after_reveal" and logs[0].event.counterpart == c.peer_id
    assert not state.ready(11.0)
    state.exchanged(a.peer_id, 0, {c.peer_id: bytes(32)})
    assert not state.ready(11.0) and state.ready(15.0)  # b never answers: the deadline
    skip = state.exchange_done()
    assert skip[0].reason.startswith("kept own model: secure_mean: no reveal from " + b.peer_id[:16])
    # everyone delivered: unmask at once, no reveals
    policy = RoundPolicy(neighbours=frozenset({a.peer_id, b.peer_id}), rule="secure_mean")
    full = RoundState(policy, SecureMeanExchange(policy))
    full.start()
    full.trained(0.0, {})
    for ident in (a, b):
        full.offer(masked(ident))
    assert full.close(1.0) == [Unmask(0, tuple(sorted((a.peer_id, b.peer_id))), {})]


def test_masked_contributions_are_refused_by_kind_and_context(tmp_path):
    nodes = plan(tmp_path, "complete:4")
    _, peers = build_memory_network(nodes)
    p0, p1, p2 = peers[:3]
    own = p0.model.flat.detach()
    plain = seal_update(p1.identity, own, net="lab", round=0, schema=p0.model.schema).data
    assert p0.verifier.verify(plain, 0).reason == Reason.WRONG_KIND
    for_p1 = p0.parts.secure.seal_for(own, p1.peer_id, 0, schema=p0.model.schema, parents=[], deg=3)
    plain_peer = Verifier("lab", {p0.peer_id}, p0.model.schema, p0.model.size)
    assert plain_peer.verify(for_p1.data, 0).reason == Reason.WRONG_KIND
    accepted = p1.verifier.verify(for_p1.data, 0)
    assert isinstance(accepted, Accepted) and accepted.params.dtype == torch.uint32
    p1.parts.secure.open(accepted, p1.neighbours)
    forwarded = p2.verifier.verify(for_p1.data, 0)  # p1 passes p0's contribution on to p2
    with pytest.raises(SecureWireError) as exc:
        p2.parts.secure.open(forwarded, p2.neighbours)
    assert exc.value.reason == "wrong_context"
    for p in peers:
        p.prov.close()
        p.lock.release()


@pytest.mark.parametrize("over, message", [
    ({"aggregation": {"rule": "nnm+secure_mean"}}, "nnm cannot come before secure_mean"),
    ({"aggregation": {"f": 1}}, "aggregation.f must be 0 with secure_mean"),
    ({"aggregation": {"weights": "metropolis_hastings"}}, "must be uniform with secure_mean"),
    ({"aggregation": {"params": {"min_senders": 1}}}, "min_senders must be an integer >= 2"),
])
def test_the_configuration_refuses_what_secure_aggregation_cannot_do(tmp_path, over, message):
    with pytest.raises(ConfigError, match=message):
        plan(tmp_path, "complete:4", **over)


def test_a_peer_with_one_neighbour_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="secure_mean needs at least 2 neighbours"):
        plan(tmp_path, "star:4")


def test_a_bad_key_binding_in_the_trust_list_is_refused(tmp_path):
    nodes = plan(tmp_path, "complete:4")
    trust = tmp_path / "trust.toml"
    text = trust.read_text()
    bindings = re.findall(r'binding = "([0-9a-f]+)"', text)
    trust.write_text(text.replace(bindings[0], bindings[1]))  # one peer's key under another's signature
    with pytest.raises(ConfigError, match="is not bound to it"):
        build_memory_network(nodes[:1])
    trust.write_text(text)
    _, (peer,) = build_memory_network(nodes[:1])  # the plan's own list loads
    assert peer.parts.secure is not None
    peer.prov.close()
    peer.lock.release()


@pytest.mark.timeout(120)
def test_four_libp2p_peer_processes_run_secure_rounds(tmp_path, peer_processes):
    nodes = plan(tmp_path / "plan", "complete:4", transport="libp2p",
                 round={"deadline": 8.0, "rounds": 3, "interval": 1.0, "train_in_thread": True})
    for n in nodes:
        peer_processes.start(n.label, n.config)
    codes = peer_processes.wait_all(100)
    assert all(c == 0 for c in codes.values()), (codes, peer_processes.log(nodes[0].label)[-3000:])
    for n in nodes:
        v = verify_log(db(n))
        assert v.ok, v.line()
        _, agg = load_events(db(n), kind="aggregated")
        assert len(agg) == 3 and all(e.details["rule"] == "secure_mean" for e in agg), peer_processes.log(n.label)
        _, received = load_events(db(n), kind="received")
        assert len(received) == 9
