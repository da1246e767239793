"""Fleet membership: admin-signed records (admit, revoke) applied while peers run."""

from __future__ import annotations

import asyncio

import msgpack
import pytest
import torch

from gossip.identity import Identity, b58encode
from gossip.membership import MAGIC, MembershipError, open_record, seal_record
from peer.audit.verify import load_events, verify_log
from peer.errors import RevokedError
from peer.ops.plan import write_plan
from peer.runtime.local import build_memory_network
from peer.runtime.membership import Membership, MembershipFileError
from sim.virtual_time import run_virtual
from topology import from_spec

ADMIN = Identity.from_seed(b"A" * 32)
MALLORY = Identity.from_seed(b"M" * 32)
IDS = [Identity.from_seed(bytes([i + 1]) * 32) for i in range(4)]


def record(epoch, action="admit", peer=IDS[3], neighbours=(IDS[0],), key=ADMIN, net="net", **kw):
    return seal_record(key, network=net, epoch=epoch, action=action, peer=peer.peer_id,
                       neighbours=[n.peer_id for n in neighbours] if action == "admit" else (), **kw)


def test_a_record_opens_only_for_its_network_and_its_admin():
    data = record(1, addr="/ip4/127.0.0.1/tcp/4001")
    r = open_record(data, admin=ADMIN.peer_id, network="net")
    assert (r.epoch, r.action, r.peer, r.neighbours) == (1, "admit", IDS[3].peer_id, (IDS[0].peer_id,))
    with pytest.raises(MembershipError, match="not signed by this network's admin"):
        open_record(record(1, key=MALLORY), admin=ADMIN.peer_id, network="net")
    with pytest.raises(MembershipError, match="network"):
        open_record(data, admin=ADMIN.peer_id, network="other")


@pytest.mark.parametrize("mangle", [
    lambda d: d[:-1],  # truncated
    lambda d: d + b"\x00",  # trailing bytes
    lambda d: b"GFLM\x02" + d[5:],  # another magic
    lambda d: MAGIC + msgpack.packb({"sig": msgpack.unpackb(d[5:])["sig"], "body": msgpack.unpackb(d[5:])["body"]}),
    lambda d: d[:6] + b"\x00" + d[7:],  # a flipped byte
    lambda d: MAGIC + b"\xc1" * 100,
    lambda d: d + b"x" * 20_000,  # oversize
])
def test_a_mangled_record_is_refused(mangle):
    data = record(1)
    with pytest.raises(MembershipError):
        open_record(mangle(data), admin=ADMIN.peer_id, network="net")


def test_a_non_canonical_body_is_refused_even_when_signed():
    import hashlib

    from gossip import membership as m

    body = msgpack.packb({"peer": IDS[3].peer_id, "action": "revoke", "addr": "", "epoch": 1, "neighbours": [],
                          "net": "net", "ts": 1.0})  # keys out of order: another byte string, same content
    sig = ADMIN.sign(hashlib.sha256(m.DOMAIN + body).digest())
    with pytest.raises(MembershipError, match="canonical"):
        open_record(MAGIC + msgpack.packb({"body": body, "sig": sig}), admin=ADMIN.peer_id, network="net")


def hand_made(key=ADMIN, sig: bytes | None = None, **changes) -> bytes:
    """A record built here from the format's description (canonical msgpack body, keys sorted;
    Ed25519 over SHA-256 of the membership domain and the body), with `changes` to its fields."""
    import hashlib

    fields = {"action": "admit", "addr": "/ip4/10.0.0.4/tcp/4001", "epoch": 1, "neighbours": [IDS[0].peer_id],
              "net": "net", "peer": IDS[3].peer_id, "ts": 1.5, **changes}
    body = msgpack.packb(dict(sorted(fields.items())), use_bin_type=True)
    if sig is None:
        sig = key.sign(hashlib.sha256(b"gossipfl/membership/v1\x00" + body).digest())
    return MAGIC + msgpack.packb({"body": body, "sig": sig}, use_bin_type=True)


def test_a_record_made_from_the_format_description_opens():
    r = open_record(hand_made(), admin=ADMIN.peer_id, network="net")
    assert (r.epoch, r.action, r.addr, r.ts) == (1, "admit", "/ip4/10.0.0.4/tcp/4001", 1.5)
    assert hand_made(ts=r.ts) == seal_record(ADMIN, network="net", epoch=1, action="admit", peer=IDS[3].peer_id,
                                             addr=r.addr, neighbours=[IDS[0].peer_id], ts=1.5)
    revoke = hand_made(action="revoke", addr="", neighbours=[], epoch=2**63 - 1)
    assert open_record(revoke, admin=ADMIN.peer_id, network="net").epoch == 2**63 - 1


# identity multihash of protobuf PublicKey{Ed25519, 32 bytes} with 33 key bytes: a string that
# cryptography would refuse with ValueError, not PeerIdError
LONG_KEY_ID = b58encode(b"\x00\x24\x08\x01\x12\x20" + IDS[2].public_bytes + b"\x01")


@pytest.mark.parametrize("changes, message", [
    ({"epoch": 0}, "epoch"),
    ({"epoch": 2**63}, "epoch"),
    ({"epoch": True}, "epoch"),
    ({"action": "promote"}, "action"),
    ({"action": "revoke", "neighbours": []}, "no address"),
    ({"action": "revoke", "addr": ""}, "no address"),
    ({"neighbours": [IDS[0].peer_id, IDS[0].peer_id]}, "distinct"),
    ({"neighbours": [IDS[0].peer_id, "12D3KooWnot"]}, "invalid PeerId"),
    ({"neighbours": [LONG_KEY_ID]}, "invalid PeerId"),
    ({"peer": LONG_KEY_ID}, "invalid PeerId"),
    ({"peer": 7}, "invalid PeerId"),
    ({"ts": float("nan")}, "ts"),
    ({"ts": float("inf")}, "ts"),
    ({"ts": 2}, "ts"),
    ({"net": ""}, "net"),
    ({"addr": 5}, "addr"),
])
@pytest.mark.parametrize("signed", [True, False])
def test_a_record_outside_the_format_is_refused_signed_or_not(changes, message, signed):
    # unsigned too: the first thing a peer does with a record is parse it, before the signature
    data = hand_made(**changes) if signed else hand_made(sig=bytes(64), **changes)
    with pytest.raises(MembershipError, match=message):
        open_record(data, admin=ADMIN.peer_id, network="net")
    if changes in ({"epoch": True}, {"ts": 2}):  # seal_record writes int(epoch) and float(ts)
        return
    fields = {"epoch": 1, "action": "admit", "peer": IDS[3].peer_id, "neighbours": [IDS[0].peer_id],
              "ts": 1.5, "addr": "/ip4/10.0.0.4/tcp/4001", **changes}
    fields.pop("net", None)
    with pytest.raises(MembershipError, match=message):  # and the admin's tool refuses to sign it
        seal_record(ADMIN, network=changes.get("net", "net"), **fields)


def test_epochs_only_go_forward_and_survive_a_restart(tmp_path):
    def fresh(logged=()):
        m = Membership(IDS[0].peer_id, "net", ADMIN.peer_id, {i.peer_id for i in IDS[:3]},
                       {IDS[1].peer_id: None}, tmp_path / "membership.msgpack")
        m.load(list(logged))
        return m

    m = fresh()
    assert m.offer(record(1, addr="/ip4/127.0.0.1/tcp/9")).record is not None
    assert IDS[3].peer_id in m.trusted and m.neighbours[IDS[3].peer_id] == "/ip4/127.0.0.1/tcp/9"
    stale = m.offer(record(1, action="revoke", peer=IDS[1]))
    assert stale.record is None and stale.reason == "stale_membership"
    forged = m.offer(record(2, action="revoke", peer=IDS[1], key=MALLORY))
    assert forged.record is None and forged.reason == "bad_membership"
    assert m.offer(record(2, action="revoke", peer=IDS[1])).record is not None
    assert IDS[1].peer_id not in m.trusted and IDS[1].peer_id in m.revoked and IDS[1].peer_id not in m.neighbours
    again = fresh()  # the records were persisted and verify again
    assert (again.epoch, again.trusted, again.revoked, again.neighbours) == (2, m.trusted, m.revoked, m.neighbours)
    raw = bytearray((tmp_path / "membership.msgpack").read_bytes())
    raw[-3] ^= 1  # the cache altered: its second record no longer verifies
    (tmp_path / "membership.msgpack").write_bytes(bytes(raw))
    assert fresh().epoch == 1  # without the log, only what verifies counts
    state = (2, m.trusted, m.revoked, m.neighbours)
    rebuilt = fresh(logged=m.records)  # the provenance log holds every record applied
    assert (rebuilt.epoch, rebuilt.trusted, rebuilt.revoked, rebuilt.neighbours) == state
    assert msgpack.unpackb((tmp_path / "membership.msgpack").read_bytes()) == m.records  # the cache rewritten
    (tmp_path / "membership.msgpack").unlink()
    lost = fresh(logged=m.records)
    assert (lost.epoch, lost.trusted, lost.revoked, lost.neighbours) == state
    (tmp_path / "membership.msgpack").write_bytes(b"\xc1garbage")
    assert fresh(logged=m.records[:1]).epoch == 1  # unreadable: ignored, the log counts
    with pytest.raises(MembershipFileError, match="in the provenance log does not apply"):
        fresh(logged=[record(3, action="revoke", peer=IDS[2], key=MALLORY)])


def test_peers_admit_and_revoke_while_they_run(tmp_path):
    graph = from_spec("ring:4", seed=1)
    graph.add_node(4)  # a gateway planned but not yet anyone's neighbour
    over = {"train": {"local_steps": 10, "lr": 0.1}, "round": {"deadline": 1.0, "train_in_thread": False, "interval": 0.3},
            "aggregation": {"rule": "mean", "f": 0}}
    nodes = write_plan(graph, tmp_path, transport="memory", overrides=over, draw=False)
    hub, peers = build_memory_network(nodes)
    ids = [p.peer_id for p in peers]
    for p in peers:
        p.membership.admin = ADMIN.peer_id
    net = peers[0].cfg.network

    def seal(epoch, action, peer, nbrs=()):
        return seal_record(ADMIN, network=net, epoch=epoch, action=action, peer=ids[peer],
                           neighbours=[ids[n] for n in nbrs])

    async def scenario():
        admin = hub.transport(ADMIN.peer_id)
        await admin.start()
        for p in peers:
            await p.start()
        runs = [asyncio.ensure_future(p.run(8)) for p in peers]
        while peers[0].round < 2:
            await asyncio.sleep(0.05)
        admit = seal(1, "admit", 4, nbrs=(0, 2))
        await admin.send(ids[0], admit)  # node 0 passes it on to its neighbours, and so on
        await admin.send(ids[4], admit)
        await admin.send(ids[0], seal_record(MALLORY, network=net, epoch=9, action="revoke", peer=ids[0]))
        while peers[0].round < 4:
            await asyncio.sleep(0.05)
        await admin.send(ids[2], seal(2, "revoke", 1))
        await admin.send(ids[2], admit)  # a replay of an older epoch
        revoked_at = {i: p.round for i, p in enumerate(peers)}
        ended = await asyncio.gather(*runs, return_exceptions=True)
        return revoked_at, ended

    revoked_at, ended = run_virtual(scenario())
    assert isinstance(ended[1], RevokedError), ended[1]  # node 1 stopped itself, for good
    assert all(isinstance(e, list) for i, e in enumerate(ended) if i != 1), ended
    assert all(p.membership.epoch == 2 for i, p in enumerate(peers) if i != 1)  # everyone heard, by gossip
    for i in (0, 2):
        _, aggregated = load_events(nodes[i].dir / "data" / "provenance.db", kind="aggregated")
        assert any(ids[4] in e.details["senders"] for e in aggregated), i  # the new gateway counts
    for i in (0, 2):
        _, received = load_events(nodes[i].dir / "data" / "provenance.db", kind="received")
        late = [e.round for e in received if e.counterpart == ids[1] and e.round >= revoked_at[i] + 2]
        assert late == [], (i, late)
    _, own = load_events(nodes[1].dir / "data" / "provenance.db", kind="membership")
    assert [(e.details["epoch"], e.details["action"]) for e in own][-1] == (2, "revoke")  # it heard, logged, stopped
    assert peers[0].rejections["bad_membership"] == 1 and peers[2].rejections["stale_membership"] == 1
    _, membership = load_events(nodes[3].dir / "data" / "provenance.db", kind="membership")
    assert [(e.details["epoch"], e.details["action"]) for e in membership] == [(1, "admit"), (2, "revoke")]
    for n in nodes:
        assert verify_log(n.dir / "data" / "provenance.db").ok
    assert torch.isfinite(peers[4].model.flat).all() and peers[4].history[-1].accepted == 2


def test_an_epoch_cannot_jump_past_every_future_record(tmp_path):
    """A record signed with epoch 2**63 - 1 (a stolen admin key) would leave no newer epoch for
    the admin's own records: one record moves a peer's epoch by at most MAX_EPOCH_STEP."""
    from gossip.membership import MAX_EPOCH_STEP

    m = Membership(IDS[0].peer_id, "net", ADMIN.peer_id, {i.peer_id for i in IDS[:3]}, {IDS[1].peer_id: None},
                   tmp_path / "membership.msgpack")
    for epoch in (2**63 - 1, MAX_EPOCH_STEP + 1):
        offer = m.offer(record(epoch))
        assert offer.record is None and offer.reason == "bad_membership" and "jumps more than" in offer.detail
    assert m.epoch == 0 and IDS[3].peer_id not in m.trusted
    assert m.offer(record(MAX_EPOCH_STEP)).record is not None and m.epoch == MAX_EPOCH_STEP
    assert m.offer(record(2 * MAX_EPOCH_STEP, action="revoke", peer=IDS[3])).record is not None
